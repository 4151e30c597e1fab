"""Settle each delivery once: ack after the inner layers return, reject when they raise."""

from __future__ import annotations

import logging

from swarrow.control import current_control
from swarrow.message import Message
from swarrow.outcome import ACKED, REJECTED, REQUEUED, record_outcome
from swarrow.processor import Processor
from swarrow.provider import MessageProvider

__all__ = ["AckProcessor"]

logger = logging.getLogger(__name__)


class AckProcessor:
    """Ack once the inner processor returns (even False); reject and re-raise when it raises.

    The reject requeues when `requeue_on_error` is set, unless the exception has a `requeue`
    attribute, which decides: `RepublishFailed` from the retry layer has True (its copy was not
    confirmed, so dropping or dead-lettering the original would lose it), `UndecodableMessage` False
    (it can never succeed, and a quorum queue's delivery limit cannot count it: its
    `x-delivery-count` is in the headers that do not decode); one with a truthy `leave_unsettled`
    (`RepublishInterrupted`: the consumer stops) is not settled at all. Rejects use `basic.reject`, which
    quorum queues count in `x-delivery-count`. A failing ack is never followed by a reject: one
    delivery, one settlement.
    """

    def __init__(
        self, inner: Processor, /, *, provider: MessageProvider, requeue_on_error: bool = False
    ) -> None:
        if not isinstance(requeue_on_error, bool):
            raise ValueError(f"requeue_on_error must be a bool, got {requeue_on_error!r}")
        self.inner = inner
        self.provider = provider
        self.requeue_on_error = requeue_on_error

    async def __call__(self, message: Message, /) -> bool:
        try:
            keep_going = await self.inner(message)
        except Exception as exc:
            if getattr(exc, "leave_unsettled", False):  # a stop interrupted a held copy: redelivered
                record_outcome(REQUEUED)  # what happens to it: a job tracker says retrying, not succeeded
                raise
            requeue = bool(getattr(exc, "requeue", self.requeue_on_error))
            await self.provider.reject(message, requeue=requeue)
            record_outcome(REQUEUED if requeue else REJECTED)
            if not requeue and (control := current_control()) is not None:
                control.rejected += 1
                if control.rejected == 1:  # once per run: the broker's side of it is the same every time
                    logger.warning(
                        "message %s rejected without requeue: RabbitMQ dead-letters it if %s has a "
                        "dead-letter exchange, and drops it otherwise (retries would keep it in %s.dead)",
                        message.message_id,
                        message.queue,
                        message.queue,
                        extra={"queue": message.queue, "message_id": message.message_id},
                    )
            raise
        # Outside the try: if the ack itself fails, rejecting too would settle the delivery twice.
        await self.provider.ack(message)
        record_outcome(ACKED)
        return keep_going
