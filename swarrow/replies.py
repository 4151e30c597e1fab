"""What the reply layer needs to know about the request in flight: the callback's value, the reply's fate.

The callback writes the value it returned; the reply layer, further out, reads it and records what
became of the reply for the metrics layer. Why a message was given up comes from
`swarrow.outcome.get_error`, which the settling layers already fill. Like `swarrow.outcome`, a
context variable per consumer worker task: only messages with `reply_to` pay for it, and the reply
layer clears it before each such message, so a value never leaks from one request to the next.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Literal, TypeAlias

__all__ = ["ReplyStatus", "callback_result", "clear", "record_reply", "record_result", "reply_status"]

ReplyStatus: TypeAlias = Literal["sent", "error", "lost", "none"]
"""What became of a request's reply: a value sent, an error reply sent, lost (unroutable), or none due."""

_NOTHING: Any = object()
_result: ContextVar[Any] = ContextVar("swarrow_callback_result", default=_NOTHING)
_reply: ContextVar[ReplyStatus] = ContextVar("swarrow_reply_status", default="none")


def clear() -> None:
    """Forget the previous request's value and reply (the reply layer, before each request)."""
    _result.set(_NOTHING)
    _reply.set("none")


def record_result(value: Any) -> None:
    """Keep what the callback returned (the callback processor, for messages with `reply_to`)."""
    _result.set(value)


def callback_result() -> tuple[bool, Any]:
    """(True, value) when the callback returned for the current request, else (False, None)."""
    value = _result.get()
    return (False, None) if value is _NOTHING else (True, value)


def record_reply(status: ReplyStatus) -> None:
    """Say what became of the current request's reply (the reply layer; metrics read it)."""
    _reply.set(status)


def reply_status() -> ReplyStatus:
    """What became of the current request's reply; only meaningful for messages with `reply_to`."""
    return _reply.get()
