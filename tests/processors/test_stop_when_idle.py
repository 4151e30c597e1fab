"""StopWhenIdleProcessor: drains the queue, then stops once idle; never while a message is in flight."""

from __future__ import annotations

import time

import anyio
import pytest

from processors.ack import AckProcessor
from processors.stop_when_idle import StopWhenIdleProcessor
from swarrow import Consumer, Layer, MemoryBroker, Message, Stack

pytestmark = pytest.mark.anyio


async def test_drains_the_queue_then_stops() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    for i in range(25):
        broker.publish_nowait(Message(str(i).encode()), "q")
    provider = broker.provider("q", prefetch=5)
    seen: list[bytes] = []

    async def handle(message: Message) -> None:
        seen.append(message.body)

    stack = Stack(
        Layer(StopWhenIdleProcessor, seconds=0.1), Layer(AckProcessor, provider=provider), callback=handle
    )
    with anyio.fail_after(3):
        reason = await Consumer(provider, stack, concurrency=2).run()
    assert reason.code == "idle"
    assert len(seen) == 25
    assert len(provider.acked) == 25
    assert broker.message_count("q") == 0


async def test_does_not_stop_while_a_long_message_is_in_flight() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    broker.publish_nowait(Message(b"slow"), "q")
    provider = broker.provider("q")
    finished_at = 0.0

    async def handle(message: Message) -> None:
        nonlocal finished_at
        await anyio.sleep(0.3)  # three idle periods long
        finished_at = time.monotonic()

    stack = Stack(
        Layer(StopWhenIdleProcessor, seconds=0.1), Layer(AckProcessor, provider=provider), callback=handle
    )
    with anyio.fail_after(3):
        reason = await Consumer(provider, stack).run()
    stopped_at = time.monotonic()
    assert reason.code == "idle"
    assert provider.acked == [1]  # finished, not cut short
    assert stopped_at - finished_at >= 0.09  # the idle period counts from the end of the message


async def test_an_empty_queue_stops_after_the_idle_period() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")

    async def handle(message: Message) -> None:
        raise AssertionError("queue is empty")

    started = time.monotonic()
    with anyio.fail_after(3):
        reason = await Consumer(
            broker.provider("q"), Stack(Layer(StopWhenIdleProcessor, seconds=0.15), callback=handle)
        ).run()
    assert reason.code == "idle"
    assert 0.14 <= time.monotonic() - started < 2


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), None])
def test_rejects_bad_seconds(seconds: object) -> None:
    async def inner(message: Message) -> bool:
        return True

    with pytest.raises(ValueError, match="seconds"):
        StopWhenIdleProcessor(inner, seconds=seconds)  # type: ignore[arg-type]


async def test_idleness_counts_from_the_end_of_a_message_on_the_injected_clock() -> None:
    now = [100.0]

    async def inner(message: Message) -> bool:
        assert processor._last_activity == 100.0  # stamped when the message started
        now[0] += 300.0  # a message three idle periods long
        return True

    processor = StopWhenIdleProcessor(inner, seconds=100, clock=lambda: now[0])
    assert await processor(Message()) is True
    assert processor._last_activity == 400.0  # and again when it finished
