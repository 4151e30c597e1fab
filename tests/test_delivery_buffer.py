"""The AMQP provider's delivery buffer: how parked workers are woken (the baton), in isolation."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from swarrow.amqp.buffer import DeliveryBuffer
from swarrow.message import Message

pytestmark = pytest.mark.anyio


class Buffer(DeliveryBuffer):
    """The state the provider holds, and its reader's two steps for one delivery."""

    def __init__(self) -> None:
        self._buffer: deque[Message] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._woken = 0
        self._wanted = True
        self.wake_ups = 0

    def deliver(self, count: int) -> None:
        for n in range(count):
            self._buffer.append(Message(b"", message_id=str(n)))
            self.wake_for_delivery()

    def _wake_one(self) -> None:
        self.wake_ups += 1
        super()._wake_one()


async def wait_for(condition: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0)


async def test_a_read_of_many_deliveries_wakes_one_worker_when_callbacks_do_not_suspend() -> None:
    buffer = Buffer()
    taken: list[tuple[int, str]] = []

    async def worker(number: int) -> None:  # the consumer's loop, with a callback that never suspends
        while True:
            message = buffer.receive_nowait()
            if message is None:
                message = await buffer.receive()
                if message is None:
                    return
            taken.append((number, message.message_id or ""))

    workers = [asyncio.create_task(worker(n)) for n in range(100)]
    await wait_for(lambda: len(buffer._waiters) == 100)
    buffer.deliver(30)
    await wait_for(lambda: len(taken) == 30 and len(buffer._waiters) == 100)
    # Before the baton each of the 30 deliveries woke a worker, and 29 of them found the buffer empty.
    assert buffer.wake_ups <= 2
    assert sorted(int(m) for _, m in taken) == list(range(30))
    assert buffer._woken == 0
    buffer._wanted = False
    buffer._release_waiters()
    await asyncio.gather(*workers)
    assert buffer._woken == 0


async def test_slow_callbacks_still_get_a_worker_each() -> None:
    buffer = Buffer()
    holding: set[int] = set()
    release = asyncio.Event()

    async def worker(number: int) -> None:
        message = await buffer.receive()
        assert message is not None
        holding.add(number)
        await release.wait()  # a callback that waits on I/O

    workers = [asyncio.create_task(worker(n)) for n in range(5)]
    await wait_for(lambda: len(buffer._waiters) == 5)
    buffer.deliver(5)
    await wait_for(lambda: len(holding) == 5)
    assert not buffer._buffer
    release.set()
    await asyncio.gather(*workers)
    assert buffer._woken == 0


async def test_a_woken_worker_cancelled_before_it_runs_hands_the_delivery_on() -> None:
    buffer = Buffer()
    got: list[str] = []

    async def worker() -> None:
        message = await buffer.receive()
        assert message is not None
        got.append(message.message_id or "")

    first = asyncio.create_task(worker())
    second = asyncio.create_task(worker())
    await wait_for(lambda: len(buffer._waiters) == 2)
    buffer.deliver(1)
    assert buffer._woken == 1
    first.cancel()  # woken (its future has a result) but not yet resumed
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 5)
    assert got == ["0"]
    assert buffer._woken == 0


async def test_wait_buffered_passes_the_wake_on() -> None:
    buffer = Buffer()
    seen = 0

    async def merger() -> None:
        nonlocal seen
        if await buffer.wait_buffered():
            seen += 1

    tasks = [asyncio.create_task(merger()) for _ in range(3)]
    await wait_for(lambda: len(buffer._waiters) == 3)
    buffer.deliver(1)
    # A waiter that takes nothing wakes the next: each sees the delivery still buffered.
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert seen == 3
    assert buffer._woken == 0
