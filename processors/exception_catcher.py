"""Keep the worker alive: a failed message is logged, not fatal."""

from __future__ import annotations

import logging

from swarrow.message import Message
from swarrow.outcome import record_error
from swarrow.processor import Processor
from swarrow.topology import error_text, qualified_name

__all__ = ["ExceptionCatcherProcessor"]

_logger = logging.getLogger(__name__)


class ExceptionCatcherProcessor:
    """Log an exception from the inner layers with its traceback and return True, so consuming goes on.

    Only `Exception` is caught: anyio cancellation (a stop, a time limit) still passes through.
    Put it inside the limits (max_messages …) and outside ack, which has settled the message by then.
    """

    def __init__(self, inner: Processor, /, *, logger: logging.Logger | None = None) -> None:
        if logger is not None and not isinstance(logger, logging.Logger):
            raise ValueError(f"logger must be a logging.Logger or None, got {logger!r}")
        self.inner = inner
        self.logger = logger if logger is not None else _logger

    async def __call__(self, message: Message, /) -> bool:
        try:
            return await self.inner(message)
        except Exception as exc:
            record_error(qualified_name(exc), error_text(str(exc)))  # for the job tracker outside
            if getattr(exc, "leave_unsettled", False):  # a stop, not a failure: said once, no traceback
                self.logger.warning("message %s from %s left unacked for redelivery: %s", message.message_id,
                                    message.queue, exc, extra={"queue": message.queue,
                                                               "message_id": message.message_id})  # fmt: skip
                return True
            self.logger.exception(
                "message %s from %s failed: %s",
                message.message_id,
                message.queue,
                type(exc).__name__,
                extra={
                    "queue": message.queue,
                    "message_id": message.message_id,
                    "error_type": type(exc).__name__,
                },
            )
            return True
