"""MaxRuntimeProcessor: stops at the deadline while idle, and after the message that crossed it."""

from __future__ import annotations

import anyio
import pytest

from processors.ack import AckProcessor
from processors.max_runtime import MaxRuntimeProcessor
from swarrow import Consumer, Layer, MemoryBroker, Message, Stack
from tests.manual_clock import ManualClock, consuming

pytestmark = pytest.mark.anyio


async def test_stops_an_idle_consumer_at_the_deadline() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    provider = broker.provider("q")
    clock = ManualClock()

    async def handle(message: Message) -> None:
        raise AssertionError("no message was published")

    stack = Stack(Layer(MaxRuntimeProcessor, seconds=60, clock=clock, sleep=clock.sleep), callback=handle)
    async with consuming(Consumer(provider, stack)) as stopped:
        await clock.advance(59)
        assert stopped == []  # idle, and a second before the deadline
        await clock.advance(1)
    assert [reason.code for reason in stopped] == ["max_runtime"]


async def test_message_crossing_the_deadline_finishes_is_acked_then_stops() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    for i in range(5):
        broker.publish_nowait(Message(str(i).encode()), "q")
    provider = broker.provider("q", prefetch=5)
    seen: list[bytes] = []
    now = [1000.0]

    async def handle(message: Message) -> None:
        seen.append(message.body)
        now[0] += 61.0  # the first message outlives the 60 s runtime (on the injected clock)

    stack = Stack(
        Layer(MaxRuntimeProcessor, seconds=60, clock=lambda: now[0]),
        Layer(AckProcessor, provider=provider),
        callback=handle,
    )
    with anyio.fail_after(3):
        reason = await Consumer(provider, stack).run()
    assert reason.code == "max_runtime"
    assert seen == [b"0"]
    assert provider.acked == [1]  # finished and acked, not cancelled and redelivered
    assert broker.message_count("q") == 4


async def test_returns_false_after_the_deadline_without_a_lifespan() -> None:
    async def inner(message: Message) -> bool:
        return True

    now = [0.0]
    processor = MaxRuntimeProcessor(inner, seconds=60, clock=lambda: now[0])
    assert await processor(Message()) is True
    now[0] = 59.9
    assert await processor(Message()) is True
    now[0] = 60.0
    assert await processor(Message()) is False


async def test_a_stop_before_the_deadline_leaves_the_lifespan_promptly() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    broker.publish_nowait(Message(b"x"), "q")
    provider = broker.provider("q")

    async def handle(message: Message) -> bool:
        return False  # stop right away; the 60 s watcher must not hold the consumer

    stack = Stack(Layer(MaxRuntimeProcessor, seconds=60), callback=handle)
    with anyio.fail_after(3):
        reason = await Consumer(provider, stack).run()
    assert reason.code == "callback"


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan"), True, "5"])
def test_rejects_bad_seconds(seconds: object) -> None:
    async def inner(message: Message) -> bool:
        return True

    with pytest.raises(ValueError, match="seconds"):
        MaxRuntimeProcessor(inner, seconds=seconds)  # type: ignore[arg-type]
