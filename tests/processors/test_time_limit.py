"""TimeLimitProcessor: a hanging async callback is freed, fails as TimeLimitExceeded, consuming goes on."""

from __future__ import annotations

import threading
import time

import anyio
import anyio.from_thread
import pytest

from processors.ack import AckProcessor
from processors.exception_catcher import ExceptionCatcherProcessor
from processors.time_limit import TimeLimitProcessor
from swarrow import CallbackProcessor, Consumer, Layer, MemoryBroker, Message, Stack, TimeLimitExceeded

pytestmark = pytest.mark.anyio


def _broker(*bodies: bytes) -> MemoryBroker:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    for body in bodies:
        broker.publish_nowait(Message(body), "q")
    return broker


async def test_frees_a_hanging_async_callback_and_keeps_consuming() -> None:
    broker = _broker(b"hang", b"ok", b"stop")
    provider = broker.provider("q")
    seen: list[bytes] = []

    async def handle(message: Message) -> bool:
        seen.append(message.body)
        if message.body == b"hang":
            await anyio.sleep_forever()
        return message.body != b"stop"

    stack = Stack(
        Layer(ExceptionCatcherProcessor),
        Layer(AckProcessor, provider=provider),
        Layer(TimeLimitProcessor, seconds=0.1),
        callback=handle,
    )
    with anyio.fail_after(3):
        reason = await Consumer(provider, stack).run()
    assert reason.code == "callback"
    assert seen == [b"hang", b"ok", b"stop"]
    assert provider.rejected == [(1, False)]  # the timed-out message failed
    assert provider.acked == [2, 3]


async def test_raises_time_limit_exceeded_chained_to_the_timeout() -> None:
    async def hang(message: Message) -> bool:
        await anyio.sleep_forever()
        return True

    processor = TimeLimitProcessor(CallbackProcessor(hang), seconds=0.05)
    with anyio.fail_after(2), pytest.raises(TimeLimitExceeded, match=r"0\.05s") as caught:
        await processor(Message(message_id="m1"))
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert processor.timeouts == 1
    assert processor.in_thread is False


async def test_passes_results_and_the_callbacks_own_timeout_error_through() -> None:
    async def own_timeout(message: Message) -> bool:
        if message.body == b"raise":
            raise TimeoutError("from the callback")
        return message.body != b"stop"

    processor = TimeLimitProcessor(own_timeout, seconds=1)
    assert await processor(Message()) is True
    assert await processor(Message(b"stop")) is False
    with pytest.raises(TimeoutError, match="from the callback"):
        await processor(Message(b"raise"))
    assert processor.timeouts == 0


async def test_sync_callback_overrunning_fails_when_its_thread_returns() -> None:
    release = threading.Event()

    def slow(message: Message) -> None:
        release.wait(2)  # a thread cannot be interrupted: it returns only when released

    processor = TimeLimitProcessor(CallbackProcessor(slow), seconds=0.05)
    assert processor.in_thread is True

    async def release_later() -> None:
        await anyio.sleep(0.2)
        release.set()

    started = time.monotonic()
    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(release_later)
            with pytest.raises(TimeLimitExceeded):
                await processor(Message())
    assert time.monotonic() - started >= 0.15  # the wait was not abandoned


async def test_sync_callback_checking_for_cancellation_is_interrupted() -> None:
    iterations = 0

    def cooperative(message: Message) -> None:
        nonlocal iterations
        for _ in range(500):  # 5 s if never interrupted
            iterations += 1
            time.sleep(0.01)
            anyio.from_thread.check_cancelled()

    processor = TimeLimitProcessor(CallbackProcessor(cooperative), seconds=0.05)
    with anyio.fail_after(3), pytest.raises(TimeLimitExceeded) as caught:
        await processor(Message())
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert iterations < 100


async def test_exit_on_timeout_stops_the_consumer_now() -> None:
    broker = _broker(b"hang", b"never")
    provider = broker.provider("q")
    seen: list[bytes] = []

    async def handle(message: Message) -> None:
        seen.append(message.body)
        await anyio.sleep_forever()

    stack = Stack(
        Layer(ExceptionCatcherProcessor),
        Layer(AckProcessor, provider=provider),
        Layer(TimeLimitProcessor, seconds=0.05, exit_on_timeout=True),
        callback=handle,
    )
    with anyio.fail_after(3):
        reason = await Consumer(provider, stack, grace_period=10).run()
    assert reason.code == "time_limit"
    assert reason.immediate
    assert seen == [b"hang"]


@pytest.mark.parametrize(("seconds", "exit_on_timeout"), [(0, False), (-1, False), (1, "yes")])
def test_rejects_bad_options(seconds: object, exit_on_timeout: object) -> None:
    async def inner(message: Message) -> bool:
        return True

    with pytest.raises(ValueError, match=r"seconds|exit_on_timeout"):
        TimeLimitProcessor(inner, seconds=seconds, exit_on_timeout=exit_on_timeout)  # type: ignore[arg-type]
