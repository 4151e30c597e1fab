"""One object per broker connection: it makes providers and publishers and declares queues."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from swarrow.errors import ConfigurationError
from swarrow.provider import MessageProvider
from swarrow.publisher import Publisher

__all__ = ["DEFAULT_URL", "Broker", "QueueInfo", "mask_url", "open_broker"]

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """What a queue declaration found: whether it was created now, and its ready messages."""

    name: str
    created: bool
    message_count: int
    consumer_count: int = 0


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

    async def declare_queue(
        self, name: str, *, durable: bool = True, arguments: dict[str, Any] | None = None
    ) -> QueueInfo:
        """Declare `name` idempotently; `ConfigurationError` if it exists with other arguments."""
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


def mask_url(url: str) -> str:
    """Return `url` with its password replaced by `***`, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def open_broker(url: str, **options: Any) -> Broker:
    """Return a broker for `url`: `amqp://` / `amqps://` for RabbitMQ, `memory://[name]` in process.

    Options are passed to the broker's constructor (for AMQP: `reconnect_interval`, `ssl_context`,
    `heartbeat` ... see `AmqpBroker`). Nothing connects until `connect()` or first use.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from swarrow.memory import MemoryBroker

        if options:
            raise ConfigurationError(f"memory:// takes no connection options, got {sorted(options)}")
        return MemoryBroker.named(urlsplit(url).netloc or "default")
    if scheme in ("amqp", "amqps"):
        from swarrow.amqp import AmqpBroker

        return AmqpBroker(url, **options)
    raise ConfigurationError(
        f"unsupported broker URL {mask_url(url)!r}: expected amqp://, amqps:// or memory://"
    )
