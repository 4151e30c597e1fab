"""Fail a message that runs too long, so one stuck callback cannot stall the worker."""

from __future__ import annotations

import logging

import anyio

from swarrow.callback import CallbackProcessor
from swarrow.control import current_control
from swarrow.errors import TimeLimitExceeded
from swarrow.message import Message
from swarrow.processor import Processor
from swarrow.validation import require_seconds

__all__ = ["TimeLimitProcessor"]

logger = logging.getLogger(__name__)


def _runs_in_thread(processor: object) -> bool:
    """True if the innermost processor runs a sync callback in a worker thread."""
    for _ in range(64):  # a stack is a short chain; the bound guards against cycles
        if isinstance(processor, CallbackProcessor):
            return not processor.is_async
        processor = getattr(processor, "inner", None)
        if processor is None:
            return False
    return False


class TimeLimitProcessor:
    """Cancel the inner layers after `seconds` and raise `TimeLimitExceeded` (a failure for the outer layers).

    Async callbacks are cancelled at their next await. A sync callback runs in a thread that Python
    cannot kill: it stops early only if it calls `anyio.from_thread.check_cancelled()` now and then;
    otherwise the limit is enforced when the thread returns (the message then fails as timed out),
    and a thread that never returns holds its worker. `exit_on_timeout=True` also stops the consumer at once
    (`stop_now`) after a timeout, so a supervisor replaces a process whose callback may have left
    bad state behind. Opt-in: the cancel scope costs ~20 µs per message.
    """

    def __init__(self, inner: Processor, /, *, seconds: float, exit_on_timeout: bool = False) -> None:
        if not isinstance(exit_on_timeout, bool):
            raise ValueError(f"exit_on_timeout must be a bool, got {exit_on_timeout!r}")
        self.inner = inner
        self.seconds = require_seconds("seconds", seconds)
        self.exit_on_timeout = exit_on_timeout
        self.in_thread = _runs_in_thread(inner)
        self.timeouts = 0

    async def __call__(self, message: Message, /) -> bool:
        try:
            with anyio.fail_after(self.seconds) as scope:
                keep_going = await self.inner(message)
        except TimeoutError as exc:
            if not scope.cancelled_caught:
                raise  # the callback's own TimeoutError, not ours
            raise self._timed_out(message, late=False) from exc
        if scope.cancel_called:  # a sync callback that could not be interrupted returned late
            raise self._timed_out(message, late=True)
        return keep_going

    def _timed_out(self, message: Message, *, late: bool) -> TimeLimitExceeded:
        self.timeouts += 1
        error = TimeLimitExceeded(
            f"message {message.message_id or message.delivery_tag!r} from {message.queue!r} "
            f"ran past the time limit of {self.seconds:g}s"
        )
        logger.warning(
            "%s%s",
            error,
            " (its sync callback could not be interrupted and finished late)" if late else "",
            extra={"queue": message.queue, "message_id": message.message_id},
        )
        if self.exit_on_timeout and (control := current_control()) is not None:
            control.stop_now("time_limit", str(error))
        return error
