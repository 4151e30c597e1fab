"""What became of the message being processed, told by the settling layers to the observing ones.

Ack, retry and the poison guard record the outcome; metrics and logger, further out, read it.
A context variable fits because each consumer worker is one long-lived task handling one message
at a time, and setting it costs about a tenth of a microsecond.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Final, Literal, TypeAlias

__all__ = [
    "ACKED",
    "DEAD_LETTERED",
    "EXPIRED",
    "FAILED",
    "OUTCOMES",
    "REJECTED",
    "REQUEUED",
    "RETRIED",
    "Outcome",
    "get_error",
    "get_outcome",
    "record_error",
    "record_outcome",
    "reset_error",
    "reset_outcome",
]

Outcome: TypeAlias = Literal["acked", "requeued", "rejected", "retried", "dead_lettered", "expired", "failed"]

ACKED: Final = "acked"
REQUEUED: Final = "requeued"
REJECTED: Final = "rejected"
RETRIED: Final = "retried"
DEAD_LETTERED: Final = "dead_lettered"
# A request whose caller stopped waiting: acked without running the callback (the reply layer).
EXPIRED: Final = "expired"
FAILED: Final = "failed"
OUTCOMES: Final[tuple[Outcome, ...]] = (ACKED, REQUEUED, REJECTED, RETRIED, DEAD_LETTERED, EXPIRED, FAILED)

_outcome: ContextVar[Outcome | None] = ContextVar("swarrow_outcome", default=None)
# Why it failed, as (qualified type name, message): a settling layer that swallows the exception (retry,
# the delivery limit) leaves it here for the job tracker. Strings, not the exception: nothing keeps a
# traceback (and the frames and bodies it holds) alive between messages.
_error: ContextVar[tuple[str, str] | None] = ContextVar("swarrow_error", default=None)


def reset_outcome() -> None:
    """Forget the previous message's outcome; called by the outermost observing layer."""
    _outcome.set(None)


def record_outcome(outcome: Outcome, *, overwrite: bool = False) -> None:
    """Record what happened; the innermost decision wins unless `overwrite`.

    So the ack that follows a confirmed retry copy leaves the outcome 'retried'.
    """
    if overwrite or _outcome.get() is None:
        _outcome.set(outcome)


def get_outcome() -> Outcome | None:
    """The outcome recorded for the current message, or None if no layer settled it."""
    return _outcome.get()


def reset_error() -> None:
    """Forget the previous message's error; called by the layer that reads it (the job tracker)."""
    _error.set(None)


def record_error(error_type: str, message: str) -> None:
    """Record why the current message failed when the exception stops here (retried, dead-lettered)."""
    _error.set((error_type, message))


def get_error() -> tuple[str, str] | None:
    """(error type, message) recorded for the current message, or None."""
    return _error.get()
