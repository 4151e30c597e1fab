"""Liveness and readiness: what `/healthz` and `/readyz` report, written by the loop, read by the server."""

from __future__ import annotations

import time
from collections.abc import Callable

from swarrow.validation import require_seconds

__all__ = ["HealthState"]


class HealthState:
    """What `/healthz` and `/readyz` report, written by the event loop and read by the server thread.

    Plain attribute reads and writes only: the GIL makes each one atomic, and a reading one
    heartbeat late is harmless.
    """

    def __init__(
        self,
        *,
        stale_after: float = 10.0,
        ready: Callable[[], bool | tuple[bool, str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stale_after = require_seconds("stale_after", stale_after)
        self.ready = ready
        self.clock = clock
        self.last_beat: float | None = None
        self.stopped: str | None = None
        # Another reason not to be ready (a refused retry copy holding messages), or None.
        self.blocked: Callable[[], str | None] | None = None

    def beat(self) -> None:
        """Record that the event loop ran just now."""
        self.last_beat = self.clock()

    def stop(self, reason: str) -> None:
        """Mark the consumer stopped (liveness fails from now on)."""
        self.stopped = reason

    def liveness(self) -> tuple[bool, str]:
        """(alive, why): alive while the loop beats within `stale_after` and the consumer has not stopped."""
        if self.stopped is not None:
            return False, f"consumer stopped: {self.stopped}"
        last = self.last_beat
        if last is None:
            return False, "consumer not started"
        age = self.clock() - last
        if age > self.stale_after:
            return False, f"event loop wedged: no heartbeat for {age:.1f}s (limit {self.stale_after:g}s)"
        return True, "alive"

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): ready only while alive and the provider is connected and consuming.

        `ready` may answer a bool or `(ready, why)`; the metrics layer says why: starting, draining
        (stop requested: …), or the broker gone.
        """
        alive, why = self.liveness()
        if not alive:
            return False, why
        ready = self.ready
        if ready is not None:
            state = ready()
            ok, why = state if isinstance(state, tuple) else (state, "")
            if not ok:
                return False, why or "not consuming (broker disconnected or consumer cancelled)"
        blocked = self.blocked
        if blocked is not None and (held := blocked()):
            return False, held
        return True, "consuming"
