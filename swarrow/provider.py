"""What a consumer needs from a broker: deliveries in, settlements out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from swarrow.message import Message

__all__ = ["MessageProvider"]


@runtime_checkable
class MessageProvider(Protocol):
    """A source of deliveries from one queue, and the one place they are settled.

    `receive_nowait` / `receive` are the consumer's hot path: the consumer's workers take buffered
    deliveries without awaiting and only wait when the buffer is empty. `messages()` is the simple
    form for scripts and tests. A delivery that is neither acked nor rejected goes back to the queue
    (redelivered) when the provider closes, exactly like an AMQP channel.
    """

    @property
    def queue_name(self) -> str:
        """The queue this provider consumes from."""
        ...

    @property
    def prefetch(self) -> int:
        """How many unsettled deliveries the broker may hand over at once."""
        ...

    @property
    def is_consuming(self) -> bool:
        """True while connected and registered as a consumer (what `/readyz` reports)."""
        ...

    async def start(self) -> None:
        """Connect if needed and start receiving deliveries; idempotent."""
        ...

    def receive_nowait(self) -> Message | None:
        """Return a buffered delivery at once, or None when none is buffered."""
        ...

    async def receive(self) -> Message | None:
        """Wait for the next delivery; None once the provider is stopped or closed."""
        ...

    def messages(self) -> AsyncIterator[Message]:
        """Iterate over deliveries until the provider stops (starts it first)."""
        ...

    async def ack(self, message: Message) -> None:
        """Acknowledge a delivery; one whose channel died is logged and dropped, never raised."""
        ...

    async def reject(self, message: Message, *, requeue: bool = False) -> None:
        """Reject a delivery, back to the queue or (requeue=False) to the dead-letter exchange if any."""
        ...

    async def stop_consuming(self) -> None:
        """Stop taking new deliveries; those not settled stay pending until settled or closed."""
        ...

    async def close(self) -> None:
        """Flush settlements, return unsettled deliveries to the queue and release the connection."""
        ...
