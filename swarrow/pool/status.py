"""What a pool worker tells its supervisor, and the pool's shared Prometheus directory.

A worker writes a small JSON status file (atomically: write, then rename) about once a second; the
supervisor reads it. Files survive a crash, need no socket or protocol, and a reader never sees a half
written one. The multiprocess directory is where every worker's prometheus-client values live.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = [
    "MULTIPROC_DIR_ENV",
    "POOL_DIR_ENV",
    "POOL_WORKER_ENV",
    "SUPERVISOR_ENV",
    "LockedMultiProcessCollector",
    "PoolWorkerEnv",
    "WorkerStatus",
    "clean_multiproc_dir",
    "compact_dead_process",
    "pool_worker_env",
    "read_status",
    "status_path",
    "write_status",
]

logger = logging.getLogger(__name__)

POOL_WORKER_ENV: Final = "SWARROW_POOL_WORKER"
POOL_DIR_ENV: Final = "SWARROW_POOL_DIR"
MULTIPROC_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
SUPERVISOR_ENV: Final = "SWARROW_POOL_SUPERVISOR"

# File kinds whose values simply add up across processes, so a dead worker's file can be folded into
# one archive file per kind (prometheus-client sums them the same way at scrape time). Without this a
# pool recycling a worker a second would leave 86,400 files a day for every scrape to read.
_ADDITIVE_KINDS: Final = ("counter", "histogram", "summary", "gauge_sum")
_ARCHIVE: Final = "archive"


@dataclass(frozen=True, slots=True)
class PoolWorkerEnv:
    """A worker's place in its pool, read from the environment the supervisor gave it."""

    slot: int
    directory: Path
    supervisor: int | None = None  # the supervisor's pid: the worker must not outlive it


def pool_worker_env(environ: Mapping[str, str] | None = None) -> PoolWorkerEnv | None:
    """The pool settings of this process, or None when it is not a pool worker."""
    env = os.environ if environ is None else environ
    slot, directory = env.get(POOL_WORKER_ENV), env.get(POOL_DIR_ENV)
    if slot is None or directory is None:
        return None
    try:
        index = int(slot)
    except ValueError:
        raise ValueError(f"{POOL_WORKER_ENV} must be an integer, got {slot!r}") from None
    supervisor = env.get(SUPERVISOR_ENV, "")
    return PoolWorkerEnv(index, Path(directory), int(supervisor) if supervisor.isdigit() else None)


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker's last report: counters since it started, and why it stopped once it did."""

    pid: int
    slot: int
    started_at: float  # time.time() when the worker's consumer started
    updated_at: float
    messages_done: int
    rss: int  # bytes
    consuming: bool
    stop_reason: str | None = None
    stop_detail: str = ""

    def to_json(self) -> str:
        """One JSON object."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> WorkerStatus:
        """Parse `to_json()` output; ValueError if it is not a status."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a worker status must be a JSON object")
        try:
            return cls(
                pid=int(data["pid"]),
                slot=int(data["slot"]),
                started_at=float(data["started_at"]),
                updated_at=float(data["updated_at"]),
                messages_done=int(data["messages_done"]),
                rss=int(data["rss"]),
                consuming=bool(data["consuming"]),
                stop_reason=None if data.get("stop_reason") is None else str(data["stop_reason"]),
                stop_detail=str(data.get("stop_detail", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a worker status: {exc}") from None


def status_path(directory: Path, pid: int) -> Path:
    """Where worker `pid` writes its status."""
    return directory / f"worker-{pid}.json"


def write_status(directory: Path, status: WorkerStatus) -> None:
    """Replace the status file atomically, so the supervisor never reads half of one."""
    final = status_path(directory, status.pid)
    partial = final.with_suffix(".tmp")
    partial.write_text(status.to_json(), encoding="utf-8")
    os.replace(partial, final)


def read_status(directory: Path, pid: int) -> WorkerStatus | None:
    """The last status `pid` wrote, or None if there is none (yet) or it is unreadable."""
    try:
        return WorkerStatus.from_json(status_path(directory, pid).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("unreadable status file of worker %d: %s", pid, exc)
        return None


def clean_multiproc_dir(path: Path) -> int:
    """Delete every value file left by an earlier run (prometheus-client requires a clean start)."""
    path.mkdir(parents=True, exist_ok=True)
    removed = 0
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)
        removed += 1
    return removed


class LockedMultiProcessCollector(MultiProcessCollector):
    """Collects every worker's values; scrapes and compactions of dead workers' files take turns."""

    def __init__(self, path: Path, lock: threading.Lock, registry: object = None) -> None:
        super().__init__(registry, path=str(path))  # type: ignore[no-untyped-call]
        self._lock = lock

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            return list(super().collect())  # type: ignore[no-untyped-call]


def _files_of(path: Path, pid: int) -> Iterator[tuple[str, Path]]:
    for kind in _ADDITIVE_KINDS:
        file = path / f"{kind}_{pid}.db"
        if file.exists():
            yield kind, file


def compact_dead_process(path: Path, pid: int, lock: threading.Lock) -> None:
    """Bookkeeping for a dead worker: drop its live gauges, fold its additive values into the archive.

    Totals are unchanged (a counter keeps counting what dead workers did), but the number of files a
    scrape reads stays bounded however many workers were recycled.
    """
    mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
    with lock:
        for kind, dead in _files_of(path, pid):
            archive = path / f"{kind}_{_ARCHIVE}.db"
            totals: dict[str, tuple[float, float]] = {}
            for source in (archive, dead):
                if not source.exists():
                    continue
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(source)):  # type: ignore[no-untyped-call]
                    old_value, old_ts = totals.get(key, (0.0, 0.0))
                    totals[key] = (old_value + value, max(old_ts, timestamp))
            # Not *.db while being written, so a concurrent glob never sees it half done.
            partial = path / f"{kind}_{_ARCHIVE}.partial"
            merged = MmapedDict(str(partial))  # type: ignore[no-untyped-call]
            try:
                for key, (value, timestamp) in totals.items():
                    merged.write_value(key, value, timestamp)  # type: ignore[no-untyped-call]
            finally:
                merged.close()  # type: ignore[no-untyped-call]
            os.replace(partial, archive)
            dead.unlink()
