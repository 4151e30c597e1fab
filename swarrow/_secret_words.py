"""Credentials written as free text — `password: x`, `"api_key": "x"`, `Authorization: Bearer x`,
`--token x` — found by the name beside them, and masked.

Why: a callback's exception, a library's log line or a producer's message id can carry one, and the
text reaches log lines, a dead letter's `x-swarrow-error` header, a job's stored error and an RPC error
reply. This is a heuristic: a secret with no name beside it cannot be recognised, and a name the
heuristic takes for a credential's loses its value (`unexpected token: ***`). Every pattern here is
linear in the text's length (possessive quantifiers, checks in Python rather than backtracking):
a producer controls the text.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["mask_named_secrets", "names_a_secret_flag"]

_MASK: Final = "***"
# A line holding none of these (lower-cased) is returned as it is: the per-message log line's check.
_HINTS: Final = ("passw", "passphrase", "pwd", "secret", "token", "key", "bearer", "authoriz", "credential")
# Values that are not secrets: an annotation (`token: str`), an absent value, one already masked.
_NOT_SECRETS: Final = frozenset(
    {"", "***", "none", "null", "nil", "missing", "unset", "empty", "true", "false", "str", "bytes", "int"}
)
_QUOTED: Final = r"""[bBrRuU]{0,2}(?:"(?:[^"\\]|\\.)*+"?|'(?:[^'\\]|\\.)*+'?)"""
# `name: value`, `name = value`, `"name": "value"`, `name => value`, `db.password=value`; not `name == value`
# (code). A name starts only where a run of name characters starts: from inside a run, each start
# rescanned the run (quadratic: minutes on a 100 KB `a-a-a-…`).
_CREDENTIAL_NAME: Final = (
    r"passw(?:or)?d|passphrase|pwd|secret|token|api[_-]?key|(?:secret|access|private)[_-]?key|credentials?"
)
_SEPARATOR: Final = r"['\"]?[ \t]*(?:=>|[:=](?![=:]))"
_FIELD: Final = re.compile(
    rf"(?<![\w.-])((?i:[\w.-]*?(?:{_CREDENTIAL_NAME})))(?![\w-])"
    rf"({_SEPARATOR}[ \t]*(?i:(?:bearer|basic|token|digest)[ \t]+)?)"
    r"(-----BEGIN[^\n]*+(?:\n(?!-----END)[^\n]*+)*+(?:\n-----END[^\n]*+)?"
    rf"|{_QUOTED}|\((?:[^()\n])*+\)?|\[[^\]\n]*+\]?|\{{[^}}\n]*+\}}?|[\w.]++\([^)\n]*+\)?"
    r"|[^\s'\"()\[\]{}&][^\s&]*+)"
)
# The same names and separators, searched in the lower-cased text first: a case-sensitive search costs a
# fraction of `_FIELD`'s, and most lines with a hint word (`routing_key`, `key:…`) name no credential.
_FIELD_GATE: Final = re.compile(rf"(?:{_CREDENTIAL_NAME})(?![\w-]){_SEPARATOR}")
_AUTHORIZATION: Final = re.compile(
    r"(?<![\w-])((?:proxy-)?authorization['\"]?[ \t]*[:=][ \t]*['\"]?)(?:([\w-]++)[ \t]+)?([^\s,;'\"]++)",
    re.IGNORECASE,
)
_BEARER: Final = re.compile(r"(?<![\w-])(bearer[ \t]+)([\w.~+/=-]++)", re.IGNORECASE)
_SCHEMES: Final = frozenset({"bearer", "basic", "digest", "token", "negotiate", "apikey", "aws4-hmac-sha256"})
_FLAG_NAME: Final = (
    r"--?[\w-]*?(?:passw(?:or)?d|passphrase|secret|token|api[-_]?key|(?:secret|access)[-_]?key|credentials?)"
)
_FLAG: Final = re.compile(rf"((?<!\S){_FLAG_NAME}[ \t]+)(?!-)[^\s'\"]++", re.IGNORECASE)
_FLAG_ALONE: Final = re.compile(_FLAG_NAME, re.IGNORECASE)
_PEM_PRIVATE: Final = re.compile(
    r"(-----BEGIN [A-Z ]*PRIVATE KEY-----)[^-]*+(-----END [A-Z ]*PRIVATE KEY-----)?"
)


def mask_named_secrets(text: str) -> str:
    """`text` with the value of every credential named in it masked."""
    lowered = text.lower()
    for hint in _HINTS:
        if hint in lowered:
            break
    else:
        return text
    if _FIELD_GATE.search(lowered):
        text = _FIELD.sub(_mask_field, text)
    if "authoriz" in lowered:
        text = _AUTHORIZATION.sub(_mask_authorization, text)
    if "bearer" in lowered:
        text = _BEARER.sub(_mask_bearer, text)
    if " -" in text or "\n-" in text or "\t-" in text or text[:1] == "-":  # a flag starts a word
        text = _FLAG.sub(rf"\1{_MASK}", text)
    if "PRIVATE KEY-----" in text:
        text = _PEM_PRIVATE.sub(rf"\1{_MASK}\2", text)
    return text


def names_a_secret_flag(arg: str) -> bool:
    """True for `--password`, `--token`, `--client-secret`, `--api-key` …: the next argument is a secret."""
    return _FLAG_ALONE.fullmatch(arg) is not None


def _mask_field(match: re.Match[str]) -> str:
    name, separator, value = match[1], match[2], match[3]
    if name[-3:].lower() == "pwd" and ":" in separator:  # `pwd: /home/app` is the working directory
        return match[0]
    if "." in name and separator == ":":  # `app.token:handle`, a callable; `db.password: x` has a blank
        return match[0]
    unprefixed = value.lstrip("bBrRuU")  # b'…', r"…"
    quote = unprefixed[:1] if unprefixed[:1] in ("'", '"') else ""
    if quote:  # a quoted value stays quoted: `"password": "***"`
        if unprefixed.strip("'\"").lower() in _NOT_SECRETS:
            return match[0]
        return f"{name}{separator}{quote}{_MASK}{quote}"
    suffix = ""
    if value[0] not in "([{" and "(" not in value:  # `(password: x); retry …` keeps its `);`
        core = value.rstrip(")]},;")
        value, suffix = core, value[len(core) :]
    if value.lower() in _NOT_SECRETS:
        return match[0]
    return f"{name}{separator}{_MASK}{suffix}"


def _looks_like_a_token(value: str) -> bool:
    # `Bearer eyJhbGc.x.y` or `Bearer 3f9a…`, not `the bearer of this message` or `Bearer tokens`.
    return len(value) >= 16 or any(c.isdigit() or c == "." for c in value)


def _mask_authorization(match: re.Match[str]) -> str:
    head, scheme, value = match[1], match[2], match[3]
    if scheme is not None:
        if scheme.lower() in _SCHEMES:
            return f"{head}{scheme} {_MASK}"
        return match[0]  # `Authorization: denied for user bob`
    return f"{head}{_MASK}" if _looks_like_a_token(value) else match[0]


def _mask_bearer(match: re.Match[str]) -> str:
    return f"{match[1]}{_MASK}" if _looks_like_a_token(match[2]) else match[0]
