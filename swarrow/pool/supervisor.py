"""`WorkerPool`: the supervisor that keeps N worker processes consuming.

Each worker is a full `swarrow consume` process with its own connection. What a slot does once its
worker exited (restart now, after a backoff, or stop the pool) is `restarts`; spawning is `spawn`; the
rolling restart is `rolling`; the endpoint is `http` and `snapshot`. SIGTERM/SIGINT drain every worker,
a second one stops them now; SIGHUP replaces them one at a time without ever dropping below N consuming.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import anyio
from anyio.abc import TaskGroup, TaskStatus

from swarrow.backoff import Backoff
from swarrow.exits import EXIT_CRASH, EXIT_OK
from swarrow.health import HealthState
from swarrow.pool.directories import create_locked_directory, metrics_directory, remove_abandoned_directories
from swarrow.pool.exits import classify_exit
from swarrow.pool.http import PoolServer, start_pool_server
from swarrow.pool.restarts import after_exit, after_spawn_error
from swarrow.pool.rolling import roll
from swarrow.pool.slots import Slot, Worker
from swarrow.pool.snapshot import Snapshot, build_snapshot
from swarrow.pool.spawn import FATAL_SPAWN_ERRORS, open_worker_process, worker_env
from swarrow.pool.status import compact_dead_process, read_status, status_path
from swarrow.stop_signals import StopSignals, watch_closing
from swarrow.urls import mask_argv
from swarrow.validation import require_int, require_seconds

__all__ = ["WorkerPool"]

logger = logging.getLogger(__name__)

_REFRESH_INTERVAL: Final = 0.25


class WorkerPool:
    """Keeps `workers` processes running `command`, recycles them, and serves one endpoint for all.

    `command` is a full argv (normally `sys.executable -m swarrow consume …`). Each worker gets
    `SWARROW_POOL_WORKER` (its slot), `SWARROW_POOL_DIR` (where it writes its status file) and
    `SWARROW_POOL_SUPERVISOR` (this pid, which it must never outlive) in its environment. With
    `metrics_address`, workers also get `PROMETHEUS_MULTIPROC_DIR` (where their
    metric values go) and the supervisor serves `/metrics` (every worker, summed, dead ones included),
    `/healthz`, `/readyz` and `/status` (JSON) there. `run()` returns the pool's exit code.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        workers: int,
        metrics_address: tuple[str, int] | None = None,
        grace_period: float = 30.0,
        kill_after: float = 10.0,
        backoff: Backoff | None = None,
        ready_timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        if not command:
            raise ValueError("command must not be empty")
        self.command = list(command)
        self.workers = require_int("workers", workers)
        self.metrics_address = metrics_address
        self.grace_period = require_seconds("grace_period", grace_period, allow_zero=True)
        self.kill_after = require_seconds("kill_after", kill_after)
        self.backoff = Backoff() if backoff is None else backoff
        self.ready_timeout = require_seconds("ready_timeout", ready_timeout)
        self.env = dict(os.environ if env is None else env)
        self._given_directory = None if directory is None else Path(directory)
        self._owns_directory = directory is None
        self.directory = Path()
        self.status_dir = Path()
        self.metrics_dir = Path()
        self.slots = [Slot(index) for index in range(workers)]
        self.restarts: Tally[str] = Tally()
        self.exit_code = EXIT_OK
        self.generation = 0
        self._stop_signals = StopSignals()
        self.snapshot = Snapshot({}, {}, 0, {})
        self.server: PoolServer | None = None
        self.health: HealthState | None = None
        self._live: dict[int, Worker] = {}
        self._stopping = False
        self._stop_event: anyio.Event | None = None
        self._changed = anyio.Event()
        self._rolling = False
        self._metrics_lock = threading.Lock()
        self._started = time.monotonic()
        self._workers_tg: TaskGroup | None = None
        self._tg: TaskGroup | None = None
        self._lock_fd: int | None = None
        # Set once any worker consumed: from then on a usage or import exit is backed off, not fatal.
        self.proven = False
        self.spawn_failures = 0

    @property
    def signals_received(self) -> int:
        """SIGTERM/SIGINT received so far (SIGHUP is a rolling restart, not counted)."""
        return self._stop_signals.received

    @property
    def stopping(self) -> bool:
        """True once the pool is draining its workers to exit."""
        return self._stopping

    # -- running ---------------------------------------------------------------------------------

    def run_sync(self) -> int:
        """Run the pool until it stops; return its exit code."""
        return anyio.run(self.run, backend="asyncio")

    async def run(self) -> int:
        """Run the pool until it stops; return its exit code."""
        self._prepare_directories()
        self._stop_event = anyio.Event()
        try:
            self.refresh()  # /status is whole from the first request, not `{}` until a worker starts
            self._start_server()
            logger.info("starting a pool of %d workers: %s", self.workers, " ".join(mask_argv(self.command)))
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await tg.start(self._watch_signals)
                tg.start_soon(self._refresh_forever)
                async with anyio.create_task_group() as workers_tg:
                    self._workers_tg = workers_tg
                    for slot in self.slots:
                        workers_tg.start_soon(self._keep_alive, slot)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for worker in list(self._live.values()):  # only if something above failed
                    worker.signal(signal.SIGKILL)
                    await worker.process.wait()
            if self.server is not None:
                self.server.stop()
            self._remove_directories()
        logger.info("pool stopped (exit code %d)", self.exit_code)
        return self.exit_code

    def _prepare_directories(self) -> None:
        base = self._given_directory
        if base is None:
            remove_abandoned_directories()
            self.directory, self._lock_fd = create_locked_directory()
        else:
            self.directory = base
        self.status_dir = self.directory / "status"
        self.status_dir.mkdir(parents=True, exist_ok=True)
        if self.metrics_address is not None:  # else workers keep metrics off: an unread directory grows
            self.metrics_dir = metrics_directory(self.directory, self.env)

    def _remove_directories(self) -> None:
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _start_server(self) -> None:
        if self.metrics_address is None:
            return
        self.server, self.health = start_pool_server(
            self.metrics_address,
            metrics_dir=self.metrics_dir,
            metrics_lock=self._metrics_lock,
            snapshot=lambda: self.snapshot,
            desired=self.workers,
        )
        logger.info("pool status (JSON) on http://%s/status", self.server.address)

    # -- one slot -------------------------------------------------------------------------------

    async def _keep_alive(self, slot: Slot) -> None:
        """Keep one worker alive in `slot` until the pool stops."""
        worker = await self._start(slot, restart_reason=None)
        while worker is not None:
            await worker.exited.wait()
            if slot.current is not worker and slot.current is not None:
                worker = slot.current  # swapped by a rolling restart: watch the newcomer
                continue
            incoming = slot.incoming
            if incoming is not None and incoming.exit is None:
                # The worker recycled itself while its rolling replacement was warming up: adopt it.
                slot.current, slot.incoming, worker = incoming, None, incoming
                continue
            slot.current = None
            info = worker.exit
            if info is None:
                raise RuntimeError("internal state: info is unset here")
            if not self._stopping:
                self.proven = self.proven or info.messages_done > 0
            step = after_exit(slot, info, stopping=self._stopping, proven=self.proven, backoff=self.backoff)
            if step.stop_pool:
                self._begin_stop(exit_code=info.code)
            if not step.restart:
                return
            if step.delay > 0 and not await self._back_off(slot, step.delay):
                return
            worker = await self._start(slot, restart_reason=info.reason)

    async def _back_off(self, slot: Slot, delay: float) -> bool:
        """Wait `delay` before the slot's next start; False if the pool began to stop meanwhile."""
        slot.restart_at = time.monotonic() + delay
        self.refresh()
        if self._stop_event is None:
            raise RuntimeError("internal state: self._stop_event is unset here")
        with anyio.move_on_after(delay):
            await self._stop_event.wait()
        slot.restart_at = None
        return not self.stopping

    async def _start(self, slot: Slot, *, restart_reason: str | None) -> Worker | None:
        """Spawn the slot's worker, retrying with the backoff while the system refuses (EAGAIN …)."""
        while True:
            try:
                return await self._spawn(slot, restart_reason=restart_reason)
            except OSError as exc:
                delay = after_spawn_error(slot, exc, program=self.command[0], backoff=self.backoff)
                if not await self._back_off(slot, delay):
                    return None

    async def _spawn(
        self, slot: Slot, *, restart_reason: str | None, incoming: bool = False
    ) -> Worker | None:
        """Start a worker for `slot` (as its current one, or as a rolling replacement)."""
        metrics_dir = None if self.metrics_address is None else self.metrics_dir
        env = worker_env(self.env, slot=slot.index, status_dir=self.status_dir, metrics_dir=metrics_dir)
        try:
            process = await open_worker_process(self.command, env)
        except OSError as exc:
            self.spawn_failures += 1
            self.refresh()
            if self.proven or exc.errno not in FATAL_SPAWN_ERRORS:
                raise  # passing (EAGAIN, ENOMEM, a program replaced mid-deploy): the caller backs off
            logger.error("cannot start a worker (%s): %s", self.command[0], exc.strerror or exc)
            self._begin_stop(exit_code=EXIT_CRASH)
            return None
        worker = Worker(slot, process, self.generation)
        self._live[worker.pid] = worker
        if incoming:
            slot.incoming = worker
        else:
            slot.current = worker
        if restart_reason is not None:
            slot.restarts += 1
            self.restarts[restart_reason] += 1
        logger.info(
            "worker %d started (pid %d)%s",
            slot.index,
            worker.pid,
            f" to replace one ({restart_reason})" if restart_reason else "",
            extra={"worker": slot.index, "pid": worker.pid},
        )
        if self._workers_tg is None:
            raise RuntimeError("internal state: self._workers_tg is unset here")
        self._workers_tg.start_soon(self._reap, worker)
        if self._stopping:  # a stop raced the spawn
            worker.terminate()
        self.refresh()
        return worker

    async def _reap(self, worker: Worker) -> None:
        code = await worker.process.wait()
        await worker.process.aclose()
        pid = worker.pid
        status = read_status(self.status_dir, pid) or worker.status
        info = classify_exit(pid, code, status, uptime=time.monotonic() - worker.started)
        worker.exit = info
        worker.status = status
        slot = worker.slot
        slot.last_exit = info
        slot.history.append(info)
        del slot.history[:-20]
        del self._live[pid]
        if self.metrics_address is not None:
            try:
                await anyio.to_thread.run_sync(
                    compact_dead_process, self.metrics_dir, pid, self._metrics_lock
                )
            except Exception:  # bookkeeping only: a stale file must not take the pool down
                logger.exception("could not fold the metric files of worker pid %d", pid)
        status_path(self.status_dir, pid).unlink(missing_ok=True)
        worker.exited.set()
        self.refresh()

    # -- signals and stopping ----------------------------------------------------------------------

    async def _watch_signals(self, *, task_status: TaskStatus[None]) -> None:
        watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        with anyio.open_signal_receiver(*watched) as received:
            try:
                task_status.started()
                async for signum in received:
                    if signum == signal.SIGHUP:
                        self.rolling_restart(signal.Signals(signum).name)
                        continue
                    name, now = self._stop_signals.receive(signum)
                    if not now:
                        logger.warning(
                            "%s received: draining every worker, then stopping (send it again to stop now)",
                            name,
                        )
                        self._begin_stop(exit_code=EXIT_OK)
                    else:
                        logger.warning(
                            "%s received again: stopping every worker now; their in-flight messages will be "
                            "redelivered",
                            name,
                        )
                        self._stop_now()
            finally:
                watch_closing(watched)

    def rolling_restart(self, why: str = "requested") -> None:
        """Replace every worker, one at a time, each only once its replacement consumes (SIGHUP)."""
        if self._stopping:
            logger.info("%s ignored: the pool is stopping", why)
            return
        self.generation += 1
        if self._rolling:
            logger.info(
                "%s: the rolling restart in progress will also replace workers started before now", why
            )
            return
        logger.warning("%s: rolling restart of %d workers", why, self.workers)
        if self._workers_tg is None:
            raise RuntimeError("internal state: self._workers_tg is unset here")
        self._rolling = True
        self._workers_tg.start_soon(self._rolling_restart)

    async def _rolling_restart(self) -> None:
        try:
            await roll(self)
        finally:
            self._rolling = False
            self.refresh()

    async def spawn_replacement(self, slot: Slot) -> Worker | None:
        """Start a rolling replacement for `slot` (its incoming worker, swapped in once it consumes)."""
        return await self._spawn(slot, restart_reason="rolling_restart", incoming=True)

    async def wait_changed(self) -> None:
        """Return at the next snapshot: a worker started, changed state or exited."""
        await self._changed.wait()

    def stop(self, *, now: bool = False) -> None:
        """Drain every worker and stop (`now`: stop them at once), as SIGTERM (twice) would."""
        if now:
            self._stop_now()
        else:
            self._begin_stop(exit_code=EXIT_OK)

    def _begin_stop(self, *, exit_code: int) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.exit_code = exit_code
        if self._stop_event is None:
            raise RuntimeError("internal state: self._stop_event is unset here")
        self._stop_event.set()
        for worker in list(self._live.values()):
            worker.terminate()
        if self._tg is None:
            raise RuntimeError("internal state: self._tg is unset here")
        self._tg.start_soon(self._kill_after, self.grace_period + self.kill_after)
        self.refresh()

    def _stop_now(self) -> None:
        if not self._stopping:
            self._begin_stop(exit_code=EXIT_OK)
        for worker in list(self._live.values()):
            if worker.terminations < 2:
                worker.terminate()
        if self._tg is None:
            raise RuntimeError("internal state: self._tg is unset here")
        self._tg.start_soon(self._kill_after, self.kill_after)

    async def _kill_after(self, seconds: float) -> None:
        await anyio.sleep(seconds)
        for worker in list(self._live.values()):
            logger.error(
                "worker %d (pid %d) still running after %.0fs: killing it",
                worker.slot.index,
                worker.pid,
                seconds,
            )
            worker.signal(signal.SIGKILL)

    # -- status -------------------------------------------------------------------------------------

    async def _refresh_forever(self) -> None:
        while True:
            for worker in list(self._live.values()):
                status = read_status(self.status_dir, worker.pid)
                if status is not None:
                    worker.status = status
            self.refresh()
            await anyio.sleep(_REFRESH_INTERVAL)

    def refresh(self) -> None:
        """Rebuild the snapshot the HTTP thread serves."""
        live = list(self._live.values())
        self.proven = self.proven or any(w.consuming for w in live)
        self.snapshot = build_snapshot(
            now=time.monotonic(),
            state="stopping" if self._stopping else "rolling_restart" if self._rolling else "running",
            started=self._started,
            desired=self.workers,
            generation=self.generation,
            slots=self.slots,
            live=live,
            restarts=self.restarts,
            spawn_failures=self.spawn_failures,
        )
        self._changed.set()
        self._changed = anyio.Event()
        if self.health is not None:
            self.health.beat()
