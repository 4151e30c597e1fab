"""The in-process broker: queues, exchanges, routing, expiry and dead-lettering, pushed to consumers."""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

import anyio

from swarrow.broker import QueueInfo
from swarrow.errors import ConfigurationError, PublishError
from swarrow.memory._arguments import QueueSpec, check_redeclare, parse_queue
from swarrow.memory._deadletter import dead_lettered, is_cycle
from swarrow.message import Message
from swarrow.publishable import as_delivered, check_publishable

if TYPE_CHECKING:
    from swarrow.memory.provider import MemoryMessageProvider, MemoryPublisher
    from swarrow.memory.scan import MemoryQueueScan

__all__ = ["MemoryBroker"]

logger = logging.getLogger(__name__)

_PREDECLARED = {
    "amq.direct": "direct",
    "amq.fanout": "fanout",
    "amq.topic": "topic",
    "amq.headers": "headers",
    "amq.match": "headers",
}


@dataclass(slots=True)
class _Entry:
    message: Message
    seq: int
    expires_at: float | None = None
    delivery_count: int = 0
    redelivered: bool = False


class _Subscriber(Protocol):
    """What the broker needs of a consumer (the provider): room in its prefetch window, and a push."""

    def _has_room(self) -> bool: ...

    def _push(self, entry: _Entry, quorum: bool) -> None: ...


@dataclass(slots=True)
class _Queue:
    name: str
    spec: QueueSpec
    last_used: float
    ready: deque[_Entry] = field(default_factory=deque)
    subscribers: list[_Subscriber] = field(default_factory=list)
    turn: int = 0


@dataclass(slots=True)
class _Exchange:
    name: str
    type: str
    bindings: dict[str, set[str]] = field(default_factory=dict)
    alternate: str | None = None  # `alternate-exchange`: where what routes nowhere goes instead


def _topic_match(pattern: str, key: str) -> bool:
    """RabbitMQ's topic matching: words split on '.', `*` is exactly one word, `#` zero or more."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


class MemoryBroker:
    """In-process queues and exchanges with RabbitMQ 3.10's observable behaviour (see the README)."""

    _named: ClassVar[dict[str, MemoryBroker]] = {}

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._queues: dict[str, _Queue] = {}
        self._orphans: dict[str, list[_Subscriber]] = {}
        self._exchanges = {n: _Exchange(n, t) for n, t in _PREDECLARED.items()}
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
        now = time.monotonic()
        self._expire(now)
        args = dict(arguments or {})
        spec = parse_queue(name, durable, args)
        existing = self._queues.get(name)
        if existing is not None:
            check_redeclare(name, existing.spec, durable, args)
            existing.last_used = now
            return QueueInfo(name, False, len(existing.ready), len(existing.subscribers))
        queue = self._queues[name] = _Queue(name, spec, now)
        queue.subscribers = self._orphans.pop(name, [])
        self._dispatch(queue)
        self._notify()
        return QueueInfo(name, True, len(queue.ready), len(queue.subscribers))

    async def inspect_queue(self, name: str) -> QueueInfo | None:
        """The queue's state, or None when it does not exist (a passive declare: it counts as use)."""
        now = time.monotonic()
        self._expire(now)
        queue = self._queues.get(name)
        if queue is None:
            return None
        queue.last_used = now
        return QueueInfo(name, False, len(queue.ready), len(queue.subscribers))

    async def message_ttl(self, name: str) -> float | None:
        """The queue's `x-message-ttl` in seconds (None: no TTL, or no such queue)."""
        queue = self._queues.get(name)
        ttl = None if queue is None else queue.spec.ttl_ms
        return None if ttl is None else ttl / 1000

    async def delete_queue(self, name: str) -> None:
        """Delete `name` and its messages; its consumers wait for it to come back."""
        self._delete(name)

    def _delete(self, name: str) -> None:
        queue = self._queues.pop(name, None)
        if queue is None:
            return
        if queue.subscribers:
            self._orphans[name] = queue.subscribers
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

    async def declare_exchange(
        self,
        name: str,
        type: str = "direct",
        *,
        durable: bool = True,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Declare an exchange (see `declare_exchange_nowait`); `durable` means nothing in one process."""
        self.declare_exchange_nowait(name, type, arguments=arguments)

    def declare_exchange_nowait(
        self, name: str, type: str = "direct", *, arguments: dict[str, Any] | None = None
    ) -> None:
        """Declare a `direct`, `fanout` or `topic` exchange (`amq.*` exist already, as on RabbitMQ).

        The one argument modelled is `alternate-exchange`; any other is refused (`ConfigurationError`).
        """
        if type not in ("direct", "fanout", "topic"):
            raise ConfigurationError(
                f"the in-memory broker supports direct, fanout and topic exchanges, not {type!r}"
            )
        options = dict(arguments or {})
        alternate = options.pop("alternate-exchange", None)
        if options:
            raise ConfigurationError(
                f"exchange {name!r}: memory:// models only the alternate-exchange argument, "
                f"not {sorted(options)}"
            )
        if alternate is not None and not isinstance(alternate, str):
            raise ConfigurationError(
                f"exchange {name!r}: alternate-exchange must be a name, got {alternate!r}"
            )
        existing = self._exchanges.get(name)
        if existing is not None and (existing.type != type or existing.alternate != alternate):
            raise ConfigurationError(
                f"exchange {name!r} exists with type {existing.type!r} and alternate-exchange "
                f"{existing.alternate!r}, not {type!r} and {alternate!r} (PRECONDITION_FAILED)"
            )
        self._exchanges.setdefault(name, _Exchange(name, type, alternate=alternate))

    async def bind_queue(self, queue: str, exchange: str, routing_key: str = "") -> None:
        """Route `exchange`'s messages with `routing_key` into `queue` (see `bind_queue_nowait`)."""
        self.bind_queue_nowait(queue, exchange, routing_key)

    def bind_queue_nowait(self, queue: str, exchange: str, routing_key: str = "") -> None:
        """Route messages published to `exchange` with `routing_key` into `queue` (topic: `*` and `#`)."""
        found = self._exchanges.get(exchange)
        if found is None:
            raise ConfigurationError(f"exchange {exchange!r} does not exist")
        if found.type not in ("direct", "fanout", "topic"):
            raise ConfigurationError(
                f"exchange {exchange!r} is a {found.type} exchange: memory:// does not model its routing"
            )
        if queue not in self._queues:
            raise ConfigurationError(f"queue {queue!r} does not exist")
        found.bindings.setdefault(routing_key, set()).add(queue)

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
        targets = self._route(exchange, routing_key)
        if not targets:
            if mandatory:
                raise PublishError(
                    f"message returned as unroutable: no queue bound to exchange {exchange!r} "
                    f"with routing key {routing_key!r}"
                )
            return 0
        stored = as_delivered(message.for_publishing()).replace(exchange=exchange, routing_key=routing_key)
        refused = [name for name in targets if not self._enqueue(self._queues[name], stored, now)]
        self.published_count += 1
        self._notify()
        if refused:
            raise PublishError(
                f"broker nacked the publish to {exchange!r}/{routing_key!r}: queue {refused[0]!r} is full "
                "(x-overflow reject-publish)"
            )
        return len(targets)

    def _route(self, exchange: str, routing_key: str) -> list[str]:
        if exchange == "":
            return [routing_key] if routing_key in self._queues else []
        found = self._exchanges.get(exchange)
        if found is None:
            raise PublishError(f"exchange {exchange!r} does not exist (NOT_FOUND)")
        seen = {exchange}
        while True:
            if found.type == "fanout":
                targets = {q for queues in found.bindings.values() for q in queues}
            elif found.type == "topic":
                targets = {
                    q
                    for key, queues in found.bindings.items()
                    if _topic_match(key, routing_key)
                    for q in queues
                }
            else:
                targets = set(found.bindings.get(routing_key, ()))
            # RabbitMQ hands what routes nowhere to the alternate exchange, once per exchange.
            alternate = found.alternate
            if targets or alternate is None or alternate in seen or alternate not in self._exchanges:
                return sorted(targets)
            seen.add(alternate)
            found = self._exchanges[alternate]

    def _enqueue(self, queue: _Queue, message: Message, now: float) -> bool:
        """Add `message` at the tail; False when the queue's overflow policy refuses it."""
        spec = queue.spec
        if (
            spec.max_length is not None
            and spec.overflow != "drop-head"
            and len(queue.ready) >= spec.max_length
        ):
            if spec.overflow == "reject-publish-dlx":
                self._dead_letter(queue, message, "maxlen")
            return False
        ttl = spec.ttl_ms
        if message.expiration is not None:
            per_message = int(message.expiration)
            ttl = per_message if ttl is None else min(ttl, per_message)
        expires_at = None if ttl is None else now + ttl / 1000.0
        entry = _Entry(message, next(self._seq), expires_at)
        queue.ready.append(entry)
        self._dispatch(queue, now)
        if spec.max_length is not None:
            while len(queue.ready) > spec.max_length:
                self._dead_letter(queue, queue.ready.popleft().message, "maxlen")
        if ttl == 0 and queue.ready and queue.ready[-1] is entry:
            # TTL 0: delivered if a consumer could take it just now, otherwise expired at once.
            self._dead_letter(queue, queue.ready.pop().message, "expired")
        return True

    def _dead_letter(self, queue: _Queue, message: Message, reason: str) -> None:
        exchange = queue.spec.dead_letter_exchange
        if exchange is None:
            logger.debug("dropping %s message from %s: no dead-letter exchange", reason, queue.name)
            return
        dead = dead_lettered(message, queue.name, reason)
        routing_key = queue.spec.dead_letter_routing_key or message.routing_key
        try:
            targets = self._route(exchange, routing_key)
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
            self._enqueue(self._queues[name], stored, now)

    # -- time: message TTLs and x-expires -------------------------------------------------------

    def _expire(self, now: float) -> None:
        for queue in list(self._queues.values()):
            ready = queue.ready
            while ready and ready[0].expires_at is not None and ready[0].expires_at < now:
                self._dead_letter(queue, ready.popleft().message, "expired")
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

    # -- the provider's side: subscribe, push, settle -------------------------------------------

    def _has_queue(self, name: str) -> bool:
        return name in self._queues

    def _subscribe(self, name: str, subscriber: _Subscriber) -> None:
        queue = self._queues.get(name)
        if queue is None:
            raise ConfigurationError(f"queue {name!r} does not exist on {self.url}: declare it first")
        queue.subscribers.append(subscriber)
        self._dispatch(queue)
        self._notify()

    def _unsubscribe(self, name: str, subscriber: _Subscriber) -> None:
        queue = self._queues.get(name)
        subscribers = queue.subscribers if queue is not None else self._orphans.get(name, [])
        if subscriber in subscribers:
            subscribers.remove(subscriber)
        if queue is not None and not queue.subscribers:
            queue.last_used = time.monotonic()
        self._notify()

    def _dispatch(self, queue: _Queue, now: float | None = None) -> None:
        """Push ready messages to subscribers with room, round robin, as RabbitMQ fills prefetch windows."""
        subscribers = queue.subscribers
        ready = queue.ready
        if not subscribers or not ready:
            return
        now = time.monotonic() if now is None else now
        count = len(subscribers)
        while ready:
            head = ready[0]
            if head.expires_at is not None and head.expires_at < now:
                self._dead_letter(queue, ready.popleft().message, "expired")
                continue
            for offset in range(count):
                subscriber = subscribers[(queue.turn + offset) % count]
                if subscriber._has_room():
                    break
            else:
                return
            queue.turn = (queue.turn + offset + 1) % count
            subscriber._push(ready.popleft(), queue.spec.quorum)
            self._notify()

    def _settled(self, name: str) -> None:
        """A delivery of `name` was acked (or dropped): its consumer has room again."""
        queue = self._queues.get(name)
        if queue is not None:
            self._dispatch(queue)
        self._notify()

    def _requeue(self, name: str, entries: list[_Entry], *, closing: bool = False) -> None:
        """Return deliveries: classic queues put them back at their old place; quorum queues at the
        back when rejected, at the head (in delivery order) when their consumer closes."""
        queue = self._queues.get(name)
        if queue is None:
            return
        head: list[_Entry] = []
        for entry in entries:
            entry.redelivered = True
            entry.delivery_count += 1
            limit = queue.spec.delivery_limit
            if queue.spec.quorum:
                if limit is not None and entry.delivery_count > limit:
                    self._dead_letter(queue, entry.message, "delivery_limit")
                elif closing:
                    head.append(entry)
                else:
                    queue.ready.append(entry)
            else:
                queue.ready.insert(bisect.bisect_left(queue.ready, entry.seq, key=lambda e: e.seq), entry)
        queue.ready.extendleft(reversed(head))
        self._dispatch(queue)
        self._notify()

    def _reject(self, name: str, entry: _Entry) -> None:
        """A delivery rejected without requeue: dead-lettered (reason `rejected`) or dropped."""
        queue = self._queues.get(name)
        if queue is not None:
            self._dead_letter(queue, entry.message, "rejected")
            self._dispatch(queue)
        self._notify()

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

        return MemoryMessageProvider(self, queue, prefetch=prefetch)

    def publisher(self) -> MemoryPublisher:
        """A publisher into this broker."""
        from swarrow.memory.provider import MemoryPublisher

        return MemoryPublisher(self)

    def scan(self, queue: str) -> MemoryQueueScan:
        """One pass over `queue` that takes only what it acks (see `swarrow.scan.QueueScan`)."""
        from swarrow.memory.scan import MemoryQueueScan

        return MemoryQueueScan(self, queue)
