"""Helpers for the differential scenarios: a `Side` per broker, waiting on conditions, running on both."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio

from swarrow import Broker, Message, MessageProvider

T = TypeVar("T")

AMQP_URL = os.environ.get("SWARROW_TEST_URL", "amqp://guest:guest@127.0.0.1:5672/")


def rabbitmq_listens(url: str = AMQP_URL) -> bool:
    """True when something accepts connections where the test RabbitMQ should be."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Side:
    """One broker under test, with the queues a scenario made on it (deleted afterwards)."""

    name: str
    broker: Broker
    prefix: str
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)

    @property
    def memory(self) -> bool:
        return self.name == "memory"

    def q(self, suffix: str) -> str:
        """A unique queue name for this scenario (remembered for clean-up)."""
        name = f"{self.prefix}.{suffix}"
        if name not in self.queues:
            self.queues.append(name)
        return name

    async def declare(self, suffix: str, *, durable: bool = True, **arguments: Any) -> str:
        """Declare queue `suffix` with `arguments` given as keywords (`x_message_ttl=...`)."""
        name = self.q(suffix)
        await self.broker.declare_queue(
            name, durable=durable, arguments={k.replace("_", "-"): v for k, v in arguments.items()}
        )
        return name

    async def exchange(self, suffix: str, type: str, **arguments: Any) -> str:
        """Declare a non-durable exchange `suffix` (remembered for clean-up)."""
        name = f"{self.prefix}.{suffix}"
        self.exchanges.append(name)
        await self.broker.declare_exchange(
            name, type, durable=False, arguments={k.replace("_", "-"): v for k, v in arguments.items()}
        )
        return name

    async def publish(self, queue: str, *bodies: str, **fields: Any) -> None:
        """Publish one message per body to `queue` (confirmed), with the given properties."""
        publisher = self.broker.publisher()
        try:
            for body in bodies:
                await publisher.publish(Message(body.encode(), **fields), queue)
        finally:
            await publisher.close()

    async def ready(self, queue: str) -> int | None:
        """The queue's ready count, or None when it does not exist."""
        info = await self.broker.inspect_queue(queue)
        return None if info is None else info.message_count


async def take(provider: MessageProvider, count: int, timeout: float = 5.0) -> list[Message]:
    """The next `count` deliveries (fails the scenario if they do not come in time)."""
    out: list[Message] = []
    with anyio.fail_after(timeout):
        while len(out) < count:
            message = await provider.receive()
            assert message is not None, f"provider stopped after {len(out)} of {count} deliveries"
            out.append(message)
    return out


async def eventually(probe: Callable[[], Awaitable[T]], expected: T, timeout: float = 5.0) -> T:
    """Poll `probe` until it returns `expected` or `timeout` passes; return what it last returned."""
    value = await probe()
    with anyio.move_on_after(timeout):
        while value != expected:
            await anyio.sleep(0.02)
            value = await probe()
    return value


def bodies(messages: list[Message]) -> list[str]:
    """The bodies of `messages`, decoded."""
    return [m.body.decode() for m in messages]


Scenario = Callable[[Side], Awaitable[T]]


async def on_both(sides: list[Side], scenario: Scenario[T]) -> tuple[T, T]:
    """Run `scenario` on memory, then on RabbitMQ; return both observations."""
    memory, rabbit = sides
    return await scenario(memory), await scenario(rabbit)
