"""The receiving half of `AmqpMessageProvider`: buffered deliveries, and the workers waiting for one."""

from __future__ import annotations

import asyncio
from collections import deque

from swarrow.message import Message

__all__ = ["DeliveryBuffer"]


class DeliveryBuffer:
    """A mixin over the provider's state (declared here for the type checker): the provider's reader
    appends to `_buffer` and calls `_wake_one`; workers take with `receive_nowait` / `receive`."""

    _buffer: deque[Message]
    _waiters: deque[asyncio.Future[None]]
    _wanted: bool

    @property
    def buffered(self) -> int:
        """Deliveries waiting for a worker."""
        return len(self._buffer)

    @property
    def delivering(self) -> bool:
        """True until `stop_consuming()`: deliveries may still arrive (across reconnects too)."""
        return self._wanted

    def receive_nowait(self) -> Message | None:
        """A buffered delivery, or None."""
        buffer = self._buffer
        return buffer.popleft() if buffer else None

    async def receive(self) -> Message | None:
        """Wait for a delivery; None once stopped or closed."""
        buffer = self._buffer
        while True:
            if buffer:
                return buffer.popleft()
            if not self._wanted:
                return None
            await self._park()

    async def wait_buffered(self) -> bool:
        """Wait until a delivery is buffered, without taking it (True), or until stopped (False).

        For a consumer merging several queues (`swarrow.multi_queue`): it waits on each and then takes
        from the queue it prefers.
        """
        buffer = self._buffer
        while not buffer:
            if not self._wanted:
                return False
            await self._park()
        return True

    async def _park(self) -> None:
        # One future per waiting worker, woken one per delivery: no thundering herd at high concurrency.
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # the wake-up meant for us goes to another worker
            raise

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release_waiters(self) -> None:
        """Wake every waiting worker (stopping: `receive` then returns None)."""
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
