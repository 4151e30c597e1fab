"""`JobStore`: ask what became of jobs, whichever database keeps them (SQLite or PostgreSQL)."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol

from swarrow.errors import ConfigurationError
from swarrow.jobs._sql import COLUMNS, Dialect
from swarrow.jobs.errors import JobStoreError, mask_store_url
from swarrow.jobs.model import FINAL_STATES, JOB_STATES, Job, JobRecord, JobStats, clean_text
from swarrow.validation import require_int

__all__ = ["JobBackend", "JobStore", "JobStoreError", "mask_store_url"]

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM swarrow_jobs"
_CHUNK = 500  # ids per IN (…): well under SQLite's and asyncpg's parameter limits


class JobBackend(Protocol):
    """A database behind `JobStore`: runs its SQL (with `?` placeholders) and writes the tracker's records."""

    dialect: Dialect
    url: str  # masked: safe to log

    async def connect(self) -> None:
        """Connect and bring the schema to the current version (idempotent)."""
        ...

    async def close(self) -> None:
        """Release the connection; safe to call twice."""
        ...

    async def write(self, records: Sequence[JobRecord]) -> None:
        """Upsert `records` in one transaction; `JobStoreError` if the database is unreachable."""
        ...

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of a query."""
        ...

    async def execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run a statement in its own transaction; the number of rows it changed."""
        ...


def _check_state(state: str | None) -> None:
    if state is not None and state not in JOB_STATES:
        raise ValueError(f"state must be one of {', '.join(JOB_STATES)}, got {state!r}")


def _seconds(value: datetime | float) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


class JobStore:
    """The jobs a `JobTrackerProcessor` recorded: `status`, `unfinished`, `list`, `stats`, `prune`.

    `JobStore.open("sqlite:///jobs.db")` or `JobStore.open("postgresql://user:pass@host/db")`, then
    `async with store:` (connects, creates or migrates the schema) — or `await store.connect()` and
    `await store.close()`.
    """

    def __init__(self, backend: JobBackend) -> None:
        self.backend = backend

    @classmethod
    def open(cls, url: str) -> JobStore:
        """A store for `url` (`sqlite:///rel.db`, `sqlite:////abs.db`, `postgresql://…`), not connected yet.

        Raises `ConfigurationError` naming the URL (password masked) when the scheme is unknown or the
        PostgreSQL driver is not installed (`pip install swarrow[postgres]`).
        """
        if not url:
            raise ConfigurationError(f"a job store URL must be a non-empty string, got {url!r}")
        scheme = url.partition("://")[0].lower()
        if scheme == "sqlite":
            from swarrow.jobs.sqlite import SqliteBackend

            return cls(SqliteBackend.from_url(url))
        if scheme in ("postgresql", "postgres"):
            from swarrow.jobs.postgres import PostgresBackend

            return cls(PostgresBackend.from_url(url))
        raise ConfigurationError(
            f"unsupported job store URL {mask_store_url(url)!r}: use sqlite:///path/jobs.db "
            "or postgresql://user:password@host:5432/dbname"
        )

    @property
    def url(self) -> str:
        """The store's URL with the password masked."""
        return self.backend.url

    async def connect(self) -> None:
        """Connect, creating the schema on first use and migrating an older one."""
        await self.backend.connect()

    async def close(self) -> None:
        """Release the connection."""
        await self.backend.close()

    async def __aenter__(self) -> JobStore:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def write(self, records: Sequence[JobRecord]) -> None:
        """Upsert records (the tracker's batches); an older record never overwrites a newer one."""
        if records:
            await self.backend.write(records)

    async def status(self, ids: Iterable[str]) -> dict[str, Job | None]:
        """Each id's job, None for an id the store never saw; in the order given."""
        wanted = list(dict.fromkeys(ids))
        asked = {clean_text(i): i for i in wanted}  # an id is stored cleaned; answer under the id asked
        found: dict[str, Job] = {}
        for start in range(0, len(wanted), _CHUNK):
            chunk = [clean_text(i) for i in wanted[start : start + _CHUNK]]
            marks = ", ".join("?" for _ in chunk)
            for row in await self.backend.fetch(f"{_SELECT} WHERE id IN ({marks})", chunk):
                job = Job.from_row(row)
                found[asked.get(job.id, job.id)] = job
        return {job_id: found.get(job_id) for job_id in wanted}

    async def unfinished(self, ids: Iterable[str]) -> list[str]:
        """The ids not finished yet (adt's getUnfinishedJobIdentifiers): running, retrying, or never seen.

        An id the store has no record of counts as unfinished: its message may still wait in the queue.
        """
        return [i for i, job in (await self.status(ids)).items() if job is None or not job.is_finished]

    async def list(
        self,
        *,
        queue: str | None = None,
        state: str | None = None,
        since: datetime | float | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """The most recently updated jobs first, filtered by queue, state and last update ≥ `since`."""
        _check_state(state)
        require_int("limit", limit)
        where, params = self._where(queue, state, since)
        rows = await self.backend.fetch(  # a limit past 64 bits means "all": no database takes it as such
            f"{_SELECT}{where} ORDER BY updated DESC, id LIMIT ?", [*params, min(limit, 2**62)]
        )
        return [Job.from_row(row) for row in rows]

    async def stats(
        self, *, queue: str | None = None, since: datetime | float | None = None, top: int = 5
    ) -> JobStats:
        """Counts by state, p50 and p95 of finished jobs' durations, and the `top` error types."""
        where, params = self._where(queue, None, since)
        by_state: dict[str, int] = {state: 0 for state in JOB_STATES}
        for state, count in await self.backend.fetch(
            f"SELECT state, COUNT(*) FROM swarrow_jobs{where} GROUP BY state", params
        ):
            by_state[state] = int(count)
        timed = f"{where} {'AND' if where else 'WHERE'} finished IS NOT NULL AND duration IS NOT NULL"
        ((n,),) = await self.backend.fetch(f"SELECT COUNT(*) FROM swarrow_jobs{timed}", params)
        n = int(n)
        percentiles: builtins.list[float | None] = []
        for p in (0.50, 0.95):
            if n == 0:
                percentiles.append(None)
                continue
            # Nearest rank: the smallest duration with at least p of the jobs at or below it.
            rank = max(1, -(-n * p // 1))
            rows = await self.backend.fetch(
                f"SELECT duration FROM swarrow_jobs{timed} ORDER BY duration LIMIT 1 OFFSET ?",
                [*params, int(rank) - 1],
            )
            percentiles.append(float(rows[0][0]) if rows else None)
        errors = await self.backend.fetch(
            f"SELECT error_type, COUNT(*) FROM swarrow_jobs{where} {'AND' if where else 'WHERE'} "
            "error_type IS NOT NULL GROUP BY error_type ORDER BY COUNT(*) DESC, error_type LIMIT ?",
            [*params, top],
        )
        return JobStats(
            total=sum(by_state.values()),
            by_state=by_state,
            p50=percentiles[0],
            p95=percentiles[1],
            top_errors=[(str(name), int(count)) for name, count in errors],
        )

    async def prune(
        self, older_than: timedelta | float, *, state: str | None = None, now: float | None = None
    ) -> int:
        """Delete finished jobs last updated more than `older_than` ago (adt's clear-finished); how many.

        `state` limits it to one state (`running` or `retrying` included: jobs a dead worker left behind).
        """
        _check_state(state)
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else float(older_than)
        if not seconds >= 0:
            raise ValueError(f"older_than must be a duration >= 0, got {older_than!r}")
        cutoff = (time.time() if now is None else now) - seconds
        states = sorted(FINAL_STATES) if state is None else [state]
        marks = ", ".join("?" for _ in states)
        return await self.backend.execute(
            f"DELETE FROM swarrow_jobs WHERE updated < ? AND state IN ({marks})", [cutoff, *states]
        )

    @staticmethod
    def _where(
        queue: str | None, state: str | None, since: datetime | float | None
    ) -> tuple[str, builtins.list[Any]]:
        clauses: builtins.list[str] = []
        params: builtins.list[Any] = []
        if queue is not None:
            clauses.append("queue = ?")
            params.append(queue)
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        if since is not None:
            clauses.append("updated >= ?")
            params.append(_seconds(since))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def __repr__(self) -> str:
        return f"JobStore({self.url!r})"
