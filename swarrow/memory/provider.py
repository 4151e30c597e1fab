"""Consuming and publishing on a `MemoryBroker`, the way an AMQP channel does."""

from __future__ import annotations

import itertools
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeVar

from swarrow.errors import ConfigurationError
from swarrow.memory._queue import Entry
from swarrow.message import Message, delivered_message
from swarrow.validation import require_int

if TYPE_CHECKING:  # the broker makes providers (`MemoryBroker.provider`): a type, not an import
    from swarrow.memory.broker import MemoryBroker

__all__ = ["MemoryMessageProvider", "MemoryPublisher"]

logger = logging.getLogger(__name__)

_consumer_ids = itertools.count(1)
_T = TypeVar("_T")


class _RecentList(list[_T]):
    """A list that keeps only its last `limit` items (the older half is dropped when full)."""

    limit = 10_000

    def append(self, item: _T, /) -> None:
        if len(self) >= self.limit:
            del self[: self.limit // 2]
        super().append(item)


class MemoryMessageProvider:
    """Consumes one queue of a `MemoryBroker` like an AMQP consumer on its own channel.

    The broker pushes up to `prefetch` deliveries into this provider's buffer as soon as they are
    ready, as RabbitMQ does: a pushed message counts as delivered (it is no longer ready, and comes
    back redelivered if the provider closes before settling it).
    """

    def __init__(self, broker: MemoryBroker, queue: str, *, prefetch: int = 100) -> None:
        try:
            require_int("prefetch", prefetch)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self.broker = broker
        self._queue_name = queue
        self._prefetch = prefetch
        self._buffer: deque[Message] = deque()
        self._unacked: dict[int, Entry] = {}
        self._tags = itertools.count(1)
        self._consumer_tag = f"memory-{next(_consumer_ids)}"
        self._consuming = False
        self._closed = False
        # Recent settlements, for tests and demos; bounded so a long `memory://` run does not grow.
        self.acked: _RecentList[int] = _RecentList()
        self.rejected: _RecentList[tuple[int, bool]] = _RecentList()
        self.acked_count = 0
        self.rejected_count = 0
        self.unknown_settlements = 0

    @property
    def queue_name(self) -> str:
        """The queue consumed."""
        return self._queue_name

    @property
    def prefetch(self) -> int:
        """Unsettled deliveries allowed at once."""
        return self._prefetch

    @property
    def is_consuming(self) -> bool:
        """True between `start()` and `stop_consuming()` / `close()` while the queue exists."""
        return self._consuming and self.broker._has_queue(self._queue_name)

    @property
    def unsettled_count(self) -> int:
        """Deliveries pushed to this provider (taken or still buffered) and neither acked nor rejected."""
        return len(self._unacked)

    async def start(self) -> None:
        """Register as a consumer; `ConfigurationError` if the queue does not exist."""
        if self._closed:
            raise RuntimeError("this provider is closed")
        if self._consuming:
            return
        self._consuming = True
        try:
            self.broker._subscribe(self._queue_name, self)
        except ConfigurationError:
            self._consuming = False
            raise

    def _has_room(self) -> bool:
        return self._consuming and len(self._unacked) < self._prefetch

    def _push(self, entry: Entry, quorum: bool) -> None:
        tag = next(self._tags)
        self._unacked[tag] = entry
        message = entry.message
        headers = message.headers
        if quorum and entry.delivery_count:
            headers = {**headers, "x-delivery-count": entry.delivery_count}
        self._buffer.append(
            delivered_message(
                message.body,
                headers,
                message.content_type,
                message.content_encoding,
                message.delivery_mode,
                message.priority,
                message.correlation_id,
                message.reply_to,
                message.expiration,
                message.message_id,
                message.timestamp,
                message.type,
                message.user_id,
                message.app_id,
                tag,
                self._consumer_tag,
                entry.redelivered,
                message.exchange,
                message.routing_key,
                self._queue_name,
            )
        )

    def receive_nowait(self) -> Message | None:
        """A delivery already pushed to this provider, or None."""
        buffer = self._buffer
        return buffer.popleft() if buffer else None

    async def receive(self) -> Message | None:
        """Wait for a delivery; None once stopped (after the deliveries already pushed) or closed."""
        buffer = self._buffer
        while True:
            if buffer:
                return buffer.popleft()
            if not self._consuming:
                return None
            await self.broker._wait()

    @property
    def buffered(self) -> int:
        """Deliveries pushed to this provider and not taken yet."""
        return len(self._buffer)

    @property
    def delivering(self) -> bool:
        """True until `stop_consuming()` / `close()`: deliveries may still arrive."""
        return self._consuming

    async def wait_buffered(self) -> bool:
        """Wait until a delivery is buffered, without taking it (True), or until stopped (False)."""
        buffer = self._buffer
        while not buffer:
            if not self._consuming:
                return False
            await self.broker._wait()
        return True

    async def messages(self) -> AsyncIterator[Message]:
        """Deliveries until the provider stops."""
        await self.start()
        while (message := await self.receive()) is not None:
            yield message

    def _settle(self, message: Message) -> Entry | None:
        tag = message.delivery_tag
        entry = (
            self._unacked.pop(tag, None)
            if tag is not None and message.consumer_tag == self._consumer_tag
            else None
        )
        if entry is None:
            self.unknown_settlements += 1
            logger.error(
                "settlement of unknown delivery tag %s on %s dropped (already settled or stale)",
                message.delivery_tag,
                self._queue_name,
            )
        return entry

    async def ack(self, message: Message) -> None:
        """Acknowledge: the message leaves the broker."""
        if self._settle(message) is not None:
            self.acked_count += 1
            self.acked.append(message.delivery_tag or 0)
            self.broker._settled(self._queue_name)

    async def reject(self, message: Message, *, requeue: bool = False) -> None:
        """Reject: back into the queue (redelivered), or dead-lettered / dropped."""
        entry = self._settle(message)
        if entry is None:
            return
        self.rejected_count += 1
        self.rejected.append((message.delivery_tag or 0, requeue))
        if requeue:
            self.broker._requeue(self._queue_name, [entry])
        else:
            self.broker._reject(self._queue_name, entry)

    async def stop_consuming(self) -> None:
        """Take no new deliveries; `receive()` hands over those already pushed, then returns None."""
        if self._consuming:
            self._consuming = False
            self.broker._unsubscribe(self._queue_name, self)

    async def close(self) -> None:
        """Stop and return every unsettled delivery (taken or buffered) to the queue, redelivered."""
        await self.stop_consuming()
        self._closed = True
        self._buffer.clear()
        entries = [self._unacked.pop(tag) for tag in sorted(self._unacked)]
        if entries:
            self.broker._requeue(self._queue_name, entries, closing=True)


class MemoryPublisher:
    """Publishes into a `MemoryBroker`; confirms are immediate, unroutable mandatory publishes raise."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    async def publish(
        self, message: Message, routing_key: str, exchange: str = "", *, mandatory: bool = True
    ) -> None:
        """Route `message` now; `PublishError` when unroutable (mandatory), refused or nacked.

        An id-less message gets a random `message_id`, as the AMQP publisher's client (aiormq) gives
        it one; `MemoryBroker.publish_nowait` routes a message exactly as given (a foreign producer).
        """
        if not message.message_id:
            message = message.replace(message_id=uuid.uuid4().hex)
        self.broker.publish_nowait(message, routing_key, exchange, mandatory=mandatory)

    async def close(self) -> None:
        """Nothing to release."""
