"""What the job store keeps: the states a job goes through, one record per step, and what queries return."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple, TypeAlias

__all__ = [
    "DEAD_LETTERED",
    "EXPIRED",
    "FAILED",
    "FINAL_STATES",
    "JOB_ID_HEADER",
    "JOB_STATES",
    "MAX_ERROR_MESSAGE",
    "MAX_JOB_ID",
    "RETRYING",
    "RUNNING",
    "SUCCEEDED",
    "Job",
    "JobRecord",
    "JobState",
    "JobStats",
    "clean_text",
    "merge_records",
    "rows_for_write",
]

JobState: TypeAlias = Literal["running", "succeeded", "retrying", "failed", "dead_lettered", "expired"]

RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
RETRYING: Final = "retrying"
FAILED: Final = "failed"
DEAD_LETTERED: Final = "dead_lettered"
EXPIRED: Final = "expired"
JOB_STATES: Final[tuple[JobState, ...]] = (RUNNING, SUCCEEDED, RETRYING, FAILED, DEAD_LETTERED, EXPIRED)
# A job in one of these will not run again (unless someone republishes it by hand).
FINAL_STATES: Final[frozenset[str]] = frozenset({SUCCEEDED, FAILED, DEAD_LETTERED, EXPIRED})
MAX_ERROR_MESSAGE: Final = 1000
# A message without an AMQP message-id gets a generated job id here; retry and dead-letter copies keep it.
JOB_ID_HEADER: Final = "x-swarrow-job-id"
# AMQP's message-id is a short string (≤ 255 bytes); the job-id header is held to the same bound.
MAX_JOB_ID: Final = 255


class JobRecord(NamedTuple):
    """One step of one job as a worker saw it (times in Unix seconds); the store keeps the latest per id.

    "Latest" is the largest (replays, attempts, started, finished-or-not): records may reach the store
    out of order (several workers, a batch retried after an outage) and an older one never overwrites a
    newer. `replays` is the message's `x-swarrow-replay-count`: a replayed job counts attempts afresh.
    """

    id: str
    queue: str
    state: str
    attempts: int
    first_seen: float
    started: float
    finished: float | None
    duration: float | None
    host: str
    pid: int
    rss_before: int | None
    rss_after: int | None
    error_type: str | None
    error_message: str | None
    replays: int = 0


def _key(record: JobRecord) -> tuple[int, int, float, bool]:
    return (record.replays, record.attempts, record.started, record.state != RUNNING)


def merge_records(records: Iterable[JobRecord]) -> list[JobRecord]:
    """One record per id by the store's rule: the latest wins, first_seen is the earliest, an error sticks.

    Lets a batch go out as one upsert per job (the running step and the final one of a job often
    travel together) and keeps an upsert from touching one row twice.
    """
    latest: dict[str, JobRecord] = {}
    for record in records:
        old = latest.get(record.id)
        if old is None:
            latest[record.id] = record
            continue
        new, other = (record, old) if _key(record) >= _key(old) else (old, record)
        changes: dict[str, Any] = {}
        if other.first_seen < new.first_seen:
            changes["first_seen"] = other.first_seen
        if new.error_type is None and other.error_type is not None:
            changes["error_type"] = other.error_type
            changes["error_message"] = other.error_message
        latest[record.id] = new._replace(**changes) if changes else new
    return list(latest.values())


def clean_text(text: str) -> str:
    """`text` as both databases take it: NUL (PostgreSQL refuses it) becomes U+FFFD, a lone surrogate `?`.

    A producer controls message ids and a callback its error text: one bad character must not make
    the store refuse a whole batch of other jobs' records.
    """
    if text.isascii():
        return text.replace("\x00", "\ufffd") if "\x00" in text else text
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _clean(text: str | None) -> str | None:
    return None if text is None else clean_text(text)


def rows_for_write(records: Iterable[JobRecord]) -> list[tuple[Any, ...]]:
    """Merged records as rows in the store's column order (`updated` = finished, else started)."""
    return [
        (clean_text(r.id), clean_text(r.queue), r.state, r.attempts, r.first_seen, r.started, r.finished,
         r.duration, r.started if r.finished is None else r.finished, clean_text(r.host), r.pid, r.rss_before,
         r.rss_after, _clean(r.error_type), _clean(r.error_message), r.replays)
        for r in merge_records(records)
    ]  # fmt: skip


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True, slots=True)
class Job:
    """What the store knows about one job: its state, attempts (calls made), times, worker and last error.

    `attempts` counts the calls since the job was last replayed from its dead-letter queue; `replays`
    how many times it was (0: never).
    """

    id: str
    queue: str
    state: JobState
    attempts: int
    first_seen: datetime
    started: datetime
    finished: datetime | None
    duration: float | None
    host: str
    pid: int
    rss_before: int | None
    rss_after: int | None
    error_type: str | None
    error_message: str | None
    updated: datetime
    replays: int = 0

    @property
    def is_finished(self) -> bool:
        """True once the job will not run again: succeeded, failed, dead_lettered or expired."""
        return self.state in FINAL_STATES

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Job:
        """Build from a row in the store's column order (times as Unix seconds)."""
        (id_, queue, state, attempts, first_seen, started, finished, duration, updated, host, pid,
         rss_before, rss_after, error_type, error_message, *rest) = row  # fmt: skip
        return cls(
            id=id_,
            queue=queue,
            state=state,
            attempts=int(attempts),
            first_seen=datetime.fromtimestamp(first_seen, UTC),
            started=datetime.fromtimestamp(started, UTC),
            finished=_time(finished),
            duration=duration,
            host=host,
            pid=int(pid),
            rss_before=rss_before,
            rss_after=rss_after,
            error_type=error_type,
            error_message=error_message,
            updated=datetime.fromtimestamp(updated, UTC),
            replays=int(rest[0]) if rest else 0,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO-8601 UTC strings, duration in seconds, RSS in bytes."""
        return {
            "id": self.id,
            "queue": self.queue,
            "state": self.state,
            "attempts": self.attempts,
            "replays": self.replays,
            "first_seen": _iso(self.first_seen),
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "duration": self.duration,
            "host": self.host,
            "pid": self.pid,
            "rss_before": self.rss_before,
            "rss_after": self.rss_after,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "updated": _iso(self.updated),
        }


@dataclass(frozen=True, slots=True)
class JobStats:
    """Counts by state, duration percentiles of finished jobs (seconds) and the most frequent error types."""

    total: int
    by_state: dict[str, int]
    p50: float | None
    p95: float | None
    top_errors: list[tuple[str, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "total": self.total,
            "by_state": dict(self.by_state),
            "duration_p50": self.p50,
            "duration_p95": self.p95,
            "top_errors": [{"error_type": name, "count": count} for name, count in self.top_errors],
        }
