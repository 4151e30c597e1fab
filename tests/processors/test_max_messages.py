"""MaxMessagesProcessor: stops after exactly `limit` finished messages; failures are not counted."""

from __future__ import annotations

import anyio
import pytest

from processors.ack import AckProcessor
from processors.exception_catcher import ExceptionCatcherProcessor
from processors.max_messages import MaxMessagesProcessor
from swarrow import Consumer, Layer, MemoryBroker, MemoryMessageProvider, Message, Stack

pytestmark = pytest.mark.anyio


def _setup(count: int) -> tuple[MemoryBroker, MemoryMessageProvider]:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    for i in range(count):
        broker.publish_nowait(Message(str(i).encode(), message_id=str(i)), "q")
    return broker, broker.provider("q", prefetch=10)


async def test_stops_after_exactly_limit_finished_messages() -> None:
    broker, provider = _setup(10)
    seen: list[bytes] = []

    async def handle(message: Message) -> None:
        seen.append(message.body)

    stack = Stack(
        Layer(MaxMessagesProcessor, limit=3), Layer(AckProcessor, provider=provider), callback=handle
    )
    with anyio.fail_after(5):
        reason = await Consumer(provider, stack).run()
    assert reason.code == "max_messages"
    assert "3" in reason.detail
    assert seen == [b"0", b"1", b"2"]
    assert provider.acked == [1, 2, 3]
    assert broker.message_count("q") == 7  # prefetched but unstarted ones went back


async def test_failed_messages_are_not_counted() -> None:
    broker, provider = _setup(10)
    calls: list[bytes] = []

    async def handle(message: Message) -> None:
        calls.append(message.body)
        if int(message.body) % 2:
            raise RuntimeError("odd")

    stack = Stack(
        Layer(MaxMessagesProcessor, limit=3),
        Layer(ExceptionCatcherProcessor),
        Layer(AckProcessor, provider=provider),
        callback=handle,
    )
    with anyio.fail_after(5):
        reason = await Consumer(provider, stack).run()
    # The exception catcher returns normally, so a failure that it swallowed counts as finished (settled);
    # only exceptions that reach max_messages are left uncounted.
    assert reason.code == "max_messages"
    assert calls == [b"0", b"1", b"2"]


async def test_exception_reaching_the_layer_is_not_counted() -> None:
    count = 0

    async def inner(message: Message) -> bool:
        nonlocal count
        count += 1
        if count <= 2:
            raise RuntimeError("boom")
        return True

    processor = MaxMessagesProcessor(inner, limit=2)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await processor(Message())
    assert processor.count == 0
    assert await processor(Message()) is True
    assert await processor(Message()) is False
    assert processor.count == 2


async def test_keeps_inner_false_before_the_limit() -> None:
    async def inner(message: Message) -> bool:
        return False

    processor = MaxMessagesProcessor(inner, limit=5)
    assert await processor(Message()) is False
    assert processor.count == 1


async def test_in_flight_messages_finish_and_are_counted_once_with_concurrency() -> None:
    broker, provider = _setup(20)
    release = anyio.Event()
    all_started = anyio.Event()
    started = 0

    async def handle(message: Message) -> None:
        nonlocal started
        started += 1
        if started == 4:
            all_started.set()
        # Message 0 finishes (reaching the limit) only once four are in flight.
        await (all_started if message.body == b"0" else release).wait()

    layer = Layer(MaxMessagesProcessor, limit=1)
    built: list[MaxMessagesProcessor] = []

    def max_messages(inner: object) -> MaxMessagesProcessor:
        processor = layer.wrap(inner)  # type: ignore[arg-type]
        assert isinstance(processor, MaxMessagesProcessor)
        built.append(processor)
        return processor

    async def release_when_stopping(consumer: Consumer) -> None:
        await consumer.control.wait_stop_requested()
        release.set()

    stack = Stack(max_messages, Layer(AckProcessor, provider=provider), callback=handle)
    consumer = Consumer(provider, stack, concurrency=4)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(release_when_stopping, consumer)
            reason = await consumer.run()
    assert reason.code == "max_messages"
    assert started == 4  # the three already in flight finished; nothing new started
    assert len(provider.acked) == 4
    assert built[0].count == 4
    assert broker.message_count("q") == 16


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "3"])
def test_rejects_a_bad_limit(limit: object) -> None:
    async def inner(message: Message) -> bool:
        return True

    with pytest.raises(ValueError, match="limit"):
        MaxMessagesProcessor(inner, limit=limit)  # type: ignore[arg-type]
