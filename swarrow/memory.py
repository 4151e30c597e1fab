"""An in-process broker with RabbitMQ's settlement semantics, for tests, demos and `memory://`.

Same contract as the AMQP provider (one shared test suite): prefetch windows, ack / reject /
requeue with the redelivered flag, unsettled deliveries returned on close, dead-letter exchanges
with `x-death` headers, per-queue and per-message TTL, quorum queues' `x-delivery-count` and
`x-delivery-limit`. A product feature, not a mock: the retry topology runs on it unchanged.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import anyio

from swarrow.broker import QueueInfo
from swarrow.errors import ConfigurationError, PublishError
from swarrow.message import Message
from swarrow.validation import require_int

if TYPE_CHECKING:
    from swarrow._memory_scan import MemoryQueueScan

__all__ = ["MemoryBroker", "MemoryMessageProvider", "MemoryPublisher"]

logger = logging.getLogger(__name__)

_consumer_ids = itertools.count(1)
_T = TypeVar("_T")


@dataclass(slots=True)
class _Entry:
    message: Message
    expires_at: float | None = None
    delivery_count: int = 0
    redelivered: bool = False


@dataclass(slots=True)
class _Queue:
    name: str
    durable: bool
    arguments: dict[str, Any]
    ready: deque[_Entry] = field(default_factory=deque)
    consumers: int = 0

    @property
    def ttl_ms(self) -> int | None:
        value = self.arguments.get("x-message-ttl")
        return None if value is None else int(value)

    @property
    def quorum(self) -> bool:
        return self.arguments.get("x-queue-type") == "quorum"

    @property
    def delivery_limit(self) -> int | None:
        value = self.arguments.get("x-delivery-limit")
        return None if value is None or int(value) < 0 else int(value)


@dataclass(slots=True)
class _Exchange:
    name: str
    type: str
    bindings: dict[str, set[str]] = field(default_factory=dict)


class MemoryBroker:
    """In-process queues and exchanges; see the module docstring for the semantics it keeps."""

    _named: ClassVar[dict[str, MemoryBroker]] = {}

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._queues: dict[str, _Queue] = {}
        self._exchanges: dict[str, _Exchange] = {}
        self._changed: anyio.Event | None = None
        self._publish_failures = 0
        self.published_count = 0

    @classmethod
    def named(cls, name: str = "default") -> MemoryBroker:
        """The process-wide broker behind `memory://name` (made on first use)."""
        broker = cls._named.get(name)
        if broker is None:
            broker = cls._named[name] = cls(name)
        return broker

    @property
    def url(self) -> str:
        """`memory://name`."""
        return f"memory://{self.name}"

    # -- topology -------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Nothing to connect to; present so the two brokers are used alike."""

    async def close(self) -> None:
        """Nothing to release; queues live as long as the broker object."""

    async def declare_queue(
        self, name: str, *, durable: bool = True, arguments: dict[str, Any] | None = None
    ) -> QueueInfo:
        """Declare `name`; `ConfigurationError` if it exists with other arguments (RabbitMQ's 406)."""
        return self.declare_queue_nowait(name, durable=durable, arguments=arguments)

    def declare_queue_nowait(
        self, name: str, *, durable: bool = True, arguments: dict[str, Any] | None = None
    ) -> QueueInfo:
        """`declare_queue` for synchronous set-up code."""
        if not name:
            raise ConfigurationError("the in-memory broker needs a queue name")
        args = dict(arguments or {})
        existing = self._queues.get(name)
        if existing is not None:
            if existing.arguments != args or existing.durable != durable:
                raise ConfigurationError(
                    f"queue {name!r} exists with arguments {existing.arguments!r} "
                    f"(durable={existing.durable}), not {args!r} (durable={durable}): "
                    "delete it or declare it as it is"
                )
            return QueueInfo(name, False, len(existing.ready), existing.consumers)
        self._queues[name] = _Queue(name, durable, args)
        self._notify()
        return QueueInfo(name, True, 0, 0)

    async def inspect_queue(self, name: str) -> QueueInfo | None:
        """The queue's state, or None when it does not exist."""
        queue = self._queues.get(name)
        if queue is None:
            return None
        self._expire(time.monotonic())
        return QueueInfo(name, False, len(queue.ready), queue.consumers)

    async def delete_queue(self, name: str) -> None:
        """Delete `name` and its ready messages; consumers wait for it to come back."""
        self._queues.pop(name, None)
        for exchange in self._exchanges.values():
            for queues in exchange.bindings.values():
                queues.discard(name)
        self._notify()

    async def purge_queue(self, name: str) -> int:
        """Drop the ready messages of `name`; return how many."""
        queue = self._queues.get(name)
        if queue is None:
            return 0
        count = len(queue.ready)
        queue.ready.clear()
        return count

    def declare_exchange(self, name: str, type: str = "direct") -> None:
        """Declare a `direct` or `fanout` exchange."""
        if type not in ("direct", "fanout"):
            raise ConfigurationError(
                f"the in-memory broker supports direct and fanout exchanges, not {type!r}"
            )
        existing = self._exchanges.get(name)
        if existing is not None and existing.type != type:
            raise ConfigurationError(f"exchange {name!r} exists with type {existing.type!r}, not {type!r}")
        self._exchanges.setdefault(name, _Exchange(name, type))

    def bind_queue(self, queue: str, exchange: str, routing_key: str = "") -> None:
        """Route messages published to `exchange` with `routing_key` into `queue`."""
        if exchange not in self._exchanges:
            raise ConfigurationError(f"exchange {exchange!r} does not exist")
        if queue not in self._queues:
            raise ConfigurationError(f"queue {queue!r} does not exist")
        self._exchanges[exchange].bindings.setdefault(routing_key, set()).add(queue)

    # -- inspection, for tests and demos --------------------------------------------------------

    def queue_names(self) -> list[str]:
        """Names of the declared queues."""
        return sorted(self._queues)

    def message_count(self, name: str) -> int:
        """Ready (not delivered) messages in `name` after expiring what is due; 0 if absent."""
        self._expire(time.monotonic())
        queue = self._queues.get(name)
        return 0 if queue is None else len(queue.ready)

    def get_nowait(self, name: str) -> Message | None:
        """Take the head of `name` with auto-ack (AMQP's basic.get, no_ack=True), or None."""
        self._expire(time.monotonic())
        queue = self._queues.get(name)
        if queue is None or not queue.ready:
            return None
        entry = queue.ready.popleft()
        return entry.message.replace(queue=name, redelivered=entry.redelivered)

    def fail_next_publishes(self, count: int = 1) -> None:
        """Make the next `count` publishes fail as a broker nack would (fault injection for tests)."""
        self._publish_failures += count

    # -- routing --------------------------------------------------------------------------------

    def publish_nowait(
        self, message: Message, routing_key: str, exchange: str = "", *, mandatory: bool = False
    ) -> int:
        """Route `message`; return the number of queues it reached.

        Raises `PublishError` when a simulated nack is pending, or when `mandatory` and unroutable.
        """
        if self._publish_failures:
            self._publish_failures -= 1
            raise PublishError(f"broker nacked the publish to {exchange!r}/{routing_key!r} (simulated)")
        targets = self._route(exchange, routing_key)
        if not targets:
            if mandatory:
                raise PublishError(
                    f"message returned as unroutable: no queue bound to exchange {exchange!r} "
                    f"with routing key {routing_key!r}"
                )
            return 0
        now = time.monotonic()
        stored = message.for_publishing().replace(exchange=exchange, routing_key=routing_key)
        for name in targets:
            self._enqueue(self._queues[name], stored, now)
        self.published_count += 1
        self._notify()
        return len(targets)

    def _route(self, exchange: str, routing_key: str) -> list[str]:
        if exchange == "":
            return [routing_key] if routing_key in self._queues else []
        found = self._exchanges.get(exchange)
        if found is None:
            raise PublishError(f"exchange {exchange!r} does not exist (NOT_FOUND)")
        if found.type == "fanout":
            return sorted({q for queues in found.bindings.values() for q in queues})
        return sorted(found.bindings.get(routing_key, ()))

    def _enqueue(self, queue: _Queue, message: Message, now: float, delivery_count: int = 0) -> None:
        ttl = queue.ttl_ms
        if message.expiration is not None:
            try:
                per_message = int(message.expiration)
            except ValueError:
                per_message = None
            if per_message is not None:
                ttl = per_message if ttl is None else min(ttl, per_message)
        expires_at = None if ttl is None else now + ttl / 1000.0
        queue.ready.append(_Entry(message, expires_at, delivery_count))

    def _dead_letter(self, queue: _Queue, entry: _Entry, reason: str) -> None:
        if "x-dead-letter-exchange" not in queue.arguments:
            logger.debug("dropping %s message from %s: no dead-letter exchange", reason, queue.name)
            return
        exchange = str(queue.arguments["x-dead-letter-exchange"])
        message = entry.message
        routing_key = str(queue.arguments.get("x-dead-letter-routing-key", message.routing_key))
        headers = dict(message.headers)
        deaths = [dict(d) for d in headers.get("x-death", ()) if isinstance(d, dict)]
        for death in deaths:
            if death.get("queue") == queue.name and death.get("reason") == reason:
                death["count"] = int(death.get("count", 0)) + 1
                death["time"] = datetime.now(UTC)
                deaths.remove(death)
                deaths.insert(0, death)
                break
        else:
            deaths.insert(
                0,
                {
                    "count": 1,
                    "reason": reason,
                    "queue": queue.name,
                    "time": datetime.now(UTC),
                    "exchange": message.exchange,
                    "routing-keys": [message.routing_key],
                },
            )
        headers["x-death"] = deaths
        headers.setdefault("x-first-death-queue", queue.name)
        headers.setdefault("x-first-death-reason", reason)
        headers.setdefault("x-first-death-exchange", message.exchange)
        headers.pop("x-delivery-count", None)
        dead = message.replace(headers=headers, expiration=None)
        try:
            self.publish_nowait(dead, routing_key, exchange)
        except PublishError:
            logger.warning("dead-lettered message from %s was unroutable and dropped", queue.name)

    def _expire(self, now: float) -> None:
        for queue in list(self._queues.values()):
            ready = queue.ready
            while ready and ready[0].expires_at is not None and ready[0].expires_at <= now:
                self._dead_letter(queue, ready.popleft(), "expired")

    def _next_expiry(self) -> float | None:
        due = [q.ready[0].expires_at for q in self._queues.values() if q.ready and q.ready[0].expires_at]
        return min(due) if due else None

    def _return(self, queue_name: str, entry: _Entry) -> None:
        """Put a delivery back at the head of its queue, as RabbitMQ does on requeue or close."""
        queue = self._queues.get(queue_name)
        if queue is None:
            return
        entry.redelivered = True
        entry.delivery_count += 1
        limit = queue.delivery_limit
        if queue.quorum and limit is not None and entry.delivery_count > limit:
            self._dead_letter(queue, entry, "delivery_limit")
        else:
            queue.ready.appendleft(entry)
        self._notify()

    # -- waiting --------------------------------------------------------------------------------

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_for_change(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        event = self._changed
        self._expire(time.monotonic())
        if event.is_set():
            return
        due = self._next_expiry()
        timeout = math.inf if due is None else max(0.0, due - time.monotonic()) + 0.001
        with anyio.move_on_after(timeout):
            await event.wait()
        self._expire(time.monotonic())

    # -- makers ---------------------------------------------------------------------------------

    def provider(self, queue: str, *, prefetch: int = 100) -> MemoryMessageProvider:
        """A provider consuming `queue`."""
        return MemoryMessageProvider(self, queue, prefetch=prefetch)

    def publisher(self) -> MemoryPublisher:
        """A publisher into this broker."""
        return MemoryPublisher(self)

    def scan(self, queue: str) -> MemoryQueueScan:
        """One pass over `queue` that takes only what it acks (see `swarrow.scan.QueueScan`)."""
        from swarrow._memory_scan import MemoryQueueScan

        return MemoryQueueScan(self, queue)


class _RecentList(list[_T]):
    """A list that keeps only its last `limit` items (the older half is dropped when full)."""

    limit = 10_000

    def append(self, item: _T, /) -> None:
        if len(self) >= self.limit:
            del self[: self.limit // 2]
        super().append(item)


class MemoryMessageProvider:
    """Consumes one queue of a `MemoryBroker` like an AMQP consumer on its own channel."""

    def __init__(self, broker: MemoryBroker, queue: str, *, prefetch: int = 100) -> None:
        try:
            require_int("prefetch", prefetch)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self.broker = broker
        self._queue_name = queue
        self._prefetch = prefetch
        self._unacked: dict[int, _Entry] = {}
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
        return self._consuming and self._queue_name in self.broker._queues

    @property
    def unsettled_count(self) -> int:
        """Deliveries handed out and neither acked nor rejected yet."""
        return len(self._unacked)

    async def start(self) -> None:
        """Register as a consumer; `ConfigurationError` if the queue does not exist."""
        if self._closed:
            raise RuntimeError("this provider is closed")
        if self._consuming:
            return
        queue = self.broker._queues.get(self._queue_name)
        if queue is None:
            raise ConfigurationError(
                f"queue {self._queue_name!r} does not exist on {self.broker.url}: declare it first"
            )
        queue.consumers += 1
        self._consuming = True

    def receive_nowait(self) -> Message | None:
        """A delivery if one is ready and the prefetch window allows it."""
        if not self._consuming or len(self._unacked) >= self._prefetch:
            return None
        broker = self.broker
        queue = broker._queues.get(self._queue_name)
        if queue is None or not queue.ready:
            return None
        now = time.monotonic()
        head = queue.ready[0]
        if head.expires_at is not None and head.expires_at <= now:
            broker._expire(now)
            if not queue.ready:
                return None
        entry = queue.ready.popleft()
        tag = next(self._tags)
        self._unacked[tag] = entry
        message = entry.message
        headers = message.headers
        if queue.quorum and entry.delivery_count:
            headers = {**headers, "x-delivery-count": entry.delivery_count}
        return Message(
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

    async def receive(self) -> Message | None:
        """Wait for a delivery; None once stopped or closed."""
        while True:
            message = self.receive_nowait()
            if message is not None:
                return message
            if not self._consuming:
                return None
            await self.broker._wait_for_change()

    async def messages(self) -> AsyncIterator[Message]:
        """Deliveries until the provider stops."""
        await self.start()
        while (message := await self.receive()) is not None:
            yield message

    def _settle(self, message: Message) -> _Entry | None:
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
            self.broker._notify()

    async def reject(self, message: Message, *, requeue: bool = False) -> None:
        """Reject: back to the head of the queue (redelivered), or dead-lettered / dropped."""
        entry = self._settle(message)
        if entry is None:
            return
        self.rejected_count += 1
        self.rejected.append((message.delivery_tag or 0, requeue))
        if requeue:
            self.broker._return(self._queue_name, entry)
            return
        queue = self.broker._queues.get(self._queue_name)
        if queue is not None:
            self.broker._dead_letter(queue, entry, "rejected")
        self.broker._notify()

    async def stop_consuming(self) -> None:
        """Take no new deliveries; wake any waiting `receive()` so it returns None."""
        if self._consuming:
            self._consuming = False
            queue = self.broker._queues.get(self._queue_name)
            if queue is not None and queue.consumers > 0:
                queue.consumers -= 1
            self.broker._notify()

    async def close(self) -> None:
        """Stop and return every unsettled delivery to the queue, redelivered."""
        await self.stop_consuming()
        self._closed = True
        for tag in sorted(self._unacked, reverse=True):
            self.broker._return(self._queue_name, self._unacked.pop(tag))


class MemoryPublisher:
    """Publishes into a `MemoryBroker`; confirms are immediate, unroutable mandatory publishes raise."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    async def publish(
        self, message: Message, routing_key: str, exchange: str = "", *, mandatory: bool = True
    ) -> None:
        """Route `message` now; `PublishError` when unroutable (mandatory) or a failure is simulated."""
        self.broker.publish_nowait(message, routing_key, exchange, mandatory=mandatory)

    async def close(self) -> None:
        """Nothing to release."""
