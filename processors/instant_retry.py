"""Retry in place, for failures that pass in a moment (a dropped connection, a lock timeout)."""

from __future__ import annotations

import logging

import anyio

from swarrow.errors import PermanentError, RetryLater, StopConsumer
from swarrow.message import Message
from swarrow.processor import Processor
from swarrow.validation import require_int, require_seconds

__all__ = ["InstantRetryProcessor"]

logger = logging.getLogger(__name__)

# Decisions the callback already made: retrying them in place would override it.
_NEVER_RETRIED = (RetryLater, PermanentError, StopConsumer)


def _require_exception_types(value: object) -> None:
    valid = isinstance(value, tuple) and all(isinstance(t, type) and issubclass(t, Exception) for t in value)
    if not valid:
        raise ValueError(f"retry_on must be a tuple of exception classes, got {value!r}")


class InstantRetryProcessor:
    """Call the inner processor up to `attempts` times in all, `delay` s apart; re-raise the last failure.

    Only exceptions in `retry_on` are retried; `RetryLater`, `PermanentError` and `StopConsumer` never
    are. The message is held (unacked) while it waits, so keep `attempts × delay` short; use
    `RetryProcessor` for anything longer.
    """

    def __init__(
        self,
        inner: Processor,
        /,
        *,
        attempts: int = 3,
        delay: float = 0.5,
        retry_on: tuple[type[Exception], ...] = (Exception,),
    ) -> None:
        require_int("attempts", attempts)
        require_seconds("delay", delay, allow_zero=True)
        _require_exception_types(retry_on)
        self.inner = inner
        self.attempts = attempts
        self.delay = float(delay)
        self.retry_on = retry_on

    async def __call__(self, message: Message, /) -> bool:
        call = 1
        while True:
            try:
                return await self.inner(message)
            except _NEVER_RETRIED:
                raise
            except Exception as exc:
                if call >= self.attempts or not isinstance(exc, self.retry_on):
                    raise
                logger.warning(
                    "message %s failed (%s), instant retry %d of %d",
                    message.message_id,
                    type(exc).__name__,
                    call,
                    self.attempts - 1,
                    extra={"queue": message.queue, "message_id": message.message_id},
                )
            if self.delay:
                await anyio.sleep(self.delay)
            call += 1
