"""How and why a worker process ended, read from its exit code and its last status."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import Any

from swarrow.exits import EXIT_BROKER, EXIT_IMPORT, EXIT_OK, EXIT_USAGE
from swarrow.pool.status import (
    WorkerStatus,
)

__all__ = ["ExitInfo", "classify_exit"]


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
    elif code == EXIT_BROKER:
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
