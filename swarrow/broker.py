"""The broker contract: one object per connection; it makes providers and publishers, declares queues."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeAlias, runtime_checkable

from swarrow.provider import MessageProvider
from swarrow.publisher import Publisher
from swarrow.scan import QueueScan

__all__ = ["Broker", "QueueInfo"]  # QueueStats, QueueStatsSource: typing aids for the metrics layer, not API


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """What a queue declaration found: whether it was created now, and its ready messages."""

    name: str
    created: bool
    message_count: int
    consumer_count: int = 0


#: Reads a queue's backlog (a passive declare), for the metrics layer's queue gauges.
QueueStatsSource: TypeAlias = Callable[[], Awaitable["QueueInfo | None"]]
#: One source, or one per queue for a consumer of several queues.
QueueStats: TypeAlias = QueueStatsSource | Mapping[str, QueueStatsSource]


@runtime_checkable
class Broker(Protocol):
    """A connection to a broker (RabbitMQ or the in-memory one)."""

    @property
    def url(self) -> str:
        """The broker URL with any password masked: safe to log."""
        ...

    async def connect(self) -> None:
        """Connect now; raises `BrokerUnavailableError` when the broker cannot be reached."""
        ...

    def provider(self, queue: str, *, prefetch: int = 100) -> MessageProvider:
        """A provider consuming `queue` with at most `prefetch` unsettled deliveries."""
        ...

    def publisher(self) -> Publisher:
        """A publisher with confirms on its own channel."""
        ...

    def scan(self, queue: str) -> QueueScan:
        """One pass over `queue` that takes only what it acks (the dead-letter tools read with it)."""
        ...

    async def declare_queue(
        self, name: str, *, durable: bool = True, arguments: dict[str, Any] | None = None
    ) -> QueueInfo:
        """Declare `name` idempotently; `ConfigurationError` if it exists with other arguments."""
        ...

    async def declare_exchange(
        self,
        name: str,
        type: str = "direct",
        *,
        durable: bool = True,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Declare an exchange idempotently; `ConfigurationError` if it exists with other arguments."""
        ...

    async def bind_queue(self, queue: str, exchange: str, routing_key: str = "") -> None:
        """Bind `queue` to `exchange` with `routing_key` (idempotent)."""
        ...

    async def inspect_queue(self, name: str) -> QueueInfo | None:
        """The queue's state, or None when it does not exist (declares nothing)."""
        ...

    async def delete_queue(self, name: str) -> None:
        """Delete `name` and its messages; no error if it does not exist."""
        ...

    async def purge_queue(self, name: str) -> int:
        """Drop the ready messages of `name`; return how many."""
        ...

    async def close(self) -> None:
        """Close the connection and everything made from it."""
        ...

    async def __aenter__(self) -> Self:
        """`async with open_broker(url) as broker:` connects, and closes whatever happens."""
        ...

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the connection (see `close`)."""
        ...
