"""A clock that moves only when the test says so, for processors taking `clock=` and `sleep=`.

`clock` is the `clock=` callable, `clock.sleep` the `sleep=` one: a sleeper wakes when `advance()`
carries the time past its due moment, so a test of a 60 s deadline takes no real time at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel

from swarrow.consumer import Consumer
from swarrow.control import StopReason


class ManualClock:
    """Monotonic seconds from `start`, moved by `advance()` only."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Return once the time reached now + `seconds` (a checkpoint if that is not in the future)."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        woken = anyio.Event()
        self._sleepers.append((self.now + seconds, woken))
        await woken.wait()

    async def advance(self, seconds: float) -> None:
        """Move the time on, wake the sleepers now due, and let every task run until all are blocked."""
        self.now += seconds
        due = [entry for entry in self._sleepers if entry[0] <= self.now]
        self._sleepers = [entry for entry in self._sleepers if entry[0] > self.now]
        for _, woken in due:
            woken.set()
        await anyio.wait_all_tasks_blocked()


@asynccontextmanager
async def consuming(consumer: Consumer) -> AsyncIterator[list[StopReason]]:
    """Run `consumer` in the background; the list gets its stop reason once it stopped.

    Leaving the block waits (at most 3 s) for the consumer to stop.
    """
    stopped: list[StopReason] = []

    async def run() -> None:
        stopped.append(await consumer.run())

    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await anyio.wait_all_tasks_blocked()
            yield stopped
