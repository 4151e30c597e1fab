"""`WorkerPool`: the supervisor that keeps N worker processes consuming.

Each worker is a full `swarrow consume` process with its own connection. A worker that stopped
gracefully (a limit reached: max messages, runtime, memory) is replaced at once; one that crashed is
replaced after an exponential backoff. A usage or import error stops the pool with its exit code only
at the first start, before any worker consumed (restarting cannot fix a typo); later it is a passing
condition (a queue deleted and re-declared, a deploy half done) and gets the backoff too, as does a
worker that cannot be spawned (EAGAIN). SIGTERM/SIGINT drain every worker, a second one stops them now;
SIGHUP replaces them one at a time (the deploy case) without ever dropping below N consuming.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup, TaskStatus
from prometheus_client import CollectorRegistry

from swarrow.backoff import Backoff
from swarrow.exits import EXIT_CRASH, EXIT_OK
from swarrow.health import HealthState
from swarrow.pool.directories import create_locked_directory, remove_abandoned_directories
from swarrow.pool.exits import classify_exit
from swarrow.pool.http import PoolCollector, PoolServer, Snapshot
from swarrow.pool.slots import Slot, Worker
from swarrow.pool.status import (
    MULTIPROC_DIR_ENV,
    POOL_DIR_ENV,
    POOL_WORKER_ENV,
    SUPERVISOR_ENV,
    LockedMultiProcessCollector,
    clean_multiproc_dir,
    compact_dead_process,
    read_status,
    status_path,
)
from swarrow.urls import mask_argv
from swarrow.validation import require_int, require_seconds

__all__ = ["WorkerPool"]

logger = logging.getLogger(__name__)

_REFRESH_INTERVAL: Final = 0.25
# Spawn errors that a retry cannot fix, at the first start: a missing or non-executable program.
_FATAL_SPAWN_ERRORS: Final = frozenset({errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR})


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
        self.signals_received = 0
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
            self._refresh()  # /status is whole from the first request, not `{}` until a worker starts
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
        if self.metrics_address is None:
            return  # no endpoint: workers keep their metrics off (an unread directory would only grow)
        given = self.env.get(MULTIPROC_DIR_ENV)
        self.metrics_dir = Path(given) if given else self.directory / "metrics"
        removed = clean_multiproc_dir(self.metrics_dir)
        if removed:
            logger.info("removed %d stale metric files from %s", removed, self.metrics_dir)

    def _remove_directories(self) -> None:
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _start_server(self) -> None:
        if self.metrics_address is None:
            return
        registry = CollectorRegistry(auto_describe=False)
        LockedMultiProcessCollector(self.metrics_dir, self._metrics_lock, registry)
        registry.register(PoolCollector(lambda: self.snapshot, self.workers))
        health = self.health = HealthState(stale_after=10.0, ready=lambda: self.snapshot.consuming > 0)
        health.beat()
        host, port = self.metrics_address
        self.server = PoolServer(
            host, port, registry=registry, health=health, status=lambda: self.snapshot.status
        )
        self.server.start()
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
            if self._stopping:
                logger.info(
                    "worker %d (pid %d) stopped after %d messages: %s",
                    slot.index,
                    info.pid,
                    info.messages_done,
                    info.reason,
                    extra={"worker": slot.index, "pid": info.pid},
                )
                return
            self.proven = self.proven or info.messages_done > 0
            if info.fatal and not self.proven:
                logger.error(
                    "worker %d (pid %d) failed (%s, exit code %d) at the first start: stopping the "
                    "pool, a restart would fail the same way",
                    slot.index,
                    info.pid,
                    info.reason.replace("_", " "),
                    info.code,
                    extra={"worker": slot.index, "pid": info.pid},
                )
                self._begin_stop(exit_code=info.code)
                return
            if info.graceful and info.reason == "idle":
                # --stop-when-idle in a pool is a batch job draining a queue: a slot whose worker found
                # nothing to do is finished, and the pool ends (exit 0) once every slot is.
                logger.info(
                    "worker %d (pid %d) stopped for idle after %d messages: not restarting it "
                    "(the pool ends once every worker stopped for idle)",
                    slot.index,
                    info.pid,
                    info.messages_done,
                    extra={"worker": slot.index, "pid": info.pid},
                )
                return
            delay = slot.after_exit(info, self.backoff)
            if delay > 0:
                logger.warning(
                    "worker %d (pid %d) exited after %.1fs: %s%s; restarting in %.3gs (failure %d in a row)",
                    slot.index,
                    info.pid,
                    info.uptime,
                    info.reason,
                    f" ({info.detail})" if info.detail else "",
                    delay,
                    slot.failures,
                    extra={"worker": slot.index, "pid": info.pid, "restart_delay": delay},
                )
                if not await self._back_off(slot, delay):
                    return
            else:
                logger.info(
                    "worker %d (pid %d) stopped after %d messages in %.1fs: %s; restarting it",
                    slot.index,
                    info.pid,
                    info.messages_done,
                    info.uptime,
                    info.reason,
                    extra={"worker": slot.index, "pid": info.pid},
                )
            worker = await self._start(slot, restart_reason=info.reason)

    async def _back_off(self, slot: Slot, delay: float) -> bool:
        """Wait `delay` before the slot's next start; False if the pool began to stop meanwhile."""
        slot.restart_at = time.monotonic() + delay
        self._refresh()
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
                slot.failures += 1
                delay = self.backoff.delay(slot.failures)
                logger.error(
                    "cannot start worker %d (%s): %s; retrying in %.3gs (failure %d in a row)",
                    slot.index,
                    self.command[0],
                    exc.strerror or exc,
                    delay,
                    slot.failures,
                    extra={"worker": slot.index, "restart_delay": delay},
                )
                if not await self._back_off(slot, delay):
                    return None

    async def _spawn(
        self, slot: Slot, *, restart_reason: str | None, incoming: bool = False
    ) -> Worker | None:
        """Start a worker for `slot` (as its current one, or as a rolling replacement)."""
        env = dict(self.env)
        env[POOL_WORKER_ENV] = str(slot.index)
        env[POOL_DIR_ENV] = str(self.status_dir)
        env[SUPERVISOR_ENV] = str(os.getpid())
        if self.metrics_address is not None:
            # Before the worker imports prometheus-client: its values then go to files we can sum.
            env[MULTIPROC_DIR_ENV] = str(self.metrics_dir)
        try:
            process = await anyio.open_process(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=None,
                stderr=None,
                env=env,
                # Its own session: a terminal's Ctrl-C reaches the supervisor only, which forwards it
                # once; otherwise every worker would see it twice and skip draining.
                start_new_session=True,
            )
        except OSError as exc:
            self.spawn_failures += 1
            self._refresh()
            if self.proven or exc.errno not in _FATAL_SPAWN_ERRORS:
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
        self._refresh()
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
        self._refresh()

    # -- signals and stopping ----------------------------------------------------------------------

    async def _watch_signals(self, *, task_status: TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
            task_status.started()
            async for signum in received:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    self.rolling_restart(name)
                    continue
                self.signals_received += 1
                if self.signals_received == 1:
                    logger.warning(
                        "%s received: draining every worker, then stopping (send it again to stop now)", name
                    )
                    self._begin_stop(exit_code=EXIT_OK)
                else:
                    logger.warning(
                        "%s received again: stopping every worker now; their in-flight messages will be "
                        "redelivered",
                        name,
                    )
                    self._stop_now()

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
            while not self._stopping:
                stale = [
                    s for s in self.slots if s.current is not None and s.current.generation < self.generation
                ]
                if not stale:
                    logger.info("rolling restart done: every worker runs generation %d", self.generation)
                    return
                if not await self._replace(stale[0]):
                    return
        finally:
            self._rolling = False
            self._refresh()

    async def _replace(self, slot: Slot) -> bool:
        """Start `slot`'s replacement, wait until it consumes, then drain the old one; False to give up.

        Replacement first, then stop: N stay consuming throughout (N+1 briefly), where stop-then-start
        would drop to N-1 for a drain plus a start. A replacement that cannot start consuming leaves
        the old worker in place, so a broken deploy does not take the pool down.
        """
        old = slot.current
        if old is None:
            raise RuntimeError("internal state: old is unset here")
        try:
            new = await self._spawn(slot, restart_reason="rolling_restart", incoming=True)
        except OSError as exc:
            logger.error(
                "rolling restart stopped: cannot start the replacement of worker %d (%s); the old workers "
                "keep running (send SIGHUP again)",
                slot.index,
                exc.strerror or exc,
            )
            return False
        if new is None:
            return False
        with anyio.move_on_after(self.ready_timeout):
            while not (new.consuming or new.exit is not None or self.stopping):
                await self._changed.wait()
        if self.stopping:
            return False
        if new.exit is not None:
            slot.incoming = None
            logger.error(
                "rolling restart stopped: the replacement of worker %d exited (%s%s); the old workers keep "
                "running (fix and send SIGHUP again)",
                slot.index,
                new.exit.reason,
                f": {new.exit.detail}" if new.exit.detail else "",
                extra={"worker": slot.index, "pid": new.pid},
            )
            return False
        if not new.consuming:
            logger.warning(
                "the replacement of worker %d (pid %d) is not consuming after %.0fs; swapping it in anyway",
                slot.index,
                new.pid,
                self.ready_timeout,
            )
        if slot.incoming is new:  # not adopted already because the old one exited on its own
            slot.incoming = None
            slot.current = new
            logger.info(
                "worker %d: pid %d consuming, draining pid %d",
                slot.index,
                new.pid,
                old.pid,
                extra={"worker": slot.index, "pid": old.pid},
            )
            old.terminate()
        self._refresh()
        with anyio.move_on_after(self.grace_period + self.kill_after):
            await old.exited.wait()
        if old.exit is None:
            logger.error("worker pid %d did not stop within %.0fs: killing it", old.pid, self.grace_period)
            old.signal(signal.SIGKILL)
            await old.exited.wait()
        return True

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
        self._refresh()

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
            self._refresh()
            await anyio.sleep(_REFRESH_INTERVAL)

    def _refresh(self) -> None:
        """Rebuild the snapshot the HTTP thread serves."""
        now = time.monotonic()
        states: Tally[str] = Tally(w.state for w in self._live.values())
        states["backoff"] = sum(1 for s in self.slots if s.restart_at is not None)
        consuming = sum(1 for w in self._live.values() if w.consuming)
        self.proven = self.proven or consuming > 0
        slots = []
        for slot in self.slots:
            entry: dict[str, Any] = {"slot": slot.index}
            current = slot.current
            entry.update(
                current.as_json(now)
                if current is not None
                else {"pid": None, "state": "backoff" if slot.restart_at is not None else "stopped"}
            )
            entry["restarts"] = slot.restarts
            entry["last_exit"] = slot.last_exit.as_json() if slot.last_exit else None
            entry["last_exit_reason"] = slot.last_exit.reason if slot.last_exit else None
            entry["restart_in"] = (
                round(max(0.0, slot.restart_at - now), 3) if slot.restart_at is not None else None
            )
            entry["replacement"] = slot.incoming.as_json(now) if slot.incoming is not None else None
            slots.append(entry)
        status = {
            "state": "stopping" if self._stopping else "rolling_restart" if self._rolling else "running",
            "pid": os.getpid(),
            "uptime": round(now - self._started, 3),
            "workers_desired": self.workers,
            "workers_consuming": consuming,
            "generation": self.generation,
            "restarts": dict(self.restarts),
            "spawn_failures": self.spawn_failures,
            "workers": slots,
        }
        self.snapshot = Snapshot(dict(states), dict(self.restarts), consuming, status)
        self._changed.set()
        self._changed = anyio.Event()
        if self.health is not None:
            self.health.beat()
