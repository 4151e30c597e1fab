"""`swarrow consume --workers N`: a small supervisor that keeps N worker processes consuming.

Each worker is a full `swarrow consume` process with its own connection. A worker that stopped
gracefully (a limit reached: max messages, runtime, memory) is replaced at once; one that crashed is
replaced after an exponential backoff; one that failed on usage or import stops the pool with its exit
code (restarting cannot fix a typo). SIGTERM/SIGINT drain every worker, a second one stops them now;
SIGHUP replaces them one at a time (the deploy case) without ever dropping below N consuming.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from wsgiref.types import StartResponse, WSGIEnvironment

import anyio
from anyio.abc import Process, TaskGroup, TaskStatus
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from swarrow._pool_status import (
    MULTIPROC_DIR_ENV,
    POOL_DIR_ENV,
    POOL_WORKER_ENV,
    LockedMultiProcessCollector,
    WorkerStatus,
    clean_multiproc_dir,
    compact_dead_process,
    read_status,
    status_path,
)
from swarrow.metrics import HealthState, MetricsServer
from swarrow.validation import require_int, require_seconds

__all__ = [
    "EXIT_BROKER_UNREACHABLE",
    "EXIT_CRASH",
    "EXIT_IMPORT",
    "EXIT_OK",
    "EXIT_USAGE",
    "WORKER_STATES",
    "Backoff",
    "ExitInfo",
    "WorkerPool",
    "classify_exit",
    "default_command",
    "strip_options",
]

logger = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_CRASH: Final = 1
EXIT_USAGE: Final = 2
EXIT_IMPORT: Final = 3
EXIT_BROKER_UNREACHABLE: Final = 4

#: `swarrow_workers{state}`: every state is always exported, at 0 when empty.
WORKER_STATES: Final = ("starting", "consuming", "disconnected", "stopping", "backoff")

# A graceful exit this early, with nothing processed, is a loop (e.g. --stop-when-idle on an empty
# queue), not a recycle: it gets the crash backoff instead of a restart at once.
_MIN_USEFUL_LIFE: Final = 1.0
_REFRESH_INTERVAL: Final = 0.25


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before restarting a crashed worker: `initial`·2^(n-1) after the n-th crash in a row, at most
    `maximum`; a worker that lived `reset_after` seconds starts the count again."""

    initial: float = 1.0
    maximum: float = 30.0
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        require_seconds("initial", self.initial)
        require_seconds("maximum", self.maximum)
        require_seconds("reset_after", self.reset_after, allow_zero=True)
        if self.maximum < self.initial:
            raise ValueError(f"maximum must be >= initial ({self.initial!r}), got {self.maximum!r}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` crashes in a row (0 for none)."""
        if failures <= 0:
            return 0.0
        # Capped exponent: 2.0**1100 overflows a float.
        return min(self.maximum, self.initial * 2.0 ** min(failures - 1, 64))


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How and why one worker process ended."""

    pid: int
    code: int  # the return code; negative: killed by that signal
    reason: str  # a StopReason code for a graceful exit, else crashed / killed / broker_unreachable / …
    detail: str
    uptime: float
    messages_done: int
    ended_at: float  # time.time()

    @property
    def graceful(self) -> bool:
        """The worker stopped on purpose (a limit, a signal) and can be replaced at once."""
        return self.code == EXIT_OK

    @property
    def fatal(self) -> bool:
        """A usage or import error: every restart would fail the same way."""
        return self.code in (EXIT_USAGE, EXIT_IMPORT)

    def as_json(self) -> dict[str, Any]:
        """For `/status`."""
        return {
            "pid": self.pid,
            "code": self.code,
            "reason": self.reason,
            "detail": self.detail,
            "uptime": round(self.uptime, 3),
            "messages_done": self.messages_done,
            "ended_at": self.ended_at,
        }


def classify_exit(
    pid: int, code: int, status: WorkerStatus | None, *, uptime: float, ended_at: float | None = None
) -> ExitInfo:
    """Name why a worker ended from its exit code and the last status it wrote."""
    done = status.messages_done if status is not None else 0
    detail = status.stop_detail if status is not None else ""
    if code == EXIT_OK:
        reason = status.stop_reason if status is not None and status.stop_reason else "graceful"
    elif code == EXIT_USAGE:
        reason = "usage_error"
    elif code == EXIT_IMPORT:
        reason = "import_error"
    elif code == EXIT_BROKER_UNREACHABLE:
        reason = "broker_unreachable"
    elif code < 0:
        reason = "killed"
        try:
            detail = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            detail = f"killed by signal {-code}"
    else:
        reason = "crashed"
        detail = detail or f"exit code {code}"
    return ExitInfo(pid, code, reason, detail, uptime, done, time.time() if ended_at is None else ended_at)


def strip_options(args: Sequence[str], options: Mapping[str, bool]) -> list[str]:
    """`args` without the given long options; `options` maps each name to whether it takes a value.

    Handles `--opt value` and `--opt=value`; stops at `--` (what follows is not an option).
    """
    kept: list[str] = []
    items = iter(args)
    for arg in items:
        if arg == "--":
            kept.append(arg)
            kept.extend(items)
            break
        name, eq, _ = arg.partition("=")
        if name in options:
            if options[name] and not eq:
                next(items, None)
            continue
        kept.append(arg)
    return kept


class _Worker:
    """One worker process, from spawn to reaped."""

    def __init__(self, slot: _Slot, process: Process, generation: int) -> None:
        self.slot = slot
        self.process = process
        self.pid = process.pid
        self.generation = generation
        self.started = time.monotonic()
        self.started_at = time.time()
        self.status: WorkerStatus | None = None
        self.terminations = 0  # SIGTERMs we sent: 1 = drain, 2 = stop now
        self.exit: ExitInfo | None = None
        self.exited = anyio.Event()

    @property
    def consuming(self) -> bool:
        # Once told to stop it takes no new message, whatever its last report said.
        return (
            self.exit is None and not self.terminations and self.status is not None and self.status.consuming
        )

    @property
    def state(self) -> str:
        if self.terminations or (self.status is not None and self.status.stop_reason is not None):
            return "stopping"
        if self.consuming:
            return "consuming"
        return "starting" if self.status is None or self.status.messages_done == 0 else "disconnected"

    def signal(self, signum: int) -> None:
        if self.exit is not None:
            return
        with contextlib.suppress(ProcessLookupError):  # exited, not reaped yet
            self.process.send_signal(signal.Signals(signum))

    def terminate(self) -> None:
        # The second time SIGINT, not SIGTERM again: two pending SIGTERMs merge into one when the
        # worker is not scheduled in between (a loaded machine), and "stop now" would be lost.
        # The worker's signal handler counts SIGTERM, SIGINT and SIGQUIT alike.
        self.terminations += 1
        self.signal(signal.SIGTERM if self.terminations == 1 else signal.SIGINT)

    def as_json(self, now: float) -> dict[str, Any]:
        status = self.status
        return {
            "pid": self.pid,
            "state": self.state,
            "generation": self.generation,
            "uptime": round(now - self.started, 3),
            "messages_done": status.messages_done if status else 0,
            "rss": status.rss if status else None,
            "consuming": self.consuming,
        }


@dataclass(eq=False)
class _Slot:
    index: int
    current: _Worker | None = None
    incoming: _Worker | None = None  # a rolling restart's replacement, not yet swapped in
    failures: int = 0
    restarts: int = 0
    restart_at: float | None = None  # monotonic; set while waiting out a backoff
    last_exit: ExitInfo | None = None
    history: list[ExitInfo] = field(default_factory=list)

    def after_exit(self, info: ExitInfo, backoff: Backoff) -> float:
        """Seconds to wait before the next start of this slot."""
        if info.uptime >= backoff.reset_after:
            self.failures = 0
        if info.graceful and (info.uptime >= _MIN_USEFUL_LIFE or info.messages_done > 0):
            self.failures = 0
            return 0.0
        self.failures += 1
        return backoff.delay(self.failures)


class _PoolCollector(Collector):
    """`swarrow_workers{state}` and `swarrow_worker_restarts_total{reason}`, from the pool's snapshot."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def collect(self) -> Iterable[Metric]:
        snapshot = self.pool.snapshot
        workers = GaugeMetricFamily("swarrow_workers", "Pool worker processes, by state.", labels=["state"])
        for state in WORKER_STATES:
            workers.add_metric([state], snapshot.states.get(state, 0))
        yield workers
        restarts = CounterMetricFamily(
            "swarrow_worker_restarts", "Worker processes started to replace one, by why.", labels=["reason"]
        )
        for reason, count in sorted(snapshot.restarts.items()):
            restarts.add_metric([reason], count)
        yield restarts
        desired = GaugeMetricFamily("swarrow_workers_desired", "Worker processes the pool keeps alive.")
        desired.add_metric([], self.pool.workers)
        yield desired


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The pool as the HTTP thread sees it: built on the event loop, replaced whole, never mutated."""

    states: Mapping[str, int]
    restarts: Mapping[str, int]
    consuming: int
    status: Mapping[str, Any]


class WorkerPool:
    """Keeps `workers` processes running `command`, recycles them, and serves one endpoint for all.

    `command` is a full argv (normally `sys.executable -m swarrow consume …`). Each worker gets
    `SWARROW_POOL_WORKER` (its slot) and `SWARROW_POOL_DIR` (where it writes its status file) in its
    environment. With `metrics_address`, workers also get `PROMETHEUS_MULTIPROC_DIR` (where their
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
        self.slots = [_Slot(index) for index in range(workers)]
        self.restarts: Tally[str] = Tally()
        self.exit_code = EXIT_OK
        self.generation = 0
        self.signals_received = 0
        self.snapshot = _Snapshot({}, {}, 0, {})
        self.server: _PoolServer | None = None
        self.health: HealthState | None = None
        self._live: dict[int, _Worker] = {}
        self._stopping = False
        self._stop_event: anyio.Event | None = None
        self._changed = anyio.Event()
        self._rolling = False
        self._metrics_lock = threading.Lock()
        self._started = time.monotonic()
        self._workers_tg: TaskGroup | None = None
        self._tg: TaskGroup | None = None

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
            self._start_server()
            logger.info("starting a pool of %d workers: %s", self.workers, " ".join(self.command))
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
        self.directory = Path(tempfile.mkdtemp(prefix="swarrow-pool-")) if base is None else base
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

    def _start_server(self) -> None:
        if self.metrics_address is None:
            return
        registry = CollectorRegistry(auto_describe=False)
        LockedMultiProcessCollector(self.metrics_dir, self._metrics_lock, registry)
        registry.register(_PoolCollector(self))
        health = self.health = HealthState(stale_after=10.0, ready=lambda: self.snapshot.consuming > 0)
        health.beat()
        host, port = self.metrics_address
        self.server = _PoolServer(host, port, registry=registry, health=health, pool=self)
        self.server.start()
        logger.info("pool status (JSON) on http://%s/status", self.server.address)

    # -- one slot -------------------------------------------------------------------------------

    async def _keep_alive(self, slot: _Slot) -> None:
        """Keep one worker alive in `slot` until the pool stops."""
        worker = await self._spawn(slot, restart_reason=None)
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
            assert info is not None
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
            if info.fatal:
                logger.error(
                    "worker %d (pid %d) failed with a %s (exit code %d): stopping the pool, "
                    "a restart would fail the same way",
                    slot.index,
                    info.pid,
                    info.reason.replace("_", " "),
                    info.code,
                    extra={"worker": slot.index, "pid": info.pid},
                )
                self._begin_stop(exit_code=info.code)
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
                slot.restart_at = time.monotonic() + delay
                self._refresh()
                assert self._stop_event is not None
                with anyio.move_on_after(delay):
                    await self._stop_event.wait()
                slot.restart_at = None
                if self.stopping:
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
            worker = await self._spawn(slot, restart_reason=info.reason)

    async def _spawn(
        self, slot: _Slot, *, restart_reason: str | None, incoming: bool = False
    ) -> _Worker | None:
        """Start a worker for `slot` (as its current one, or as a rolling replacement)."""
        env = dict(self.env)
        env[POOL_WORKER_ENV] = str(slot.index)
        env[POOL_DIR_ENV] = str(self.status_dir)
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
            logger.error("cannot start a worker (%s): %s", self.command[0], exc)
            self._begin_stop(exit_code=EXIT_CRASH)
            return None
        worker = _Worker(slot, process, self.generation)
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
        assert self._workers_tg is not None
        self._workers_tg.start_soon(self._reap, worker)
        if self._stopping:  # a stop raced the spawn
            worker.terminate()
        self._refresh()
        return worker

    async def _reap(self, worker: _Worker) -> None:
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
        assert self._workers_tg is not None
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

    async def _replace(self, slot: _Slot) -> bool:
        """Start `slot`'s replacement, wait until it consumes, then drain the old one; False to give up.

        Replacement first, then stop: N stay consuming throughout (N+1 briefly), where stop-then-start
        would drop to N-1 for a drain plus a start. A replacement that cannot start consuming leaves
        the old worker in place, so a broken deploy does not take the pool down.
        """
        old = slot.current
        assert old is not None
        new = await self._spawn(slot, restart_reason="rolling_restart", incoming=True)
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
        assert self._stop_event is not None
        self._stop_event.set()
        for worker in list(self._live.values()):
            worker.terminate()
        assert self._tg is not None
        self._tg.start_soon(self._kill_after, self.grace_period + self.kill_after)
        self._refresh()

    def _stop_now(self) -> None:
        if not self._stopping:
            self._begin_stop(exit_code=EXIT_OK)
        for worker in list(self._live.values()):
            if worker.terminations < 2:
                worker.terminate()
        assert self._tg is not None
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
            "workers": slots,
        }
        self.snapshot = _Snapshot(dict(states), dict(self.restarts), consuming, status)
        self._changed.set()
        self._changed = anyio.Event()
        if self.health is not None:
            self.health.beat()


class _PoolServer(MetricsServer):
    """The workers' summed `/metrics`, the pool's `/healthz` and `/readyz`, and `/status` (JSON)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        registry: CollectorRegistry,
        health: HealthState,
        pool: WorkerPool,
    ) -> None:
        super().__init__(host, port, registry=registry, health=health)
        self.pool = pool

    def app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """`/status` here, everything else as the single-process endpoint does."""
        if environ.get("PATH_INFO", "") != "/status":
            return super().app(environ, start_response)
        body = json.dumps(self.pool.snapshot.status, separators=(",", ":")).encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]


def default_command(args: Sequence[str]) -> list[str]:
    """The argv of one worker: this interpreter running `swarrow consume` with `args`."""
    return [sys.executable, "-m", "swarrow", "consume", *args]
