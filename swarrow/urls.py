"""Broker URLs, parsed once and checked up front; the one place passwords are masked for printing.

A URL names one node or a cluster: `amqp://user:pass@h1:5672,h2:5672,h3/vhost?heartbeat=30`, or a
list of such URLs (the config file's `url = [...]`, or `SWARROW_URL` with URLs separated by `,` or
`;`) that must agree on everything but the hosts. The credentials run from `://` to the LAST `@`,
so a generated password may hold `/ ? # @ :` unencoded; an `@` in a vhost or query must be written
`%40`. `parse_url` returns a `BrokerURL` whose `nodes` share its credentials, vhost and query
options, and whose `node_url(node)` is what a client library connects to. Printing goes through
`mask_url` / `mask_text` / `mask_argv` / `BrokerURL.masked`: a password never reaches a log line, an
error message, a `repr` or a command line.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

from swarrow._secret_words import mask_named_secrets, names_a_secret_flag
from swarrow.errors import InvalidURLError

__all__ = [
    "DEFAULT_PORTS",
    "DEFAULT_URL",
    "BrokerNode",
    "BrokerURL",
    "encode_credentials",
    "mask_argv",
    "mask_text",
    "mask_url",
    "parse_url",
]

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_PORTS: Final = {"amqp": 5672, "amqps": 5671}
_SCHEMES: Final = (*DEFAULT_PORTS, "memory")
_EXPECTED: Final = "the form is amqp://user:password@host:port/vhost, amqps://… or memory://NAME"
_MASK: Final = "***"
# A user given without a password that is scrubbed from error texts: a token, not a short name like `app`
# whose every occurrence in a message would go.
_TOKEN_MIN: Final = 8
_SCHEME_PREFIX: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# Where a second URL starts in a list written as one string ("amqp://…,amqp://…" or with ";").
# Only where a run of blanks starts (from inside a long run, each start rescanned it: 53 s at 100 KB).
_URL_SEPARATOR: Final = re.compile(r"(?<!\s)\s*[,;]\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")
# A URL with credentials inside free text: everything from the scheme to the last `@` before a blank or quote.
# The password may hold a line break or a control character (a blank ends the URL in free text).
# Applied to each blank-free piece of text up to its last `@` (`_mask_urls`), a scheme starting only where a
# run of scheme characters starts: on `@aaaa…` or `@a:ba:b…` the pattern alone rescanned the rest of the
# text from every position (10-30 s on 100 KB).
_CREDENTIALS_IN_TEXT: Final = re.compile(
    r"(?P<head>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*+:/{0,2}(?P<user>[^\s:/@'\"<>]*+))"
    r":(?P<secret>[^ \t'\"<>]*)@"
)
_BLANK_FREE: Final = re.compile(r"[^ \t'\"<>]++")
_HOST_NAME: Final = re.compile(r"[\w-]+(\.[\w-]+)*\.?")
# A query parameter named like a credential (token, api-key, secret, password, signature, auth …), any case.
# (Any parameter is matched, its name checked in Python: a backtracking pattern took seconds on a long name.)
_QUERY_PARAM: Final = re.compile(r"([?&;][\w.-]++=)([^&#;\s'\"]*+)")
_CREDENTIAL_WORD: Final = re.compile(r"token|key|secret|passw(?:or)?d|pwd|signature|sig|auth|credential")
# A `password=` (or `sslpassword=`) parameter of a query string or a `--flag=value`, any case.
_PASSWORD_PARAM: Final = re.compile(r"((?:^|[?&;=\s-])[a-z_]*password=)([^&#;\s]*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class BrokerNode:
    """One broker node of a URL: host name or address (IPv6 without brackets) and port."""

    host: str
    port: int

    @property
    def authority(self) -> str:
        """`host:port`, an IPv6 address in brackets: the form URLs and logs use."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.authority


@dataclass(frozen=True, slots=True, repr=False)
class BrokerURL:
    """A parsed broker URL: its scheme, node(s), and the credentials, vhost and options they share.

    `str()` and `repr()` are masked (`masked`); only `node_url()` / `node_urls()` carry the password,
    for the client library's connect call. A `memory://NAME` URL has no nodes and `name` set.
    """

    scheme: str
    nodes: tuple[BrokerNode, ...] = ()
    username: str | None = None
    password: str | None = None
    vhost: str = "/"
    query: str = ""
    name: str = ""

    @property
    def is_memory(self) -> bool:
        """True for `memory://`: the in-process broker."""
        return self.scheme == "memory"

    @property
    def is_cluster(self) -> bool:
        """True when the URL names more than one node."""
        return len(self.nodes) > 1

    @property
    def masked(self) -> str:
        """The whole URL (every node) with the password as `***`: safe to log."""
        if self.is_memory:
            return f"memory://{self.name}"
        return self._build(",".join(node.authority for node in self.nodes), secret=False)

    def masked_node(self, node: BrokerNode) -> str:
        """The URL of one node with the password as `***`, e.g. for "connected to …" lines."""
        return self._build(node.authority, secret=False)

    def node_url(self, node: BrokerNode) -> str:
        """The URL to connect to `node`, password included and percent-encoded: never log it."""
        return self._build(node.authority, secret=True)

    def secret_url(self) -> str:
        """The whole URL (every node) with the password percent-encoded, for a client: never log it."""
        if self.is_memory:
            return f"memory://{self.name}"
        return self._build(",".join(node.authority for node in self.nodes), secret=True)

    def node_urls(self) -> tuple[str, ...]:
        """`node_url` of every node, in the order given: never log them."""
        return tuple(self.node_url(node) for node in self.nodes)

    def scrub(self, text: str) -> str:
        """`text` (an error from a client library, say) with this URL's password (or lone user) and any URL's
        masked."""
        password = self.password
        if password is None and self.username and len(self.username) >= _TOKEN_MIN:
            password = self.username  # a user given alone is a token (`masked` hides it too)
        if password:
            for form in {password, quote(password, safe=""), quote(password)}:
                text = text.replace(form, _MASK)
        return mask_text(text)

    def _build(self, authority: str, *, secret: bool) -> str:
        userinfo = ""
        user = quote(self.username or "", safe="")
        if self.password is not None:
            userinfo = f"{user}:{quote(self.password, safe='') if secret else _MASK}@"
        elif self.username is not None:  # a user alone: services that authenticate by token put it there
            userinfo = f"{user if secret else _MASK}@"
        # aiormq reads the vhost from the decoded path, "/" and "" both meaning the default vhost.
        path = "/" if self.vhost == "/" else "/" + quote(self.vhost, safe="")
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{userinfo}{authority}{path}{query}"

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        return f"BrokerURL({self.masked!r})"


def mask_url(url: str) -> str:
    """`url` with everything between `://` (or the scheme's `:`) and the last `@` after the user masked.

    Works on any shape — a password holding `/ # ? @ :` unencoded, several nodes, several URLs joined
    by `,`, a URL that does not parse — so it is safe for error messages about bad URLs too. The
    user name is kept beside a password (`amqp://app:***@host/`); a user alone may be a token and is
    masked (`amqp://***@host/`).
    """
    parts = _URL_SEPARATOR.split(url)
    if len(parts) > 1 and all("@" in part for part in parts):  # a list of URLs, as parse_url reads it
        separators = _URL_SEPARATOR.findall(url)
        return "".join(_mask_one(part) + sep for part, sep in zip(parts, [*separators, ""], strict=True))
    return _mask_one(url)


def _mask_one(url: str) -> str:
    at = url.rfind("@")
    if at < 0:
        return url
    separator = url.find("://")
    if 0 <= separator < at:
        start = separator + 3
    else:
        prefix = _SCHEME_PREFIX.match(url)
        start = prefix.end() if prefix is not None and url[prefix.end() : prefix.end() + 1] == "/" else 0
        start += len(url[start:at]) - len(url[start:at].lstrip("/"))
    userinfo = url[start:at]
    colon = userinfo.find(":")
    if colon < 0:
        if start == 0 or separator < 0:  # no "scheme://": the part before @ may be a bare password
            return _MASK + url[at:]
        # A user and no password: services that authenticate by token put it there (amqp://TOKEN@host/).
        return f"{url[:start]}{_MASK}{url[at:]}"
    return f"{url[:start]}{userinfo[:colon]}:{_MASK}{url[at:]}"


def encode_credentials(url: str) -> str:
    """`url` with its user and password percent-encoded, read as `parse_url` reads them.

    The credentials run from `://` to the last `@`, so a password holding `/ ? # @ :` unencoded is
    one password, not a host, a path or a fragment: an HTTP client (the OTLP exporter's) would cut it
    at the first `/ ? #` and print the piece it took for a host. A URL without credentials is unchanged.
    """
    separator = url.find("://")
    at = url.rfind("@")
    if separator < 0 or at < separator:
        return url
    user, colon, password = url[separator + 3 : at].partition(":")
    userinfo = quote(unquote(user), safe="")
    if colon:
        userinfo += ":" + quote(unquote(password), safe="")
    return f"{url[: separator + 3]}{userinfo}{url[at:]}"


def mask_text(text: str) -> str:
    """`text` with the password of every `scheme://user:password@` it contains masked (free text, logs),
    and the value of every query parameter named like a credential (`?token=…`, `&api_key=…`).

    In free text a URL ends at a blank or a quote; a password holding a blank is masked by
    `BrokerURL.scrub`, which knows it.
    """
    # Free text first (`password="a b"` masked whole): `password: x`, `Authorization: Bearer x`, `--token x`.
    text = mask_named_secrets(text)
    if "=" in text:
        # An OTLP endpoint's `?api-key=…` (urllib3 quotes it at every retry), `&token=…` without
        # its `?`, a `--password=…` flag.
        if "?" in text or "&" in text or ";" in text:
            text = _QUERY_PARAM.sub(_mask_query_value, text)
        if "assw" in text.lower():
            text = _PASSWORD_PARAM.sub(r"\1***", text)
    if "@" not in text:
        return text
    return _BLANK_FREE.sub(_mask_urls, text)


def _mask_urls(piece: re.Match[str]) -> str:
    text = piece[0]
    last = text.rfind("@")
    if last < 0 or ":" not in text:
        return text
    head = _CREDENTIALS_IN_TEXT.sub(lambda m: f"{m['head']}:{_MASK}@", text[: last + 1])
    return head + text[last + 1 :]


def _mask_query_value(match: re.Match[str]) -> str:
    name = match[1]
    lowered = name[:-1].lower()
    # Not a credential's name, or `?keyfile=/etc/tls/key.pem`: a path, not a secret.
    if not _CREDENTIAL_WORD.search(lowered) or lowered.endswith(("file", "path", "dir")):
        return match[0]
    return f"{name}{_MASK}"


def mask_argv(argv: Iterable[str]) -> list[str]:
    """A command line safe to log: every URL password masked (`--url=…` too), `password=` parameters, and
    the value after a `--password`, `--token`, `--…-secret` or `--api-key` flag.

    (`--track-jobs 'postgresql://h/db?user=u&password=…'` carries its password in the query string.)
    """
    masked: list[str] = []
    for arg in argv:
        if masked and names_a_secret_flag(masked[-1]) and not arg.startswith("-"):
            arg = _MASK  # the value of `--password VALUE`, `--token VALUE`
        arg = mask_named_secrets(arg)  # `--token=VALUE`, `--client-secret=VALUE`
        if ":" in arg.rpartition("@")[0]:
            arg = mask_url(arg)
        if "password" in arg.lower():
            arg = _PASSWORD_PARAM.sub(r"\1***", arg)
        masked.append(arg)
    return masked


def parse_url(url: str | Sequence[str]) -> BrokerURL:
    """Parse and check a broker URL (or a list of them for one cluster); `InvalidURLError` if it cannot work.

    The error names what is wrong (scheme, host, port, vhost, a node list that disagrees) and shows the
    URL masked. Ports default to 5672 (`amqp`) and 5671 (`amqps`); an empty path is the default vhost "/".
    """
    if isinstance(url, str):
        text = url.strip()
        parts = _URL_SEPARATOR.split(text)
        if len(parts) == 1:
            return _parse_one(text)
        return _merge(parts)
    items: Sequence[object] = url
    if not isinstance(items, list | tuple) or not items:
        raise InvalidURLError(
            f"a broker URL must be a string or a non-empty list of strings, got {type(url).__name__}"
        )
    strings = [item for item in items if isinstance(item, str)]
    if len(strings) != len(items):
        kinds = ", ".join(type(item).__name__ for item in items)
        raise InvalidURLError(f"a broker URL list must hold strings only, got [{kinds}]")
    return _merge([item.strip() for item in strings])


def _merge(urls: Sequence[str]) -> BrokerURL:
    parsed = [_parse_one(one) for one in urls]
    first = parsed[0]
    if first.is_memory or any(other.is_memory for other in parsed):
        raise InvalidURLError("memory:// cannot be part of a list of broker URLs")
    for other in parsed[1:]:
        for label, mine, theirs in (
            ("scheme", first.scheme, other.scheme),
            ("user", first.username, other.username),
            ("password", first.password, other.password),
            ("vhost", first.vhost, other.vhost),
            ("query options", first.query, other.query),
        ):
            if mine != theirs:
                shown = "" if label == "password" else f" ({mine!r} vs {theirs!r})"
                raise InvalidURLError(
                    f"the broker URLs {first.masked!r} and {other.masked!r} differ in {label}{shown}: "
                    "the nodes of one cluster share credentials, vhost and options"
                )
    nodes = tuple(node for one in parsed for node in one.nodes)
    _check_unique(nodes, ", ".join(one.masked for one in parsed))
    return BrokerURL(first.scheme, nodes, first.username, first.password, first.vhost, first.query)


def _parse_one(url: str) -> BrokerURL:
    shown = mask_named_secrets(mask_url(url))  # `--url "token: …"` pasted by mistake

    def invalid(reason: str) -> InvalidURLError:
        return InvalidURLError(f"invalid broker URL {shown!r}: {reason}")

    if not url:
        raise invalid(f"it is empty ({_EXPECTED})")
    prefix = _SCHEME_PREFIX.match(url)
    if prefix is None:
        raise invalid(f"no scheme ({_EXPECTED})")
    scheme = url[: prefix.end() - 1].lower()
    rest = url[prefix.end() :]
    if scheme not in _SCHEMES:
        if not rest.startswith("/"):
            raise invalid(f"no scheme ({_EXPECTED})")
        raise invalid(f"unsupported scheme {scheme!r} ({_EXPECTED})")
    if not rest.startswith("//"):
        raise invalid(f"expected '//' after '{scheme}:' ({_EXPECTED})")
    rest = rest[2:]
    if scheme == "memory":
        return BrokerURL("memory", name=rest.rstrip("/"))
    at = rest.rfind("@")
    username = password = None
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, secret = userinfo.partition(":")
        username = unquote(user)
        password = unquote(secret) if colon else None
    hosts, path, query = _split_location(rest)
    if not hosts:
        raise invalid(f"no host ({_EXPECTED})")
    nodes = tuple(_parse_node(item, scheme, invalid) for item in hosts.split(","))
    _check_unique(nodes, shown)
    vhost = unquote(path[1:]) if len(path) > 1 else "/"
    return BrokerURL(scheme, nodes, username, password, vhost, query)


def _split_location(rest: str) -> tuple[str, str, str]:
    """host list, path, query of what follows the credentials (a `#fragment` is ignored, as clients do)."""
    rest = rest.partition("#")[0]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    hosts, tail = rest[:end], rest[end:]
    path, _, query = tail.partition("?")
    return hosts, path, query


def _parse_node(item: str, scheme: str, invalid: Callable[[str], InvalidURLError]) -> BrokerNode:
    if not item:
        raise invalid("empty host in the node list (write h1:5672,h2:5672)")
    port_text: str | None
    if item.startswith("["):
        close = item.find("]")
        if close < 0:
            raise invalid(f"unclosed '[' in host {item!r}")
        host, after = item[1:close], item[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise invalid(f"host {item[: close + 1]!r} is not an IPv6 address") from None
        if after and not after.startswith(":"):
            raise invalid(f"unexpected {after!r} after host {item[: close + 1]!r}")
        port_text = after[1:] if after else None
    else:
        host, colon, after = item.partition(":")
        if not host:
            raise invalid(f"no host before ':{after}'")
        if not _HOST_NAME.fullmatch(host):
            raise invalid(f"host {host!r} is not a valid host name or address")
        port_text = after if colon else None
    if port_text is None:
        return BrokerNode(host, DEFAULT_PORTS[scheme])
    if not port_text:
        raise invalid(f"empty port after host {host!r}")
    if not (port_text.isascii() and port_text.isdigit()):
        raise invalid(f"port {port_text!r} of host {host!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise invalid(f"port {port} of host {host!r} is out of range (1-65535)")
    return BrokerNode(host, port)


def _check_unique(nodes: tuple[BrokerNode, ...], shown: str) -> None:
    seen: set[BrokerNode] = set()
    for node in nodes:
        if node in seen:
            raise InvalidURLError(f"invalid broker URL {shown!r}: node {node.authority} is listed twice")
        seen.add(node)
