"""Record what became of each job in a database, best-effort: tracking never holds back a message or ack."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from time import perf_counter
from typing import ClassVar, Final
from uuid import uuid4

import anyio
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from processors._rss import RssReader
from swarrow.control import ConsumerControl
from swarrow.jobs.model import (
    DEAD_LETTERED,
    EXPIRED,
    FAILED,
    JOB_ID_HEADER,
    MAX_ERROR_MESSAGE,
    MAX_JOB_ID,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    JobRecord,
)
from swarrow.jobs.store import JobStore
from swarrow.message import Message
from swarrow.outcome import get_error, get_outcome, reset_error, reset_outcome
from swarrow.processor import Processor
from swarrow.topology import RETRY_ATTEMPT_HEADER, header_count, qualified_name
from swarrow.validation import require_int, require_seconds

__all__ = ["JobTrackerProcessor"]

logger = logging.getLogger(__name__)

_MAX_WRITE: Final = 5_000  # records per write: a long outage's backlog goes out in pieces
_MAX_TRIES: Final = 3  # then a batch is dropped: a record the database refuses must not stall tracking
# What the settling layers recorded → the job's state. No outcome (no ack layer) after a return: succeeded.
_STATE_AFTER_RETURN: Final = {
    "acked": SUCCEEDED,
    "retried": RETRYING,
    "requeued": RETRYING,
    "dead_lettered": DEAD_LETTERED,
    "expired": EXPIRED,
    "rejected": FAILED,
    "failed": FAILED,
    None: SUCCEEDED,
}


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


class JobTrackerProcessor:
    """Write a record per job step (running, then its outcome) to `store`, batched off the hot path.

    The job id is the AMQP `message_id`; a message without one gets a generated id in the
    `x-swarrow-job-id` header, which retry and dead-letter copies carry, so one job keeps one id.
    The state comes from the outcome the settling layers recorded (acked → succeeded, retried or
    requeued → retrying, dead_lettered, rejected or failed → failed); place it outside ack.

    Per message it only appends two tuples to a list (RSS read at most once per ms); a lifespan task
    writes the list every `flush_interval` seconds (SQLite: in a worker thread). The buffer holds
    `buffer_size` records: when it is full or the store is down, records are dropped, counted in
    `swarrow_job_records_dropped_total` and logged — messages and acks never wait for the database.
    A batch the store refused is tried 3 times, then dropped; writing resumes once the store answers.
    A URL is opened and closed by the layer; a `JobStore` passed in is connected but left open.
    """

    def __init__(
        self,
        inner: Processor,
        /,
        *,
        store: str | JobStore,
        buffer_size: int = 50_000,
        flush_interval: float = 0.1,
        close_timeout: float = 5.0,
        write_timeout: float = 10.0,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        require_int("buffer_size", buffer_size)
        self.flush_interval = require_seconds("flush_interval", flush_interval)
        self.close_timeout = require_seconds("close_timeout", close_timeout)
        self.write_timeout = require_seconds("write_timeout", write_timeout)
        if not isinstance(store, JobStore | str):
            raise ValueError(f"store must be a job store URL or a JobStore, got {store!r}")
        self.inner = inner
        self.store = JobStore.open(store) if isinstance(store, str) else store
        self._owns_store = isinstance(store, str)  # a JobStore given to us is the caller's to close
        self.buffer_size = buffer_size
        self.clock = clock
        self._metrics = _JobMetrics.for_registry(registry)
        self._buffer: list[JobRecord] = []
        self._pending: list[JobRecord] = []
        self._tries = 0
        self._dropped = 0  # by the hot path, since the last flush
        self._dropped_total = 0
        self._dropping = False
        self._store_down = False
        self._connected = False
        self._rss = RssReader()
        self._rss_value = 0
        self._rss_at = -1.0
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._queue = ""
        self._write_scope: anyio.CancelScope | None = None

    @property
    def dropped_total(self) -> int:
        """Records this layer dropped so far (what it added to `swarrow_job_records_dropped_total`)."""
        self._push_drops()
        return self._dropped_total

    @asynccontextmanager
    async def lifespan(self, control: ConsumerControl) -> AsyncIterator[None]:
        """Write batches in the background; at the end, write what is left (bounded by `close_timeout`)."""
        self._queue = control.queue_name
        self._pid = os.getpid()  # a pool worker is a fork or a fresh process: its own pid
        self._rss.open()
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(self._flush_forever)
                try:
                    yield
                finally:
                    scope = self._write_scope  # a write in progress gets close_timeout, not write_timeout
                    if scope is not None:
                        scope.deadline = min(scope.deadline, anyio.current_time() + self.close_timeout)
                    background.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                deadline = anyio.current_time() + self.close_timeout
                while self._pending or self._buffer:
                    left_s = deadline - anyio.current_time()
                    if left_s <= 0 or (not await self._flush_once(left_s) and self._tries == 0):
                        break  # out of time, or the store is down: what is left is dropped below
                left = len(self._pending) + len(self._buffer)
                if left:
                    self._drop_batch(left, "the consumer stopped")
                self._push_drops()
                if self._owns_store:
                    with anyio.move_on_after(self.close_timeout):
                        await self.store.close()
                self._rss.close()

    async def _flush_forever(self) -> None:
        while True:
            await anyio.sleep(self.flush_interval)
            while await self._flush_once(self.write_timeout) and len(self._buffer) >= _MAX_WRITE:
                pass  # a backlog: keep writing
            if self._store_down:
                # Back off while the store is away: 0.25 s, 0.5 s … 5 s between attempts.
                await anyio.sleep(min(5.0, 0.25 * 2 ** min(self._tries, 5)))

    async def _flush_once(self, timeout: float) -> bool:
        """Write the pending batch (or take one from the buffer) within `timeout`; True once it is written.

        Shielded: a stop never cuts a write in the middle (the deadline does, and the store then drops
        its connection rather than reuse one left inside a transaction).
        """
        self._push_drops()
        if not self._pending:
            if not self._buffer:
                return True
            batch, self._buffer = self._buffer, []
            if len(batch) > _MAX_WRITE:
                batch, self._buffer = batch[:_MAX_WRITE], batch[_MAX_WRITE:] + self._buffer
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
            if self._dropping and len(self._buffer) < self.buffer_size:
                self._dropping = False
                logger.warning(
                    "job record buffer has room again; %d record(s) were dropped", dropped,
                    extra={"queue": self._queue},
                )  # fmt: skip

    def _buffer_full(self) -> None:
        self._dropped += 1
        if not self._dropping:
            self._dropping = True
            logger.error(
                "job record buffer full (%d records, job store %s); dropping records, messages keep flowing",
                self.buffer_size,
                self.store.url,
                extra={"queue": self._queue},
            )

    async def __call__(self, message: Message, /) -> bool:
        job_id = message.message_id
        headers = message.headers
        if not job_id:
            header = headers.get(JOB_ID_HEADER) if headers else None
            if isinstance(header, str) and 0 < len(header) <= MAX_JOB_ID:
                job_id = header
            else:
                job_id = uuid4().hex
                message = message.replace(headers={**headers, JOB_ID_HEADER: job_id})
        attempt = (header_count(headers.get(RETRY_ATTEMPT_HEADER)) or 0) + 1 if headers else 1
        queue = message.queue
        started = self.clock()
        t0 = perf_counter()
        rss_before = self._memory(t0)
        buffer = self._buffer
        if len(buffer) < self.buffer_size:
            buffer.append(
                JobRecord(job_id, queue, RUNNING, attempt, started, started, None, None, self._host,
                          self._pid, rss_before, None, None, None)
            )  # fmt: skip
        else:
            self._buffer_full()
        reset_outcome()
        reset_error()
        try:
            keep_going = await self.inner(message)
        except Exception as exc:
            outcome = get_outcome()
            state = RETRYING if outcome == "requeued" else FAILED
            error = get_error() or (qualified_name(exc), str(exc)[:MAX_ERROR_MESSAGE])
            self._finish(job_id, queue, state, attempt, started, t0, rss_before, error)
            raise
        state = _STATE_AFTER_RETURN.get(get_outcome(), SUCCEEDED)
        self._finish(job_id, queue, state, attempt, started, t0, rss_before, get_error())
        return keep_going

    def _memory(self, now: float) -> int:
        # One read per millisecond at most (~0.7 µs each): a fast job's before and after share a reading,
        # a job that runs longer than that gets its own.
        if now - self._rss_at >= 0.001:
            self._rss_value = self._rss.read()
            self._rss_at = now
        return self._rss_value

    def _finish(
        self,
        job_id: str,
        queue: str,
        state: str,
        attempt: int,
        started: float,
        t0: float,
        rss_before: int,
        error: tuple[str, str] | None,
    ) -> None:
        end = perf_counter()
        duration = end - t0
        buffer = self._buffer  # the flusher may have swapped it while the message ran
        if len(buffer) < self.buffer_size:
            error_type, error_message = error if error is not None else (None, None)
            buffer.append(
                JobRecord(job_id, queue, state, attempt, started, started, self.clock(), duration,
                          self._host, self._pid, rss_before, self._memory(end), error_type, error_message)
            )  # fmt: skip
        else:
            self._buffer_full()
