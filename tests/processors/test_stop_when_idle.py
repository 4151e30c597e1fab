"""StopWhenIdleProcessor: drains the queue, then stops once idle; never while a message is in flight."""

from __future__ import annotations

import anyio
import pytest

from processors.ack import AckProcessor
from processors.stop_when_idle import StopWhenIdleProcessor
from swarrow import Consumer, Layer, MemoryBroker, Message, Stack
from tests.manual_clock import ManualClock, consuming

pytestmark = pytest.mark.anyio


async def test_drains_the_queue_then_stops() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    for i in range(25):
        broker.publish_nowait(Message(str(i).encode()), "q")
    provider = broker.provider("q", prefetch=5)
    seen: list[bytes] = []
    clock = ManualClock()

    async def handle(message: Message) -> None:
        seen.append(message.body)

    idle = Layer(StopWhenIdleProcessor, seconds=10, clock=clock, sleep=clock.sleep)
    stack = Stack(idle, Layer(AckProcessor, provider=provider), callback=handle)
    async with consuming(Consumer(provider, stack, concurrency=2)) as stopped:
        assert len(seen) == 25  # drained, and still running: no time has passed
        await clock.advance(9)
        assert stopped == []
        await clock.advance(1)
    assert [reason.code for reason in stopped] == ["idle"]
    assert len(provider.acked) == 25
    assert broker.message_count("q") == 0


async def test_does_not_stop_while_a_long_message_is_in_flight_and_counts_from_its_end() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    broker.publish_nowait(Message(b"slow"), "q")
    provider = broker.provider("q")
    clock = ManualClock()
    release = anyio.Event()

    async def handle(message: Message) -> None:
        await release.wait()

    idle = Layer(StopWhenIdleProcessor, seconds=10, clock=clock, sleep=clock.sleep)
    stack = Stack(idle, Layer(AckProcessor, provider=provider), callback=handle)
    async with consuming(Consumer(provider, stack)) as stopped:
        await clock.advance(35)  # three idle periods and more, the message still running
        assert stopped == []
        await clock.advance(7)
        release.set()
        await clock.advance(0)  # the message ends at +42; the watcher is due at +45
        assert provider.acked == [1]  # finished, not cut short
        await clock.advance(3)
        assert stopped == []  # 3 s since the message ended (45 since it started)
        await clock.advance(7)
    assert [reason.code for reason in stopped] == ["idle"]


async def test_an_empty_queue_stops_after_the_idle_period() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    clock = ManualClock()

    async def handle(message: Message) -> None:
        raise AssertionError("queue is empty")

    stack = Stack(Layer(StopWhenIdleProcessor, seconds=15, clock=clock, sleep=clock.sleep), callback=handle)
    async with consuming(Consumer(broker.provider("q"), stack)) as stopped:
        await clock.advance(14)
        assert stopped == []
        await clock.advance(1)
    assert [reason.code for reason in stopped] == ["idle"]


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
