"""Job records on their way to the store: a bounded buffer, written in batches by a background task.

The job tracker appends to `JobRecorder.buffer` on the hot path and nothing else; everything that may
wait (connecting, writing, retrying, backing off) happens here, in the consumer's lifespan. When the
buffer is full or the store is down, records are dropped and counted — never a message held back.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import ClassVar, Final

import anyio
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from swarrow.backoff import Backoff
from swarrow.jobs.model import JobRecord
from swarrow.jobs.store import JobStore

__all__ = ["JobRecorder"]

logger = logging.getLogger(__name__)

_MAX_WRITE: Final = 5_000  # records per write: a long outage's backlog goes out in pieces
_MAX_TRIES: Final = 3  # then a batch is dropped: a record the database refuses must not stall tracking
_STORE_BACKOFF: Final = Backoff(initial=0.25, maximum=5.0)


class _JobMetrics:
    """The tracker's counters, one set per registry (a family can be registered once)."""

    _shared: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, _JobMetrics]] = weakref.WeakKeyDictionary()
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.dropped = Counter(
            "swarrow_job_records_dropped",
            "Job-tracking records dropped because the buffer was full or the job store was unreachable.",
            ["queue"],
            registry=registry,
        )
        self.written = Counter(
            "swarrow_job_records_written",
            "Job-tracking records written to the job store (several steps of one job may be merged).",
            ["queue"],
            registry=registry,
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None) -> _JobMetrics:
        key = REGISTRY if registry is None else registry
        with cls._lock:
            metrics = cls._shared.get(key)
            if metrics is None:
                metrics = cls._shared[key] = cls(key)
            return metrics


class JobRecorder:
    """Writes `buffer` to `store` every `flush_interval` s while `running(queue)`; counts what it drops.

    A batch that fails is tried `3` times (backing off 0.25 s … 5 s while the store is down), then
    dropped; a write in progress is never cut by a stop, only by `write_timeout` (or `close_timeout`
    once the consumer stops). `close_store`: close the store when done (a URL the tracker opened).
    """

    def __init__(
        self,
        store: JobStore,
        *,
        buffer_size: int,
        flush_interval: float,
        close_timeout: float,
        write_timeout: float,
        registry: CollectorRegistry | None = None,
        close_store: bool = True,
    ) -> None:
        self.store = store
        self.buffer_size = buffer_size
        self.flush_interval = flush_interval
        self.close_timeout = close_timeout
        self.write_timeout = write_timeout
        self.close_store = close_store
        self.buffer: list[JobRecord] = []  # the hot path appends here (and checks its length first)
        self._metrics = _JobMetrics.for_registry(registry)
        self._pending: list[JobRecord] = []
        self._tries = 0
        self._dropped = 0  # by the hot path, since the last flush
        self._dropped_total = 0
        self._dropping = False
        self._store_down = False
        self._connected = False
        self._queue = ""
        self._write_scope: anyio.CancelScope | None = None

    @property
    def dropped_total(self) -> int:
        """Records dropped so far (what this recorder added to `swarrow_job_records_dropped_total`)."""
        self._push_drops()
        return self._dropped_total

    @asynccontextmanager
    async def running(self, queue: str) -> AsyncIterator[None]:
        """Write batches in the background; at the end, write what is left (bounded by `close_timeout`)."""
        self._queue = queue
        deadline = math.inf  # set once the consumer stops: close_timeout bounds the whole closing
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(self._flush_forever)
                try:
                    yield
                finally:
                    deadline = anyio.current_time() + self.close_timeout
                    scope = self._write_scope  # a write in progress gets what is left of close_timeout
                    if scope is not None:
                        scope.deadline = min(scope.deadline, deadline)
                    background.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                deadline = min(deadline, anyio.current_time() + self.close_timeout)
                while self._pending or self.buffer:
                    left_s = deadline - anyio.current_time()
                    if left_s <= 0 or (not await self._flush_once(left_s) and self._tries == 0):
                        break  # out of time, or the store is down: what is left is dropped below
                left = len(self._pending) + len(self.buffer)
                if left:
                    self._drop_batch(left, "the consumer stopped")
                self._push_drops()
                if self.close_store:
                    with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                        await self.store.close()

    async def _flush_forever(self) -> None:
        while True:
            await anyio.sleep(self.flush_interval)
            while await self._flush_once(self.write_timeout) and len(self.buffer) >= _MAX_WRITE:
                pass  # a backlog: keep writing
            if self._store_down:
                # Back off while the store is away: 0.25 s, 0.5 s … 5 s between attempts.
                await anyio.sleep(_STORE_BACKOFF.delay(self._tries + 1))

    async def _flush_once(self, timeout: float) -> bool:
        """Write the pending batch (or take one from the buffer) within `timeout`; True once it is written.

        Shielded: a stop never cuts a write in the middle (the deadline does, and the store then drops
        its connection rather than reuse one left inside a transaction).
        """
        self._push_drops()
        if not self._pending:
            if not self.buffer:
                return True
            batch, self.buffer = self.buffer, []
            if len(batch) > _MAX_WRITE:
                batch, self.buffer = batch[:_MAX_WRITE], batch[_MAX_WRITE:] + self.buffer
            self._pending, self._tries = batch, 0
        error: Exception | None = None
        with anyio.CancelScope(shield=True), anyio.move_on_after(timeout) as deadline:
            self._write_scope = deadline
            try:
                if not self._connected:
                    await self.store.connect()
                    self._connected = True
                await self.store.write(self._pending)
            except Exception as exc:
                error = exc
            finally:
                self._write_scope = None
        if deadline.cancelled_caught:
            error = TimeoutError(f"no answer within {timeout:.1f}s")
        if error is not None:
            self._tries += 1
            if not self._store_down:
                self._store_down = True
                logger.error(
                    "job store %s failed (%s); buffering up to %d job records, then dropping them "
                    "(messages keep flowing)",
                    self.store.url,
                    error,
                    self.buffer_size,
                    extra={"queue": self._queue},
                )
            if self._tries >= _MAX_TRIES:
                self._drop_batch(len(self._pending), "the job store failed 3 times in a row")
                self._pending, self._tries = [], 0
            self._connected = False  # connect again (asyncpg reconnects; SQLite reopens nothing)
            return False
        self._metrics.written.labels(queue=self._queue).inc(len(self._pending))
        self._pending, self._tries = [], 0
        if self._store_down:
            self._store_down = False
            logger.warning(
                "job store %s is back; tracking resumes", self.store.url, extra={"queue": self._queue}
            )
        return True

    def _drop_batch(self, count: int, why: str) -> None:
        self._dropped_total += count
        self._metrics.dropped.labels(queue=self._queue).inc(count)
        logger.warning("dropped %d job record(s): %s", count, why, extra={"queue": self._queue})

    def _push_drops(self) -> None:
        dropped = self._dropped
        if dropped:
            self._dropped = 0
            self._dropped_total += dropped
            self._metrics.dropped.labels(queue=self._queue).inc(dropped)
            if self._dropping and len(self.buffer) < self.buffer_size:
                self._dropping = False
                logger.warning(
                    "job record buffer has room again; %d record(s) were dropped", dropped,
                    extra={"queue": self._queue},
                )  # fmt: skip

    def full(self) -> None:
        """Count one record the hot path could not buffer (logged once until there is room again)."""
        self._dropped += 1
        if not self._dropping:
            self._dropping = True
            logger.error(
                "job record buffer full (%d records, job store %s); dropping records, messages keep flowing",
                self.buffer_size,
                self.store.url,
                extra={"queue": self._queue},
            )
