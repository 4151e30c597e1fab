"""The in-process broker: queues, exchanges, routing, expiry and dead-lettering, pushed to consumers."""

from __future__ import annotations

import itertools
import logging
import math
import time
from typing import TYPE_CHECKING, Any, ClassVar, Self

import anyio

from swarrow._names import (
    check_arguments,
    check_binding,
    check_declared_name,
    check_name,
    check_routing_key,
)
from swarrow.broker import QueueInfo
from swarrow.errors import ConfigurationError, PublishError
from swarrow.memory._arguments import check_redeclare, parse_queue
from swarrow.memory._consumers import ConsumerSide
from swarrow.memory._deadletter import dead_lettered, is_cycle
from swarrow.memory._exchanges import Exchanges
from swarrow.memory._queue import Entry, Queue, Subscriber
from swarrow.message import Message
from swarrow.publishable import as_delivered, check_publishable, route_headers

if TYPE_CHECKING:
    from swarrow.memory.provider import MemoryMessageProvider, MemoryPublisher
    from swarrow.memory.scan import MemoryQueueScan

__all__ = ["MemoryBroker"]

logger = logging.getLogger(__name__)

MAX_MESSAGE_SIZE = 134_217_728  # RabbitMQ 3.10's default max_message_size (128 MiB)


class MemoryBroker(ConsumerSide):
    """In-process queues and exchanges with RabbitMQ 3.10's observable behaviour (see the README)."""

    _named: ClassVar[dict[str, MemoryBroker]] = {}

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._queues: dict[str, Queue] = {}
        self._orphans: dict[str, list[Subscriber]] = {}
        self._exchanges = Exchanges()
        self._changed: anyio.Event | None = None
        self._publish_failures = 0
        self._seq = itertools.count()
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

    async def connect(self) -> None:
        """Nothing to connect to; present so the two brokers are used alike."""

    async def __aenter__(self) -> Self:
        """`async with open_broker(url) as broker:` connects, and closes whatever happens."""
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close (shielded, so a cancelled block still closes the connection)."""
        with anyio.CancelScope(shield=True):
            await self.close()

    async def close(self) -> None:
        """Nothing to release; queues live as long as the broker object."""

    # -- topology -------------------------------------------------------------------------------

    async def declare_queue(
        self, name: str, *, durable: bool = True, arguments: dict[str, Any] | None = None
    ) -> QueueInfo:
        """Declare `name`; `ConfigurationError` naming the argument RabbitMQ would refuse (its 406)."""
        return self.declare_queue_nowait(name, durable=durable, arguments=arguments)

    def declare_queue_nowait(
        self, name: str, *, durable: bool = True, arguments: dict[str, Any] | None = None
    ) -> QueueInfo:
        """`declare_queue` for synchronous set-up code."""
        if not name:
            raise ConfigurationError("the in-memory broker needs a queue name")
        check_declared_name("queue", name)
        check_arguments("queue", name, arguments)
        now = time.monotonic()
        self._expire(now)
        args = dict(arguments or {})
        spec = parse_queue(name, durable, args)
        existing = self._queues.get(name)
        if existing is not None:
            check_redeclare(name, existing.spec, durable, args)
            existing.last_used = now
            return QueueInfo(name, False, len(existing.ready), len(existing.subscribers))
        queue = self._queues[name] = Queue(name, spec, now)
        queue.subscribers = self._orphans.pop(name, [])
        self._dispatch(queue)
        self._notify()
        return QueueInfo(name, True, len(queue.ready), len(queue.subscribers))

    async def inspect_queue(self, name: str) -> QueueInfo | None:
        """The queue's state, or None when it does not exist (a passive declare: it counts as use)."""
        check_name("queue", name)
        now = time.monotonic()
        self._expire(now)
        queue = self._queues.get(name)
        if queue is None:
            return None
        queue.last_used = now
        return QueueInfo(name, False, len(queue.ready), len(queue.subscribers))

    async def has_dead_letter_exchange(self, name: str) -> bool | None:
        """Whether the queue names a dead-letter exchange (None: no such queue)."""
        queue = self._queues.get(name)
        return None if queue is None else queue.spec.dead_letter_exchange is not None

    async def message_ttl(self, name: str) -> float | None:
        """The queue's `x-message-ttl` in seconds (None: no TTL, or no such queue)."""
        queue = self._queues.get(name)
        ttl = None if queue is None else queue.spec.ttl_ms
        return None if ttl is None else ttl / 1000

    async def delete_queue(self, name: str) -> None:
        """Delete `name` and its messages; its consumers wait for it to come back."""
        check_name("queue", name)
        self._delete(name)

    def _delete(self, name: str) -> None:
        queue = self._queues.pop(name, None)
        if queue is None:
            return
        if queue.subscribers:
            self._orphans[name] = queue.subscribers
        self._exchanges.unbind(name)
        self._notify()

    async def purge_queue(self, name: str) -> int:
        """Drop the ready messages of `name`; return how many."""
        check_name("queue", name)
        queue = self._queues.get(name)
        if queue is None:
            return 0
        count = len(queue.ready)
        queue.ready.clear()
        return count

    async def declare_exchange(
        self,
        name: str,
        type: str = "direct",
        *,
        durable: bool = True,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Declare an exchange (see `declare_exchange_nowait`)."""
        self.declare_exchange_nowait(name, type, durable=durable, arguments=arguments)

    def declare_exchange_nowait(
        self,
        name: str,
        type: str = "direct",
        *,
        durable: bool = True,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Declare a `direct`, `fanout` or `topic` exchange (`amq.*` exist already, as on RabbitMQ).

        The one argument modelled is `alternate-exchange`; any other is refused (`ConfigurationError`),
        and so is re-declaring with another type, alternate exchange or `durable` (RabbitMQ's 406),
        or a new name starting with `amq.` (RabbitMQ's 403).
        """
        check_name("exchange", name)
        check_arguments("exchange", name, arguments)
        self._exchanges.declare(name, type, durable, arguments)

    async def bind_queue(self, queue: str, exchange: str, routing_key: str = "") -> None:
        """Route `exchange`'s messages with `routing_key` into `queue` (see `bind_queue_nowait`)."""
        self.bind_queue_nowait(queue, exchange, routing_key)

    def bind_queue_nowait(self, queue: str, exchange: str, routing_key: str = "") -> None:
        """Route messages published to `exchange` with `routing_key` into `queue` (topic: `*` and `#`)."""
        check_binding(queue, exchange)
        if queue not in self._queues:
            raise ConfigurationError(f"queue {queue!r} does not exist")
        self._exchanges.bind(queue, exchange, routing_key)

    # -- inspection, for tests and demos --------------------------------------------------------

    def queue_names(self) -> list[str]:
        """Names of the declared queues."""
        self._expire(time.monotonic())
        return sorted(self._queues)

    def message_count(self, name: str) -> int:
        """Ready messages in `name` (pushed to a consumer is not ready), after expiry; 0 if absent."""
        self._expire(time.monotonic())
        queue = self._queues.get(name)
        return 0 if queue is None else len(queue.ready)

    def get_nowait(self, name: str) -> Message | None:
        """Take the head of `name` with auto-ack (AMQP's basic.get, no_ack=True), or None."""
        now = time.monotonic()
        self._expire(now)
        queue = self._queues.get(name)
        if queue is None:
            return None
        queue.last_used = now
        if not queue.ready:
            return None
        entry = queue.ready.popleft()
        return entry.message.replace(queue=name, redelivered=entry.redelivered)

    def fail_next_publishes(self, count: int = 1) -> None:
        """Make the next `count` publishes fail as a broker nack would (fault injection for tests)."""
        self._publish_failures += count

    # -- publishing and routing -----------------------------------------------------------------

    def publish_nowait(
        self, message: Message, routing_key: str, exchange: str = "", *, mandatory: bool = False
    ) -> int:
        """Route `message`; return the number of queues it reached.

        Raises `InvalidMessageError` for what RabbitMQ would refuse, `PublishError` when a
        simulated nack is pending, when `mandatory` and unroutable, or when a full queue with
        `x-overflow: reject-publish` refuses it.
        """
        check_publishable(message)
        check_routing_key(routing_key, exchange)
        size = len(message.body)
        if size > MAX_MESSAGE_SIZE:
            raise PublishError(
                f"publish to {exchange!r}/{routing_key!r} refused: message size {size} is larger than"
                f" RabbitMQ's default max size {MAX_MESSAGE_SIZE} (max_message_size; it closes the channel)"
            )
        if message.user_id is not None:
            raise ConfigurationError(
                f"user_id {message.user_id!r}: memory:// has no users, so it cannot check it "
                "(RabbitMQ refuses any user_id but the connection's user)"
            )
        if self._publish_failures:
            self._publish_failures -= 1
            raise PublishError(f"broker nacked the publish to {exchange!r}/{routing_key!r} (simulated)")
        now = time.monotonic()
        self._expire(now)
        headers = message.headers
        keys = [routing_key]
        if headers and ("CC" in headers or "BCC" in headers):  # sender-selected distribution
            keys += route_headers(headers, "CC") + route_headers(headers, "BCC")
        targets = self._route(exchange, keys)
        if not targets:
            if mandatory:
                raise PublishError(
                    f"message returned as unroutable: no queue bound to exchange {exchange!r} "
                    f"with routing key {routing_key!r}"
                )
            return 0
        stored = as_delivered(message.for_publishing()).replace(exchange=exchange, routing_key=routing_key)
        bcc = tuple(route_headers(headers, "BCC")) if headers and "BCC" in headers else ()
        refused = [name for name in targets if not self._enqueue(self._queues[name], stored, now, bcc)]
        self.published_count += 1
        self._notify()
        if refused:
            raise PublishError(
                f"broker nacked the publish to {exchange!r}/{routing_key!r}: queue {refused[0]!r} is full "
                "(x-overflow reject-publish)"
            )
        return len(targets)

    def _route(self, exchange: str, keys: list[str]) -> list[str]:
        if exchange == "":
            return sorted({key for key in keys if key in self._queues})
        return self._exchanges.route(exchange, keys)

    def _enqueue(
        self, queue: Queue, message: Message, now: float, bcc: tuple[str, ...] = (), *, dead: bool = False
    ) -> bool:
        """Add `message` at the tail; False when the queue's overflow policy refuses it.

        `dead`: a dead-lettered message, which a quorum queue takes even when full (it has no publisher
        to refuse).
        """
        spec = queue.spec
        if (
            spec.max_length is not None
            and not (dead and spec.quorum)
            and spec.overflow != "drop-head"
            # A quorum queue refuses only once it is over the limit (it takes one message past it).
            and len(queue.ready) >= spec.max_length + spec.quorum
        ):
            if spec.overflow == "reject-publish-dlx":
                self._dead_letter(queue, message, "maxlen", bcc)
            return False
        ttl = spec.ttl_ms
        if message.expiration is not None:
            per_message = int(message.expiration)
            ttl = per_message if ttl is None else min(ttl, per_message)
        expires_at = None if ttl is None else now + ttl / 1000.0
        entry = Entry(message, next(self._seq), expires_at, bcc=bcc)
        queue.ready.append(entry)
        self._dispatch(queue, now)
        self._trim(queue)
        if ttl == 0 and queue.ready and queue.ready[-1] is entry:
            # TTL 0: delivered if a consumer could take it just now, otherwise expired at once.
            self._dead_letter(queue, queue.ready.pop().message, "expired", bcc)
        return True

    def _trim(self, queue: Queue) -> None:
        """`x-overflow: drop-head`: dead-letter (`maxlen`) from the head down to `x-max-length`."""
        spec = queue.spec
        if spec.max_length is not None and spec.overflow == "drop-head":
            while len(queue.ready) > spec.max_length:
                dropped = queue.ready.popleft()
                self._dead_letter(queue, dropped.message, "maxlen", dropped.bcc)

    def _dead_letter(self, queue: Queue, message: Message, reason: str, bcc: tuple[str, ...] = ()) -> None:
        """Dead-letter `message` (reason `reason`) from `queue`, or drop it; `bcc`: its BCC keys."""
        exchange = queue.spec.dead_letter_exchange
        if exchange is None:
            logger.debug("dropping %s message from %s: no dead-letter exchange", reason, queue.name)
            return
        dead_key = queue.spec.dead_letter_routing_key
        dead = dead_lettered(message, queue.name, reason, dead_key)
        routing_key = message.routing_key if dead_key is None else dead_key
        if dead_key is not None:
            keys, bcc = [dead_key], ()
        else:  # RabbitMQ routes it again by every key it was published with, BCC's included
            keys = [routing_key, *route_headers(message.headers, "CC"), *bcc]
        try:
            targets = self._route(exchange, keys)
        except PublishError:
            logger.warning(
                "dead-letter exchange %r of %s does not exist: message dropped", exchange, queue.name
            )
            return
        if reason != "rejected":
            deaths = list(dead.headers["x-death"])
            targets = [t for t in targets if not is_cycle(t, deaths)]
        stored = dead.replace(exchange=exchange, routing_key=routing_key)
        now = time.monotonic()
        for name in targets:
            self._enqueue(self._queues[name], stored, now, bcc, dead=True)

    # -- time: message TTLs and x-expires -------------------------------------------------------

    def _expire(self, now: float) -> None:
        for queue in list(self._queues.values()):
            ready = queue.ready
            while ready and ready[0].expires_at is not None and ready[0].expires_at < now:
                expired = ready.popleft()
                self._dead_letter(queue, expired.message, "expired", expired.bcc)
            expires = queue.spec.expires_ms
            if expires is not None and not queue.subscribers and now - queue.last_used >= expires / 1000.0:
                self._delete(queue.name)

    def _next_deadline(self) -> float | None:
        due = [q.ready[0].expires_at for q in self._queues.values() if q.ready and q.ready[0].expires_at]
        due += [
            q.last_used + q.spec.expires_ms / 1000.0
            for q in self._queues.values()
            if q.spec.expires_ms is not None and not q.subscribers
        ]
        return min(due) if due else None

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait(self) -> None:
        """Sleep until something changes or the next message or queue expires."""
        if self._changed is None:
            self._changed = anyio.Event()
        event = self._changed
        self._expire(time.monotonic())
        if event.is_set():
            return
        due = self._next_deadline()
        timeout = math.inf if due is None else max(0.0, due - time.monotonic()) + 0.001
        with anyio.move_on_after(timeout):
            await event.wait()
        self._expire(time.monotonic())

    # -- makers ---------------------------------------------------------------------------------

    def provider(self, queue: str, *, prefetch: int = 100) -> MemoryMessageProvider:
        """A provider consuming `queue`."""
        from swarrow.memory.provider import MemoryMessageProvider

        check_name("queue", queue)
        return MemoryMessageProvider(self, queue, prefetch=prefetch)

    def publisher(self) -> MemoryPublisher:
        """A publisher into this broker."""
        from swarrow.memory.provider import MemoryPublisher

        return MemoryPublisher(self)

    def scan(self, queue: str) -> MemoryQueueScan:
        """One pass over `queue` that takes only what it acks (see `swarrow.scan.QueueScan`)."""
        from swarrow.memory.scan import MemoryQueueScan

        return MemoryQueueScan(self, queue)
