"""Answer callers: publish the callback's value (or why it failed) to the request's `reply_to`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

import anyio
from prometheus_client import Counter

from swarrow import replies
from swarrow.errors import InvalidMessageError
from swarrow.message import Message
from swarrow.metrics import SwarrowMetrics
from swarrow.outcome import (
    ACKED,
    DEAD_LETTERED,
    EXPIRED,
    REJECTED,
    get_error,
    get_outcome,
    record_outcome,
    reset_error,
    reset_outcome,
)
from swarrow.processor import Processor
from swarrow.provider import MessageProvider
from swarrow.publishable import check_publishable
from swarrow.publisher import Publisher
from swarrow.rpc.deadline import request_deadline
from swarrow.rpc.values import ReplyBody, UnencodableValue, encode_value
from swarrow.topology import ERROR_MESSAGE_HEADER, ERROR_TYPE_HEADER, error_text, qualified_name
from swarrow.validation import require_seconds

__all__ = ["ReplyProcessor"]

logger = logging.getLogger(__name__)

_GIVEN_UP: Final = frozenset({DEAD_LETTERED, REJECTED})
# RabbitMQ 3.10 returns every mandatory publish to a direct reply-to address, even one it delivers: those
# replies go out without `mandatory`, and a caller that is gone loses its reply without a trace.
_DIRECT: Final = "amq.rabbitmq.reply-to."


class ReplyProcessor:
    """Publish a reply once the request's fate is settled; ack requests whose caller stopped waiting.

    Sits outside the ack layer, so a reply leaves only after the request is acked (or given up):
    at most one reply per delivery. A crash between the ack and the reply loses that reply; the
    caller's timeout covers it. Successful requests (outcome `acked`) get the callback's value;
    requests given up for good (dead-lettered, rejected without requeue) get an error reply: an
    empty body with `x-swarrow-error-type` / `x-swarrow-error-message`. Retried or requeued
    requests get nothing now: the next attempt answers. A reply that cannot be delivered (the
    caller is gone) is logged and counted, never retried — except to RabbitMQ's direct reply-to
    addresses, which RabbitMQ 3.10 cannot report on (see `_DIRECT`). With `metrics`, replies are
    counted in `swarrow_replies_total`. Messages without `reply_to` pass through.
    """

    def __init__(
        self,
        inner: Processor,
        /,
        *,
        publisher: Publisher,
        provider: MessageProvider,
        publish_timeout: float = 5.0,
        metrics: SwarrowMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inner = inner
        self.publisher = publisher
        self.provider = provider
        self.publish_timeout = require_seconds("publish_timeout", publish_timeout)
        self.clock = clock
        self.metrics = metrics
        self._counters: dict[tuple[str, str], Counter] = {}

    async def __call__(self, message: Message, /) -> bool:
        if message.reply_to is None:
            return await self.inner(message)
        deadline = request_deadline(message)
        if deadline is not None and self.clock() >= deadline:
            return await self._expire(message, deadline)
        replies.clear()
        # The consumer resets these per message too; a hand-built stack without metrics or logger
        # layers would otherwise read the previous message's outcome here.
        reset_outcome()
        reset_error()
        try:
            keep_going = await self.inner(message)
        except Exception as exc:
            if get_outcome() in _GIVEN_UP:
                await self._send_error(message, get_error() or (qualified_name(exc), str(exc)))
            raise
        outcome = get_outcome()
        if outcome == ACKED:
            await self._send_value(message)
        elif outcome in _GIVEN_UP:
            await self._send_error(message, get_error() or ("swarrow.GivenUp", "the request was given up"))
        return keep_going

    async def _expire(self, message: Message, deadline: float) -> bool:
        await self.provider.ack(message)
        record_outcome(EXPIRED, overwrite=True)
        replies.record_reply("none")
        late = self.clock() - deadline
        logger.warning("request %s expired %.3f s before it was processed: acked without running the "
                       "callback (its caller stopped waiting)", message.message_id, late,
                       extra={"queue": message.queue, "message_id": message.message_id})  # fmt: skip
        return True

    async def _send_value(self, message: Message) -> None:
        returned, value = replies.callback_result()
        if not returned or value is False:
            value = None
        try:
            body = encode_value(value)
        except UnencodableValue as exc:
            await self._send_error(message, ("TypeError", str(exc)))
            return
        await self._publish(message, body, "sent")

    def _reply(self, request: Message, body: ReplyBody) -> Message:
        reply = Message(
            body=body.body,
            headers=body.headers,
            content_type=body.content_type,
            correlation_id=request.correlation_id,
            delivery_mode=1,
        )
        # A header the wire cannot carry is the callback's fault: an error reply says so, where a
        # publish would fail (or, for a NaN float, get the worker's whole connection closed by RabbitMQ).
        check_publishable(reply)
        return reply

    async def _send_error(self, message: Message, error: tuple[str, str]) -> None:
        error_type, error_message = error
        headers: dict[str, Any] = {
            ERROR_TYPE_HEADER: error_type,
            ERROR_MESSAGE_HEADER: error_text(error_message),
        }
        await self._publish(message, ReplyBody(b"", None, headers), "error")

    async def _publish(self, request: Message, body: ReplyBody, status: replies.ReplyStatus) -> None:
        reply_to = request.reply_to
        if reply_to is None:  # pragma: no cover - checked by the caller
            return
        try:
            reply = self._reply(request, body)
        except InvalidMessageError as exc:
            if status == "error":  # pragma: no cover - error replies carry two str headers
                raise
            await self._send_error(request, (qualified_name(exc), str(exc)))
            return
        try:
            with anyio.fail_after(self.publish_timeout):
                await self.publisher.publish(reply, reply_to, mandatory=not reply_to.startswith(_DIRECT))
        except Exception as exc:
            self._count(request.queue, "lost")
            logger.warning("reply to request %s could not be delivered to %r (the caller is gone?): %s",
                           request.message_id, reply_to, exc,
                           extra={"queue": request.queue, "message_id": request.message_id})  # fmt: skip
            return
        self._count(request.queue, status)

    def _count(self, queue: str, status: replies.ReplyStatus) -> None:
        replies.record_reply(status)
        if self.metrics is None:
            return
        counter = self._counters.get((queue, status))
        if counter is None:
            counter = self._counters[(queue, status)] = self.metrics.replies.labels(
                queue=queue, result=status
            )
        counter.inc()
