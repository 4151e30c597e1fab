"""Reading a queue without taking it: one pass whose unacked messages all return, in order.

The broker-neutral contract under the dead-letter tools. A scan consumes with manual acks and never
acks what it only looked at, so when it closes (or its process is killed, or the connection drops)
the broker puts every unacked message back where it was. Each broker package implements it:
`MemoryBroker.scan` and, for RabbitMQ, `AmqpBroker.scan`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Protocol, runtime_checkable

from swarrow.message import Message

__all__ = ["QueueScan", "Scannable", "open_scan"]


@runtime_checkable
class QueueScan(Protocol):
    """One pass over a queue: messages held unacked, acked only on request, the rest returned on close.

    `async with broker.scan(queue) as scan:` opens it (`ConfigurationError` if the queue does not
    exist, `BrokerUnavailableError` if the broker cannot be reached); `scan.count` is how many
    messages the queue held then, and `messages()` yields at most that many, head first. A lost
    connection raises `BrokerUnavailableError` from whichever call notices it; nothing is lost, since
    only acked messages left the queue.
    """

    @property
    def queue_name(self) -> str:
        """The queue being read."""
        ...

    @property
    def count(self) -> int:
        """Messages ready in the queue when the scan opened: what one pass covers."""
        ...

    async def __aenter__(self) -> QueueScan:
        """Open the pass (connect, count, start consuming with manual acks)."""
        ...

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close: every message not acked returns to the queue, in its order."""
        ...

    def messages(self) -> AsyncIterator[Message]:
        """The messages that were in the queue when the scan opened, each once, from the head."""
        ...

    async def ack(self, message: Message) -> None:
        """Take `message` out of the queue for good."""
        ...

    async def ack_all(self, messages: Sequence[Message]) -> None:
        """Take every message of `messages` out of the queue for good (in as few frames as it can)."""
        ...

    async def publish(self, batch: Sequence[tuple[Message, str]]) -> list[Exception | None]:
        """Publish each message to its queue (default exchange) and wait for every confirm.

        Returns one entry per message: None when confirmed, else the `PublishError` (nack, or returned
        as unroutable). Raises `BrokerUnavailableError` if the connection is lost meanwhile.
        """
        ...

    async def queue_exists(self, name: str) -> bool:
        """True when queue `name` exists (a passive check)."""
        ...


@runtime_checkable
class Scannable(Protocol):
    """A broker that can open a `QueueScan`."""

    def scan(self, queue: str) -> QueueScan:
        """A scan of `queue`, to be entered with `async with`."""
        ...


def open_scan(broker: object, queue: str) -> QueueScan:
    """`broker.scan(queue)`; `TypeError` naming the broker when it cannot scan."""
    if isinstance(broker, Scannable):
        return broker.scan(queue)
    raise TypeError(f"{type(broker).__name__} cannot read a queue without consuming it (no scan())")
