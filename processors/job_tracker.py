"""Record what became of each job in a database, best-effort: tracking never holds back a message or ack."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from time import perf_counter
from typing import Final
from uuid import uuid4

from prometheus_client import CollectorRegistry

from processors._rss import RssReader
from swarrow._dead_letter import REPLAY_COUNT_HEADER
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
from swarrow.jobs.recorder import JobRecorder
from swarrow.jobs.store import JobStore
from swarrow.message import Message
from swarrow.outcome import get_error, get_outcome, reset_error, reset_outcome
from swarrow.processor import Processor
from swarrow.swarrot import SWARROT_ATTEMPTS_HEADER
from swarrow.topology import RETRY_ATTEMPT_HEADER, header_count, qualified_name
from swarrow.validation import require_int, require_seconds

__all__ = ["JobTrackerProcessor"]

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
        if not isinstance(store, JobStore | str):
            raise ValueError(f"store must be a job store URL or a JobStore, got {store!r}")
        self.inner = inner
        self.store = JobStore.open(store) if isinstance(store, str) else store
        self.recorder = JobRecorder(
            self.store,
            buffer_size=buffer_size,
            flush_interval=require_seconds("flush_interval", flush_interval),
            close_timeout=require_seconds("close_timeout", close_timeout),
            write_timeout=require_seconds("write_timeout", write_timeout),
            registry=registry,
            close_store=isinstance(store, str),  # a JobStore given to us is the caller's to close
        )
        self.buffer_size = buffer_size
        self.clock = clock
        self._rss = RssReader()
        self._rss_value = 0
        self._rss_at = -1.0
        self._host = socket.gethostname()
        self._pid = os.getpid()

    @property
    def dropped_total(self) -> int:
        """Records this layer dropped so far (what it added to `swarrow_job_records_dropped_total`)."""
        return self.recorder.dropped_total

    @asynccontextmanager
    async def lifespan(self, control: ConsumerControl) -> AsyncIterator[None]:
        """Write batches in the background; at the end, write what is left (bounded by `close_timeout`)."""
        self._pid = os.getpid()  # a pool worker is a fork or a fresh process: its own pid
        self._rss.open()
        try:
            async with self.recorder.running(control.queue_name):
                yield
        finally:
            self._rss.close()

    async def __call__(self, message: Message, /) -> bool:
        headers = message.headers
        # The header first: a retry copy of an id-less message gets a random message_id from the
        # publishing client (aiormq), but it is still the job the header names.
        header = headers.get(JOB_ID_HEADER) if headers else None
        if isinstance(header, str) and 0 < len(header) <= MAX_JOB_ID:
            job_id = header
        elif message.message_id:
            job_id = message.message_id
        else:
            job_id = uuid4().hex
            message = message.replace(headers={**headers, JOB_ID_HEADER: job_id})
        if headers:
            # swarrot's header too: a PHP worker sharing the queue retries with that one alone.
            retries = header_count(headers.get(RETRY_ATTEMPT_HEADER)) or 0
            attempt = max(retries, header_count(headers.get(SWARROT_ATTEMPTS_HEADER)) or 0) + 1
            replays = header_count(headers.get(REPLAY_COUNT_HEADER)) or 0
        else:
            attempt, replays = 1, 0
        queue = message.queue
        started = self.clock()
        t0 = perf_counter()
        rss_before = self._memory(t0)
        buffer = self.recorder.buffer
        if len(buffer) < self.buffer_size:
            buffer.append(
                JobRecord(job_id, queue, RUNNING, attempt, started, started, None, None, self._host,
                          self._pid, rss_before, None, None, None, replays)
            )  # fmt: skip
        else:
            self.recorder.full()
        reset_outcome()
        reset_error()
        try:
            keep_going = await self.inner(message)
        except Exception as exc:
            outcome = get_outcome()
            state = RETRYING if outcome == "requeued" else FAILED
            error = get_error() or (qualified_name(exc), str(exc)[:MAX_ERROR_MESSAGE])
            self._finish(job_id, queue, state, attempt, replays, started, t0, rss_before, error)
            raise
        state = _STATE_AFTER_RETURN.get(get_outcome(), SUCCEEDED)
        self._finish(job_id, queue, state, attempt, replays, started, t0, rss_before, get_error())
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
        replays: int,
        started: float,
        t0: float,
        rss_before: int,
        error: tuple[str, str] | None,
    ) -> None:
        end = perf_counter()
        duration = end - t0
        buffer = self.recorder.buffer  # the recorder may have swapped it while the message ran
        if len(buffer) < self.buffer_size:
            error_type, error_message = error if error is not None else (None, None)
            buffer.append(
                JobRecord(job_id, queue, state, attempt, started, started, self.clock(), duration,
                          self._host, self._pid, rss_before, self._memory(end), error_type, error_message,
                          replays)
            )  # fmt: skip
        else:
            self.recorder.full()
