"""Poison guard: a message delivered too many times goes to the dead-letter queue instead of the callback."""

from __future__ import annotations

import logging

from processors._republish import RepublishState, publish_copy
from swarrow.message import Message
from swarrow.outcome import DEAD_LETTERED, record_error, record_outcome
from swarrow.processor import Processor
from swarrow.publisher import Publisher
from swarrow.swarrot import (
    DEAD_LETTER_EXCHANGE,
    SWARROT_ATTEMPTS_HEADER,
    RetryTopologyName,
    swarrot_dead_letter_queue_name,
)
from swarrow.topology import (
    RETRY_ATTEMPT_HEADER,
    dead_letter_headers,
    dead_letter_queue_name,
    header_count,
    republish_copy,
)
from swarrow.validation import require_int, require_seconds

__all__ = ["DeliveryLimitProcessor", "count_deliveries"]

logger = logging.getLogger(__name__)

ERROR_TYPE = "swarrow.DeliveryLimitExceeded"


def count_deliveries(message: Message) -> int:
    """How many times this message has been delivered, this delivery included (the largest of the clues).

    Reads: `x-delivery-count` + 1 (quorum queues count returns there); the `count` of every `x-death`
    entry whose `queue` is this queue, any reason, summed, + 1 (each is a delivery that was rejected,
    expired or dropped, then came back through a DLX loop); `x-swarrow-attempt` + 1 and
    `swarrot_retry_attempts` + 1 (broker-delayed retries, ours or a PHP worker's); 2 when
    `redelivered` else 1. A header that is not a sane count (not an int, a bool, negative, above a
    million) is ignored.
    """
    headers = message.headers
    count = 2 if message.redelivered else 1
    for name in ("x-delivery-count", RETRY_ATTEMPT_HEADER, SWARROT_ATTEMPTS_HEADER):
        value = header_count(headers.get(name))
        if value is not None and value + 1 > count:
            count = value + 1
    return max(count, _deaths_here(message) + 1)


def _deaths_here(message: Message) -> int:
    deaths = message.headers.get("x-death")
    if not isinstance(deaths, list | tuple):
        return 0
    queue = message.queue
    return sum(
        header_count(d.get("count")) or 0 for d in deaths if isinstance(d, dict) and d.get("queue") == queue
    )


class DeliveryLimitProcessor:
    """Dead-letter a message delivered more than `max_deliveries` times without calling the inner layers.

    The copy goes to `Q.dead` (`Q_dl` with `retry_topology="swarrot"`) with the error headers (type
    `swarrow.DeliveryLimitExceeded`) once the publisher confirmed it; the outer ack then acks the
    original. Place it inside ack and outside
    retry, with `max_deliveries` above the retry attempts + 1 so that retries run their course.
    A refused copy holds the message as `RetryProcessor` does (`republish_hold`).
    """

    def __init__(
        self,
        inner: Processor,
        /,
        *,
        publisher: Publisher,
        max_deliveries: int,
        republish_hold: float | None = None,
        retry_topology: RetryTopologyName = "swarrow",
    ) -> None:
        if retry_topology not in ("swarrow", "swarrot"):
            raise ValueError(f"retry_topology must be 'swarrow' or 'swarrot', got {retry_topology!r}")
        require_int("max_deliveries", max_deliveries)
        if republish_hold is not None:
            require_seconds("republish_hold", republish_hold, allow_zero=True)
        self.inner = inner
        self.publisher = publisher
        self.max_deliveries = max_deliveries
        self.republish_hold = republish_hold
        self.republish = RepublishState()
        self.retry_topology: RetryTopologyName = retry_topology

    async def __call__(self, message: Message, /) -> bool:
        deliveries = count_deliveries(message)
        if deliveries <= self.max_deliveries:
            return await self.inner(message)
        h = message.headers
        reason = (
            f"delivered {deliveries} times, more than max_deliveries={self.max_deliveries} "
            f"(x-delivery-count={h.get('x-delivery-count')!r}, x-death count here={_deaths_here(message)}, "
            f"{RETRY_ATTEMPT_HEADER}={h.get(RETRY_ATTEMPT_HEADER)!r}, redelivered={message.redelivered})"
        )
        headers = dead_letter_headers(ERROR_TYPE, reason, attempts=deliveries, queue=message.queue)
        if self.retry_topology == "swarrot":  # exchange `dl`, key Q: into Q_dl
            exchange, key, queue = (
                DEAD_LETTER_EXCHANGE,
                message.queue,
                swarrot_dead_letter_queue_name(message.queue),
            )
        else:
            exchange, key = "", dead_letter_queue_name(message.queue)
            queue = key
        extra = {"queue": message.queue, "message_id": message.message_id, "attempt": deliveries}
        copy = republish_copy(message, headers)
        await publish_copy(
            self.publisher,
            message,
            copy,
            key,
            state=self.republish,
            hold=self.republish_hold,
            exchange=exchange,
        )
        record_outcome(DEAD_LETTERED)
        record_error(ERROR_TYPE, reason)
        logger.error("poison message %s dead-lettered to %s: %s", message.message_id, queue, reason,
                     extra={**extra, "error_type": ERROR_TYPE})  # fmt: skip
        return True
