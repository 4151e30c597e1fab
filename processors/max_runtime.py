"""Stop the worker after a wall-clock lifetime, even while the queue is idle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from time import monotonic

import anyio

from swarrow.control import ConsumerControl, current_control
from swarrow.message import Message
from swarrow.processor import Processor
from swarrow.validation import require_seconds

__all__ = ["MaxRuntimeProcessor"]

logger = logging.getLogger(__name__)


class MaxRuntimeProcessor:
    """Stop once `seconds` have passed since the consumer started (swarrot's MaxExecutionTime).

    A background task stops an idle consumer at the deadline; a busy one is told after the message
    that crossed it, once the inner layers (ack) returned, so nothing is redelivered (swarrot PR #228).
    `clock` (seconds, monotonic) and the watcher's `sleep` go together: tests inject a manual pair.
    """

    def __init__(
        self,
        inner: Processor,
        /,
        *,
        seconds: float,
        clock: Callable[[], float] = monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.inner = inner
        self.seconds = require_seconds("seconds", seconds)
        self.clock = clock
        self.sleep = sleep
        self._deadline = clock() + self.seconds

    @asynccontextmanager
    async def lifespan(self, control: ConsumerControl) -> AsyncIterator[None]:
        """Start the clock and watch the deadline while the consumer runs."""
        self._deadline = self.clock() + self.seconds
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, control)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _watch(self, control: ConsumerControl) -> None:
        while (left := self._deadline - self.clock()) > 0:
            await self.sleep(left)
        self._stop(control)

    def _stop(self, control: ConsumerControl | None) -> None:
        if control is not None and not control.stop_requested:
            logger.info(
                "max runtime of %gs reached: stopping", self.seconds, extra={"queue": control.queue_name}
            )
        if control is not None:
            control.stop("max_runtime", f"ran for the max runtime of {self.seconds:g}s")

    async def __call__(self, message: Message, /) -> bool:
        keep_going = await self.inner(message)
        if self.clock() < self._deadline:
            return keep_going
        control = current_control()
        self._stop(control)
        # Inside a consumer the stop goes through its control alone; used bare, False asks to stop.
        return keep_going if control is not None else False
