"""Stop the worker after it finished a number of messages, so it is replaced with fresh memory."""

from __future__ import annotations

import logging

from swarrow.control import current_control
from swarrow.message import Message
from swarrow.processor import Processor
from swarrow.validation import require_int

__all__ = ["MaxMessagesProcessor"]

logger = logging.getLogger(__name__)


class MaxMessagesProcessor:
    """Count messages the inner layers finished (acked, retried or dead-lettered); stop at `limit`.

    A message whose inner layers raised is not counted, so put the exception catcher inside this layer.
    With concurrency > 1, messages already in flight when the limit is reached still finish (and are
    acked); each is counted once, and the consumer takes no new message after the stop.
    """

    def __init__(self, inner: Processor, /, *, limit: int) -> None:
        self.inner = inner
        self.limit = require_int("limit", limit)
        self.count = 0

    async def __call__(self, message: Message, /) -> bool:
        keep_going = await self.inner(message)
        self.count += 1
        if self.count < self.limit:
            return keep_going
        if self.count == self.limit:
            logger.info(
                "processed %d messages (limit %d): stopping",
                self.count,
                self.limit,
                extra={"queue": message.queue, "message_id": message.message_id},
            )
            if (control := current_control()) is not None:
                control.stop("max_messages", f"processed {self.count} messages (limit {self.limit})")
        return False
