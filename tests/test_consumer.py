"""The consumer loop against the in-memory broker: bounds, the one stop path, lifespans, settlement."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from processors.ack import AckProcessor
from swarrow import (
    ConfigurationError,
    Consumer,
    ConsumerControl,
    Layer,
    MemoryBroker,
    MemoryMessageProvider,
    Message,
    Processor,
    Stack,
    StopConsumer,
)

pytestmark = pytest.mark.anyio


class Recorder:
    """Records lifespan entry and exit, in order, and gives tests the control handle."""

    def __init__(self, inner: Processor, /, *, name: str, log: list[str]) -> None:
        self.inner = inner
        self.name = name
        self.log = log
        self.control: ConsumerControl | None = None

    @asynccontextmanager
    async def lifespan(self, control: ConsumerControl) -> AsyncIterator[None]:
        self.control = control
        self.log.append(f"enter {self.name}")
        try:
            yield
        finally:
            self.log.append(f"exit {self.name}")

    async def __call__(self, message: Message, /) -> bool:
        return await self.inner(message)


def _setup(count: int, prefetch: int = 100) -> tuple[MemoryBroker, MemoryMessageProvider]:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    for i in range(count):
        broker.publish_nowait(Message(str(i).encode(), message_id=str(i)), "q")
    return broker, broker.provider("q", prefetch=prefetch)


async def test_processes_every_message_and_acks_each_exactly_once() -> None:
    broker, provider = _setup(200)
    seen: list[str] = []

    async def handle(message: Message) -> bool:
        seen.append(message.message_id or "")
        return len(seen) < 200

    reason = await Consumer(
        provider, Stack(Layer(AckProcessor, provider=provider), callback=handle), concurrency=7
    ).run()
    assert reason.code == "callback"
    assert sorted(seen, key=int) == [str(i) for i in range(200)]
    assert len(provider.acked) == len(set(provider.acked)) == 200
    assert provider.unknown_settlements == 0
    assert broker.message_count("q") == 0


async def test_in_flight_never_exceeds_concurrency() -> None:
    broker, provider = _setup(60)
    current = peak = done = 0

    async def handle(message: Message) -> bool:
        nonlocal current, peak, done
        current += 1
        peak = max(peak, current)
        await anyio.sleep(0.001)
        current -= 1
        done += 1
        return done < 60

    await Consumer(
        provider, Stack(Layer(AckProcessor, provider=provider), callback=handle), concurrency=4
    ).run()
    assert peak == 4


async def test_nothing_unprocessed_is_acked_when_stopping_early() -> None:
    broker, provider = _setup(100, prefetch=50)
    processed: set[int] = set()

    async def handle(message: Message) -> bool:
        await anyio.lowlevel.checkpoint()
        processed.add(int(message.body))
        return len(processed) < 10

    await Consumer(
        provider, Stack(Layer(AckProcessor, provider=provider), callback=handle), concurrency=5
    ).run()
    acked_bodies = set(processed)
    assert len(provider.acked) == len(processed) >= 10
    assert broker.message_count("q") == 100 - len(acked_bodies)


async def test_graceful_stop_lets_in_flight_messages_finish_and_acks_them() -> None:
    broker, provider = _setup(10)
    finished: list[str] = []
    started = 0
    control_box: list[ConsumerControl] = []

    async def handle(message: Message) -> None:
        nonlocal started
        started += 1
        if started == 3:
            control_box[0].stop("test", "stop while three are in flight")
        await anyio.sleep(0.05)
        finished.append(message.message_id or "")

    log: list[str] = []
    stack = Stack(
        Layer(Recorder, name="r", log=log),
        Layer(AckProcessor, provider=provider),
        callback=handle,
    )
    consumer = Consumer(provider, stack, concurrency=3, grace_period=5)
    control_box.append(consumer.control)
    reason = await consumer.run()
    assert reason.code == "test"
    assert len(finished) == 3
    assert len(provider.acked) == 3
    assert broker.message_count("q") == 7


async def test_grace_period_expiry_cancels_and_leaves_messages_for_redelivery() -> None:
    broker, provider = _setup(3)
    started = anyio.Event()

    async def handle(message: Message) -> None:
        started.set()
        await anyio.sleep(30)

    consumer = Consumer(
        provider,
        Stack(Layer(AckProcessor, provider=provider), callback=handle),
        concurrency=3,
        grace_period=0.1,
    )

    async def stop_soon() -> None:
        await started.wait()
        consumer.control.stop("test")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_soon)
            await consumer.run()
    assert provider.acked == []
    assert broker.message_count("q") == 3
    redelivered = broker.get_nowait("q")
    assert redelivered is not None and redelivered.redelivered


async def test_stop_now_cancels_in_flight_without_waiting_for_the_grace_period() -> None:
    broker, provider = _setup(2)
    started = anyio.Event()

    async def handle(message: Message) -> None:
        started.set()
        await anyio.sleep(30)

    consumer = Consumer(
        provider,
        Stack(Layer(AckProcessor, provider=provider), callback=handle),
        concurrency=2,
        grace_period=60,
    )

    async def stop() -> None:
        await started.wait()
        consumer.control.stop("first")
        await anyio.sleep(0.01)
        consumer.control.stop_now("second")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop)
            reason = await consumer.run()
    assert reason.code == "second" and reason.immediate
    assert broker.message_count("q") == 2


async def test_lifespans_enter_outermost_first_and_are_left_after_a_crash() -> None:
    broker, provider = _setup(1)
    log: list[str] = []

    async def handle(message: Message) -> None:
        log.append("handle")
        raise RuntimeError("boom")

    stack = Stack(
        Layer(Recorder, name="outer", log=log), Layer(Recorder, name="inner", log=log), callback=handle
    )
    with pytest.raises(RuntimeError, match="boom"):
        await Consumer(provider, stack).run()
    assert log == ["enter outer", "enter inner", "handle", "exit inner", "exit outer"]
    assert broker.message_count("q") == 1  # never acked: back in the queue


async def test_stop_consumer_finishes_the_message_then_stops() -> None:
    broker, provider = _setup(5)

    async def handle(message: Message) -> None:
        raise StopConsumer("enough")

    reason = await Consumer(provider, Stack(Layer(AckProcessor, provider=provider), callback=handle)).run()
    assert (reason.code, reason.detail) == ("callback", "enough")
    assert len(provider.acked) == 1
    assert broker.message_count("q") == 4


async def test_sync_callbacks_run_in_a_worker_thread() -> None:
    broker, provider = _setup(3)
    threads: set[int] = set()
    count = 0

    def handle(message: Message) -> bool:
        nonlocal count
        threads.add(threading.get_ident())
        count += 1
        return count < 3

    await Consumer(provider, Stack(Layer(AckProcessor, provider=provider), callback=handle)).run()
    assert count == 3
    assert threading.get_ident() not in threads


async def test_provider_stopping_ends_the_run_with_its_reason() -> None:
    broker, provider = _setup(0)

    async def handle(message: Message) -> None:
        raise AssertionError("no message was published")

    consumer = Consumer(provider, handle, concurrency=2)

    async def stop_provider() -> None:
        while not provider.is_consuming:
            await anyio.sleep(0.001)
        await provider.stop_consuming()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_provider)
            reason = await consumer.run()
    assert reason.code == "provider_closed"


async def test_a_processor_returning_false_stops_with_its_reason() -> None:
    broker, provider = _setup(5)

    class StopAfterOne:
        def __init__(self, inner: Processor, /) -> None:
            self.inner = inner

        async def __call__(self, message: Message, /) -> bool:
            await self.inner(message)
            return False

    reason = await Consumer(
        provider, Stack(Layer(AckProcessor, provider=provider), StopAfterOne, callback=lambda m: None)
    ).run()
    assert reason.code == "processor"
    assert broker.message_count("q") == 4


async def test_prefetch_below_concurrency_is_rejected() -> None:
    _, provider = _setup(0, prefetch=2)
    with pytest.raises(ConfigurationError, match="prefetch"):
        Consumer(provider, lambda m: None, concurrency=5)
    with pytest.raises(ConfigurationError, match="concurrency"):
        Consumer(provider, lambda m: None, concurrency=0)


async def test_a_consumer_runs_once() -> None:
    _, provider = _setup(1)
    consumer = Consumer(provider, lambda m: False)
    await consumer.run()
    with pytest.raises(RuntimeError, match="once"):
        await consumer.run()


async def test_a_hung_sync_callback_does_not_block_an_immediate_stop() -> None:
    broker, provider = _setup(1)
    entered = threading.Event()
    release = threading.Event()

    def handle(message: Message) -> None:
        entered.set()
        release.wait(10)  # a thread Python cannot interrupt

    consumer = Consumer(
        provider, Stack(Layer(AckProcessor, provider=provider), callback=handle), grace_period=0.1
    )

    async def stop_when_entered() -> None:
        await anyio.to_thread.run_sync(entered.wait, 5)
        consumer.control.stop("test")

    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_when_entered)
                await consumer.run()
    finally:
        release.set()
    assert provider.acked == []
    assert broker.message_count("q") == 1  # abandoned, unacked: redelivered


async def test_a_stop_wins_over_a_provider_start_that_never_returns() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")

    starting = anyio.Event()

    class SilentBroker(MemoryMessageProvider):
        async def start(self) -> None:
            starting.set()
            await anyio.sleep_forever()  # a broker that accepted the connection, then went silent

    provider = SilentBroker(broker, "q")

    async def sigterm() -> None:
        await starting.wait()
        consumer.control.stop("signal", "SIGTERM")

    async def handle(message: Message) -> None:
        raise AssertionError("nothing is delivered")

    consumer = Consumer(provider, handle)
    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sigterm)
            reason = await consumer.run()
    assert reason.code == "signal"


async def test_the_last_acks_go_out_while_every_lifespan_still_runs() -> None:
    # The signal layer's lifespan watches SIGINT/SIGTERM: the provider's close (the final ack flush)
    # must happen inside it. Before, it came after every lifespan was left, and a further Ctrl-C or
    # SIGTERM there lost the acks: messages logged "acked" ran again (attack on issue 21, CLI storms).
    broker, provider = _setup(5)
    log: list[str] = []
    close = provider.close

    async def logged_close() -> None:
        log.append("provider closed")
        await close()

    provider.close = logged_close  # type: ignore[method-assign]
    taken = 0

    async def five(message: Message) -> bool:
        nonlocal taken
        taken += 1
        return taken < 5  # False: the processor asks to stop

    stack = Stack(
        Layer(Recorder, name="signals", log=log), Layer(AckProcessor, provider=provider), callback=five
    )
    await Consumer(provider, stack).run()
    assert log[:3] == ["enter signals", "provider closed", "exit signals"]
    assert broker.message_count("q") == 0  # all five acked, none back in the queue
