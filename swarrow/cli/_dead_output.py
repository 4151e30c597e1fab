"""How the `swarrow dead` commands print dead letters: producer data escaped, bodies as text or hex, cut."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from swarrow._dead_letter import DeadLetter, jsonable
from swarrow.dead_letters import DeadLetterSummary
from swarrow.logs import escape_control

__all__ = ["body_text", "describe_letter", "letter_as_json", "list_lines", "safe"]

_PROPERTIES = ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id", "reply_to",
               "expiration", "message_id", "timestamp", "type", "user_id", "app_id")  # fmt: skip


def safe(text: object) -> str:
    """Producer text made inert for a terminal: control, line-breaking and bidi characters escaped."""
    return escape_control(text if isinstance(text, str) else str(text))


def _when(at: datetime | None) -> str:
    return at.isoformat(timespec="seconds") if at is not None else "-"


def list_lines(summary: DeadLetterSummary) -> Iterator[str]:
    """The `dead list` table."""
    plural = "" if summary.total == 1 else "s"
    yield (
        f"{safe(summary.queue)}: {summary.total} dead letter{plural}, grouped by {summary.group_by} "
        f"(read in {summary.elapsed:.2f} s; all left in the queue)"
    )
    if not summary.groups:
        return
    heading = summary.group_by.upper()
    yield f"{'COUNT':>8}  {'FIRST FAILED':<25}  {'LAST FAILED':<25}  {'SAMPLE MESSAGE ID':<36}  {heading}"
    for group in summary.groups:
        sample = safe(group.sample_message_id or "-")
        yield (
            f"{group.count:>8}  {_when(group.first_failed_at):<25}  {_when(group.last_failed_at):<25}  "
            f"{sample:<36}  {safe(group.key)}"
        )


def _utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def body_text(body: bytes, limit: int) -> tuple[str, str]:
    """(`text` or `hex`, the body cut at `limit` bytes (0: whole)) — text only when printable UTF-8."""
    cut = body if limit == 0 else body[:limit]
    if _utf8(body):
        text = cut.decode("utf-8", "ignore")  # a cut may split a character
        if all(ch.isprintable() or ch in "\n\t\r" for ch in text):
            return "text", text
    return "hex", cut.hex(" ")


def describe_letter(letter: DeadLetter, *, body: bool, body_limit: int) -> Iterator[str]:
    """The `dead show` block for one letter."""
    m = letter.message
    yield (
        f"#{letter.position}  message_id={safe(m.message_id or '-')}  error={safe(letter.error_type)}  "
        f"attempts={'-' if letter.attempts is None else letter.attempts}  "
        f"failed_at={_when(letter.failed_at)}"
    )
    yield f"  original queue: {safe(letter.original_queue or '-')}   replayed: {letter.replay_count} time(s)"
    if letter.error_message:
        yield f"  error message: {safe(letter.error_message)}"
    properties = {name: getattr(m, name) for name in _PROPERTIES if getattr(m, name) is not None}
    if properties:
        yield "  properties: " + ", ".join(f"{k}={safe(jsonable(v))}" for k, v in properties.items())
    yield "  headers:"
    for key, value in sorted(m.headers.items()):
        yield f"    {safe(key)}: {safe(jsonable(value))}"
    if body:
        kind, text = body_text(m.body, body_limit)
        cut = body_limit and len(m.body) > body_limit
        note = f", first {body_limit} shown" if cut else ""
        yield f"  body ({len(m.body)} bytes, {kind}{note}):"
        for line in (text.splitlines() or [""]) if kind == "text" else [text]:
            yield f"    {safe(line)}"
    yield ""


def letter_as_json(letter: DeadLetter, *, body: bool, body_limit: int) -> dict[str, Any]:
    """One letter as JSON data; the body (with `body`) as UTF-8 text when it is, else base64."""
    m = letter.message
    data = letter.summary()
    data["properties"] = {name: jsonable(getattr(m, name)) for name in _PROPERTIES}
    data["headers"] = jsonable(dict(m.headers))
    if body:
        cut = m.body if body_limit == 0 else m.body[:body_limit]
        if _utf8(m.body):
            encoded: dict[str, Any] = {"encoding": "utf-8", "data": cut.decode("utf-8", "ignore")}
        else:
            encoded = {"encoding": "base64", "data": base64.b64encode(cut).decode("ascii")}
        encoded["size"] = len(m.body)
        encoded["truncated"] = len(cut) < len(m.body)
        data["body"] = encoded
    return data
