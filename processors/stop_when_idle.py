"""Drain the queue and exit: stop once no message arrived for a while (swarrot's Insomniac)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

from swarrow.control import ConsumerControl
from swarrow.message import Message
from swarrow.processor import Processor
from swarrow.validation import require_seconds

__all__ = ["StopWhenIdleProcessor"]

logger = logging.getLogger(__name__)


class StopWhenIdleProcessor:
    """Stop gracefully when nothing is in flight and no message started or finished for `seconds`.

    For batch jobs and cron-style workers: consume what is there, then exit 0. `clock` (seconds,
    monotonic) and the watcher's `sleep` go together: tests inject a manual pair.
    """

    def __init__(
        self,
        inner: Processor,
        /,
        *,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.inner = inner
        self.seconds = require_seconds("seconds", seconds)
        self.clock = clock
        self.sleep = sleep
        self._last_activity = clock()

    @asynccontextmanager
    async def lifespan(self, control: ConsumerControl) -> AsyncIterator[None]:
        """Watch for idleness while the consumer runs."""
        self._last_activity = self.clock()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, control)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _watch(self, control: ConsumerControl) -> None:
        seconds = self.seconds
        while True:
            idle_for = self.clock() - self._last_activity
            if idle_for >= seconds and control.in_flight == 0:
                break
            # Wake exactly when the idle period would end; a message in flight pushes it back.
            await self.sleep(seconds - idle_for if idle_for < seconds else seconds)
        logger.info("no message for %gs: stopping", seconds, extra={"queue": control.queue_name})
        control.stop("idle", f"no message for {seconds:g}s")

    async def __call__(self, message: Message, /) -> bool:
        self._last_activity = self.clock()
        try:
            return await self.inner(message)
        finally:
            self._last_activity = self.clock()
