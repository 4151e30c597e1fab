"""Publishing with confirmation: a publish returns only once the broker has the message."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from swarrow.message import Message

__all__ = ["Publisher"]


@runtime_checkable
class Publisher(Protocol):
    """Publishes a message and returns after the broker confirmed it.

    Raises `PublishError` when the broker nacks it, returns it as unroutable (`mandatory=True`, the
    default: a copy sent to a missing retry queue must fail loudly, not vanish), or the channel dies.
    """

    async def publish(
        self, message: Message, routing_key: str, exchange: str = "", *, mandatory: bool = True
    ) -> None:
        """Publish `message` and wait for the broker's confirm."""
        ...

    async def close(self) -> None:
        """Release the publishing channel."""
        ...
