"""The pool as `/status` and `/metrics` show it: one immutable snapshot, rebuilt on the event loop."""

from __future__ import annotations

import os
from collections import Counter as Tally
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from swarrow.pool.slots import Slot, Worker

__all__ = ["Snapshot", "build_snapshot"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The pool as the HTTP thread sees it: built on the event loop, replaced whole, never mutated."""

    states: Mapping[str, int]
    restarts: Mapping[str, int]
    consuming: int
    status: Mapping[str, Any]


def _slot_json(slot: Slot, now: float) -> dict[str, Any]:
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
    entry["restart_in"] = round(max(0.0, slot.restart_at - now), 3) if slot.restart_at is not None else None
    entry["replacement"] = slot.incoming.as_json(now) if slot.incoming is not None else None
    return entry


def build_snapshot(
    *,
    now: float,
    state: str,
    started: float,
    desired: int,
    generation: int,
    slots: Sequence[Slot],
    live: Iterable[Worker],
    restarts: Mapping[str, int],
    spawn_failures: int,
) -> Snapshot:
    """The snapshot of a pool in `state` ("running", "rolling_restart", "stopping") at `now` (monotonic)."""
    workers = list(live)
    states: Tally[str] = Tally(w.state for w in workers)
    states["backoff"] = sum(1 for s in slots if s.restart_at is not None)
    consuming = sum(1 for w in workers if w.consuming)
    status = {
        "state": state,
        "pid": os.getpid(),
        "uptime": round(now - started, 3),
        "workers_desired": desired,
        "workers_consuming": consuming,
        "generation": generation,
        "restarts": dict(restarts),
        "spawn_failures": spawn_failures,
        "workers": [_slot_json(slot, now) for slot in slots],
    }
    return Snapshot(dict(states), dict(restarts), consuming, status)
