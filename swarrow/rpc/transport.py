"""What the RPC client needs from a broker: one reply address, confirmed mandatory publishes, replies in."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

from swarrow.broker import Broker
from swarrow.message import Message

__all__ = ["Deliver", "Lost", "MemoryReplyTransport", "ReplyTransport"]

logger = logging.getLogger(__name__)

Deliver = Callable[[Message], None]
Lost = Callable[[BaseException], None]


class ReplyTransport(Protocol):
    """One reply address for every call of a client, and the channel its requests are published on."""

    @property
    def reply_to(self) -> str:
        """What requests carry in `reply_to`."""
        ...

    async def start(self, task_group: TaskGroup, deliver: Deliver, lost: Lost) -> None:
        """Start receiving replies: `deliver` each one; `lost` when replies can no longer arrive."""
        ...

    async def publish(self, message: Message, routing_key: str, exchange: str) -> None:
        """Publish a request, mandatory and confirmed: `PublishError` when no queue takes it."""
        ...

    async def close(self) -> None:
        """Stop receiving replies and release what `start` took."""
        ...


class MemoryReplyTransport:
    """Replies through a private queue of the in-memory broker (which has no direct reply-to)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._queue = f"swarrow.reply.{uuid.uuid4().hex}"
        self._publisher = broker.publisher()
        self._provider = broker.provider(self._queue, prefetch=1000)

    @property
    def reply_to(self) -> str:
        """The private reply queue's name."""
        return self._queue

    async def start(self, task_group: TaskGroup, deliver: Deliver, lost: Lost) -> None:
        """Declare the private queue and consume it in `task_group`."""
        await self.broker.declare_queue(self._queue, durable=False)
        await self._provider.start()
        task_group.start_soon(self._pump, deliver)

    async def _pump(self, deliver: Deliver) -> None:
        while (message := await self._provider.receive()) is not None:
            await self._provider.ack(message)
            deliver(message)

    async def publish(self, message: Message, routing_key: str, exchange: str) -> None:
        """Route the request now (the memory broker confirms at once)."""
        await self._publisher.publish(message, routing_key, exchange, mandatory=True)

    async def close(self) -> None:
        """Stop consuming and delete the private queue: a late reply is then unroutable, as on RabbitMQ."""
        with anyio.CancelScope(shield=True):
            await self._provider.close()
            await self.broker.delete_queue(self._queue)
            await self._publisher.close()
