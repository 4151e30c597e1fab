"""`MemoryBroker.scan`: a `QueueScan` over an in-process queue, with RabbitMQ's return-on-close order."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import anyio.lowlevel

from swarrow.errors import ConfigurationError, PublishError
from swarrow.message import Message

if TYPE_CHECKING:
    from swarrow.memory import MemoryBroker, MemoryMessageProvider

__all__ = ["MemoryQueueScan"]


class MemoryQueueScan:
    """One pass over a `MemoryBroker` queue: an unlimited-prefetch consumer that acks only on request."""

    def __init__(self, broker: MemoryBroker, queue: str) -> None:
        self.broker = broker
        self._queue = queue
        self._count = 0
        self._provider: MemoryMessageProvider | None = None

    @property
    def queue_name(self) -> str:
        """The queue being read."""
        return self._queue

    @property
    def count(self) -> int:
        """Messages ready when the scan opened."""
        return self._count

    async def __aenter__(self) -> MemoryQueueScan:
        info = await self.broker.inspect_queue(self._queue)
        if info is None:
            raise ConfigurationError(f"queue {self._queue!r} does not exist on {self.broker.url}")
        self._count = info.message_count
        self._provider = self.broker.provider(self._queue, prefetch=sys.maxsize)
        await self._provider.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        provider, self._provider = self._provider, None
        if provider is not None:
            await provider.close()  # unacked deliveries go back to the head, in their order

    async def messages(self) -> AsyncIterator[Message]:
        """Up to `count` messages from the head; fewer if someone else took some meanwhile."""
        provider = self._provider
        if provider is None:
            raise RuntimeError("enter the scan with `async with` first")
        for seen in range(self._count):
            message = provider.receive_nowait()
            if message is None:
                return
            yield message
            if seen % 256 == 255:
                await anyio.lowlevel.checkpoint()

    async def ack(self, message: Message) -> None:
        """Take `message` out of the queue for good."""
        if self._provider is None:
            raise RuntimeError("the scan is closed")
        await self._provider.ack(message)

    async def ack_all(self, messages: Sequence[Message]) -> None:
        """Take every message of `messages` out of the queue for good."""
        for message in messages:
            await self.ack(message)

    async def publish(self, batch: Sequence[tuple[Message, str]]) -> list[Exception | None]:
        """Route each message now (mandatory: a missing queue is a `PublishError` for that message)."""
        results: list[Exception | None] = []
        for message, queue in batch:
            try:
                self.broker.publish_nowait(message, queue, mandatory=True)
            except PublishError as exc:
                results.append(exc)
            else:
                results.append(None)
        await anyio.lowlevel.checkpoint()
        return results

    async def queue_exists(self, name: str) -> bool:
        """True when queue `name` exists."""
        return await self.broker.inspect_queue(name) is not None
