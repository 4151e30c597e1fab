"""A callback module whose import waits for a gate file: a worker caught "still importing" (pool tests)."""

from __future__ import annotations

import os
import time
from pathlib import Path

_worker = "SWARROW_POOL_WORKER" in os.environ  # the supervisor may import the module too: not held
_events = os.environ.get("SLOW_IMPORT_EVENTS")
if _events and _worker:
    with open(_events, "a", encoding="utf-8") as sink:
        sink.write(f"importing {os.getpid()} {os.getppid()}\n")
_gate = Path(os.environ.get("SLOW_IMPORT_GATE", "/nonexistent"))
_deadline = time.monotonic() + 30
while _worker and not _gate.exists() and time.monotonic() < _deadline:
    time.sleep(0.05)


def handle(message: object) -> None:
    """Do nothing: the test is about the process, not the message."""
