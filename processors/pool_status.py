"""Tell the `--workers` supervisor how this worker is doing, and stop if the supervisor is gone."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from processors._rss import RssReader
from swarrow.control import ConsumerControl
from swarrow.message import Message
from swarrow.pool.status import WorkerStatus, status_path, write_status
from swarrow.processor import Processor
from swarrow.provider import MessageProvider
from swarrow.validation import require_int, require_seconds

__all__ = ["PoolStatusProcessor"]

logger = logging.getLogger(__name__)


class PoolStatusProcessor:
    """Write this worker's status file (messages done, RSS, consuming, stop reason) for its supervisor.

    The file is rewritten every `interval` seconds, at once when consuming starts or stops (the
    supervisor's rolling restart waits for that), and a last time with the stop reason. A worker whose
    supervisor died (it was re-parented) stops gracefully instead of consuming unsupervised; give
    `supervisor` (its pid) so that a supervisor dead before this layer started is noticed too.
    Per message it only counts: the writing happens in the lifespan's background task.
    """

    def __init__(
        self,
        inner: Processor,
        /,
        *,
        directory: str | os.PathLike[str],
        slot: int,
        provider: MessageProvider | None = None,
        interval: float = 1.0,
        watch_parent: bool = True,
        supervisor: int | None = None,
    ) -> None:
        self.inner = inner
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(f"directory must be an existing directory, got {str(directory)!r}")
        self.slot = require_int("slot", slot, minimum=0)
        self.provider = provider
        self.interval = require_seconds("interval", interval)
        self.watch_parent = watch_parent
        # The supervisor's pid as it gave it; the parent seen at start-up may already be init's.
        self.supervisor = None if supervisor is None else require_int("supervisor", supervisor)
        self.messages_done = 0
        self._rss = RssReader()
        self._started_at = time.time()

    def _write(self, consuming: bool, control: ConsumerControl | None = None) -> None:
        reason = control.reason if control is not None else None
        write_status(
            self.directory,
            WorkerStatus(
                pid=os.getpid(),
                slot=self.slot,
                started_at=self._started_at,
                updated_at=time.time(),
                messages_done=self.messages_done,
                rss=self._rss.read(),
                consuming=consuming,
                stop_reason=None if control is None else (reason.code if reason else "crashed"),
                stop_detail=reason.detail if reason is not None else "",
            ),
        )

    def _consuming(self, control: ConsumerControl) -> bool:
        if control.stop_requested:
            return False
        return self.provider.is_consuming if self.provider is not None else True

    @asynccontextmanager
    async def lifespan(self, control: ConsumerControl) -> AsyncIterator[None]:
        """Report in the background for the whole run; the last report carries the stop reason."""
        self._started_at = time.time()
        self._rss.open()
        parent = os.getppid() if self.supervisor is None else self.supervisor
        self._write(False)
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(self._report, control, parent)
                try:
                    yield
                finally:
                    background.cancel_scope.cancel()
        finally:
            try:
                self._write(False, control)
            except OSError as exc:  # the supervisor may have removed its directory
                logger.warning("could not write the final pool status: %s", exc)
            self._rss.close()

    async def _report(self, control: ConsumerControl, parent: int) -> None:
        # A quarter of the interval between checks: a consuming flip is reported within ~interval/4.
        tick = self.interval / 4
        last_written = time.monotonic()
        was_consuming = False
        while True:
            now = time.monotonic()
            consuming = self._consuming(control)
            if consuming != was_consuming or now - last_written >= self.interval:
                try:
                    self._write(consuming)
                except OSError as exc:
                    logger.warning("could not write the pool status to %s: %s", self.directory, exc)
                last_written, was_consuming = now, consuming
            if self.watch_parent and os.getppid() != parent and not control.stop_requested:
                logger.error(
                    "the pool supervisor (pid %d) is gone: stopping this worker",
                    parent,
                    extra={"queue": control.queue_name},
                )
                control.stop("supervisor_gone", f"supervisor pid {parent} exited")
            await anyio.sleep(tick)

    async def __call__(self, message: Message, /) -> bool:
        try:
            return await self.inner(message)
        finally:
            self.messages_done += 1

    def status_file(self) -> Path:
        """Where this worker's status goes."""
        return status_path(self.directory, os.getpid())
