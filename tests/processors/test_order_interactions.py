"""The stack orders swarrot users get wrong, checked on a real consumer over the in-memory broker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from processors.ack import AckProcessor
from processors.exception_catcher import ExceptionCatcherProcessor
from processors.instant_retry import InstantRetryProcessor
from processors.max_messages import MaxMessagesProcessor
from processors.retry import RetryProcessor
from swarrow import Consumer, Layer, MemoryBroker, Message, Stack
from swarrow.topology import RETRY_ATTEMPT_HEADER, RetryTopology

pytestmark = pytest.mark.anyio

Q = "orders"


async def _run(consumer: Consumer, done: Callable[[], bool]) -> str:
    """Run `consumer` until it stops by itself or `done()`; return the stop code. Bounded."""
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            reasons.append((await consumer.run()).code)

        reasons: list[str] = []
        tg.start_soon(run)
        with anyio.fail_after(3):
            while not reasons and not done():
                await anyio.sleep(0.005)  # polling a condition, bounded by fail_after
        consumer.control.stop("test")
    return reasons[0]


def _publish(broker: MemoryBroker, count: int) -> None:
    for i in range(count):
        broker.publish_nowait(Message(str(i).encode()), Q)


async def test_exception_catcher_inside_max_messages_counts_failures_and_stops(
    memory_broker: MemoryBroker,
) -> None:
    memory_broker.declare_queue_nowait(Q)
    _publish(memory_broker, 5)
    provider = memory_broker.provider(Q)
    calls: list[bytes] = []

    async def callback(message: Message) -> None:
        calls.append(message.body)
        raise ValueError("every message fails")

    stack = Stack(
        Layer(MaxMessagesProcessor, limit=3),
        Layer(ExceptionCatcherProcessor),
        Layer(AckProcessor, provider=provider),
        callback=callback,
    )
    code = await _run(Consumer(provider, stack), lambda: False)
    assert code == "max_messages"  # not "crashed": failures did not kill the worker
    assert calls == [b"0", b"1", b"2"]
    assert memory_broker.message_count(Q) == 2


async def test_ack_outside_retry_acks_the_original_once_after_the_copy_is_confirmed(
    memory_broker: MemoryBroker,
) -> None:
    await RetryTopology(Q, (5.0,)).declare(memory_broker)
    _publish(memory_broker, 1)
    provider = memory_broker.provider(Q)
    publisher = memory_broker.publisher()
    events: list[str] = []

    class Recording:
        async def publish(self, message: Message, routing_key: str, exchange: str = "", **kw: Any) -> None:
            await publisher.publish(message, routing_key, exchange, **kw)
            events.append(f"confirmed {routing_key}")

        async def close(self) -> None:
            pass

    async def callback(message: Message) -> None:
        raise ConnectionError("downstream down")

    stack = Stack(
        Layer(ExceptionCatcherProcessor),
        Layer(AckProcessor, provider=provider),
        Layer(RetryProcessor, publisher=Recording(), attempts=1, delays=(5.0,)),
        callback=callback,
    )
    await _run(Consumer(provider, stack), lambda: bool(provider.acked))
    assert events == [f"confirmed {Q}.retry.1"]
    assert len(provider.acked) == 1 and provider.rejected == []
    assert provider.unknown_settlements == 0
    copy = memory_broker.get_nowait(f"{Q}.retry.1")
    assert copy is not None and copy.body == b"0" and copy.headers[RETRY_ATTEMPT_HEADER] == 1


async def test_instant_retry_with_catcher_and_ack_keeps_consuming(memory_broker: MemoryBroker) -> None:
    memory_broker.declare_queue_nowait(Q)
    _publish(memory_broker, 4)
    provider = memory_broker.provider(Q)
    calls: list[bytes] = []
    succeeded: list[bytes] = []

    async def callback(message: Message) -> None:
        calls.append(message.body)
        if message.body == b"1":
            raise ConnectionError("always fails")
        succeeded.append(message.body)

    stack = Stack(
        Layer(ExceptionCatcherProcessor),
        Layer(AckProcessor, provider=provider),
        Layer(InstantRetryProcessor, attempts=3, delay=0.01),
        callback=callback,
    )
    await _run(Consumer(provider, stack), lambda: len(succeeded) == 3)
    assert succeeded == [b"0", b"2", b"3"]
    assert calls.count(b"1") == 3
    assert len(provider.acked) == 3 and len(provider.rejected) == 1
    assert provider.unsettled_count == 0
