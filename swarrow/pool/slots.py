"""A pool's slots and the worker process in each: state, signals, and when to start the next one."""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
from anyio.abc import Process

from swarrow.backoff import Backoff
from swarrow.pool.exits import ExitInfo
from swarrow.pool.status import (
    WorkerStatus,
)

__all__ = ["WORKER_STATES", "Slot", "Worker"]

#: `swarrow_workers{state}`: every state is always exported, at 0 when empty.
WORKER_STATES: Final = ("starting", "consuming", "disconnected", "stopping", "backoff")

# A graceful exit this early, with nothing processed, is a loop (e.g. --stop-when-idle on an empty
# queue), not a recycle: it gets the crash backoff instead of a restart at once.
MIN_USEFUL_LIFE: Final = 1.0


class Worker:
    """One worker process, from spawn to reaped."""

    def __init__(self, slot: Slot, process: Process, generation: int) -> None:
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
class Slot:
    index: int
    current: Worker | None = None
    incoming: Worker | None = None  # a rolling restart's replacement, not yet swapped in
    failures: int = 0
    restarts: int = 0
    restart_at: float | None = None  # monotonic; set while waiting out a backoff
    last_exit: ExitInfo | None = None
    history: list[ExitInfo] = field(default_factory=list)

    def after_exit(self, info: ExitInfo, backoff: Backoff) -> float:
        """Seconds to wait before the next start of this slot."""
        if info.uptime >= backoff.reset_after:
            self.failures = 0
        if info.graceful and (info.uptime >= MIN_USEFUL_LIFE or info.messages_done > 0):
            self.failures = 0
            return 0.0
        self.failures += 1
        return backoff.delay(self.failures)
