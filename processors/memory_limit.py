"""Stop the worker once its resident memory reaches a limit, so a leaking callback gets a fresh process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import monotonic

from processors._rss import RssReader
from swarrow.control import ConsumerControl, current_control
from swarrow.errors import ConfigurationError
from swarrow.message import Message
from swarrow.processor import Processor
from swarrow.validation import require_positive, require_seconds

__all__ = ["MemoryLimitProcessor"]

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024


class MemoryLimitProcessor:
    """After each finished message, stop if the process RSS is at or over `megabytes` MiB.

    RSS comes from /proc/self/statm (one `pread`, ~0.7 µs); without /proc it is the peak RSS from
    `getrusage`. It is read after a message at most every `check_interval` seconds (10 ms): at
    thousands of messages a second a read per message was 4% of the worker's time, and RSS cannot
    overshoot by more than what 10 ms of processing allocates. Not checked when the inner layers raise
    (the exception decides), nor while idle (an idle worker does not grow).
    """

    def __init__(self, inner: Processor, /, *, megabytes: float, check_interval: float = 0.01) -> None:
        require_positive("megabytes", megabytes, unit="MiB")
        self.check_interval = require_seconds("check_interval", check_interval, allow_zero=True)
        self.inner = inner
        self.megabytes = megabytes
        self._next_check = 0.0
        self.limit_bytes = int(megabytes * _MIB)
        self._reader = RssReader()
        self._read = self._reader.read

    @asynccontextmanager
    async def lifespan(self, control: ConsumerControl) -> AsyncIterator[None]:
        """Open the RSS source in the consuming process; refuse a limit the process is already over."""
        self._reader.open()
        rss = self._read()
        if rss >= self.limit_bytes:
            self._reader.close()
            # Accepted, it would stop the worker after its first message, and a supervisor would spin on it.
            raise ConfigurationError(
                f"memory limit {self.megabytes:g} MiB is at or below the process's current RSS "
                f"({rss / _MIB:.1f} MiB) before any message: it would stop after the first one; "
                "give a higher limit"
            )
        try:
            yield
        finally:
            self._reader.close()

    async def __call__(self, message: Message, /) -> bool:
        keep_going = await self.inner(message)
        now = monotonic()
        if now < self._next_check:
            return keep_going
        self._next_check = now + self.check_interval
        rss = self._read()
        if rss < self.limit_bytes:
            return keep_going
        detail = f"RSS {rss / _MIB:.1f} MiB >= limit {self.megabytes:g} MiB"
        logger.warning(
            "memory limit reached (%s): stopping",
            detail,
            extra={"queue": message.queue, "message_id": message.message_id},
        )
        if (control := current_control()) is not None:
            control.stop("memory_limit", detail)
        return False
