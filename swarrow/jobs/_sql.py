"""The one schema of the job store and its migrations, written once for SQLite and PostgreSQL."""

from __future__ import annotations

import re
from typing import Final, Literal, TypeAlias

__all__ = [
    "COLUMNS",
    "SCHEMA_VERSION",
    "TABLE",
    "VERSION_TABLE",
    "Dialect",
    "migrations",
    "numbered",
    "upsert",
    "upsert_arrays",
]

Dialect: TypeAlias = Literal["sqlite", "postgresql"]

TABLE: Final = "swarrow_jobs"
VERSION_TABLE: Final = "swarrow_jobs_schema"
SCHEMA_VERSION: Final = 2
COLUMNS: Final = (
    "id", "queue", "state", "attempts", "first_seen", "started", "finished", "duration", "updated",
    "host", "pid", "rss_before", "rss_after", "error_type", "error_message", "replays",
)  # fmt: skip

# Times are Unix seconds (UTC) in both databases, so one query text serves both.
_V1 = """
CREATE TABLE IF NOT EXISTS swarrow_jobs (
    id            TEXT PRIMARY KEY,
    queue         TEXT NOT NULL,
    state         TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    first_seen    {real} NOT NULL,
    started       {real} NOT NULL,
    finished      {real},
    duration      {real},
    updated       {real} NOT NULL,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    rss_before    BIGINT,
    rss_after     BIGINT,
    error_type    TEXT,
    error_message TEXT
);
CREATE INDEX IF NOT EXISTS swarrow_jobs_updated ON swarrow_jobs (updated);
CREATE INDEX IF NOT EXISTS swarrow_jobs_state_updated ON swarrow_jobs (state, updated);
CREATE INDEX IF NOT EXISTS swarrow_jobs_queue_updated ON swarrow_jobs (queue, updated);
"""

# A job brought back from its dead-letter queue (`swarrow dead replay`) starts its attempts afresh: the
# replay count orders its records before the attempts do, so the replay's outcome replaces the dead letter.
_V2 = """
ALTER TABLE swarrow_jobs ADD COLUMN replays INTEGER NOT NULL DEFAULT 0
"""

# Migration k brings the schema from version k-1 to k; append, never edit one that shipped.
_MIGRATIONS: Final = (_V1, _V2)


def migrations(dialect: Dialect, current: int) -> list[tuple[int, list[str]]]:
    """The statements to run, per version, to bring a database at `current` up to `SCHEMA_VERSION`."""
    real = "REAL" if dialect == "sqlite" else "DOUBLE PRECISION"
    steps = []
    for version, script in enumerate(_MIGRATIONS, start=1):
        if version > current:
            statements = [s.strip() for s in script.format(real=real).split(";") if s.strip()]
            steps.append((version, statements))
    return steps


def upsert(dialect: Dialect) -> str:
    """Insert a record, or merge it into the row by the rule of `JobRecord` (and `merge_records`).

    The newer of the two (by replays, attempts, started, finished-or-not) gives every column; first_seen is
    the earliest; an error sticks, and an older record's error fills a row that has none (the retrying
    record of attempt 1 may reach the store after the success of attempt 2, from another worker).
    """
    least = "min" if dialect == "sqlite" else "LEAST"
    names = ", ".join(COLUMNS)
    values = ", ".join("?" for _ in COLUMNS)
    newer = (
        "(excluded.replays, excluded.attempts, excluded.started, excluded.state <> 'running') >= "
        "(swarrow_jobs.replays, swarrow_jobs.attempts, swarrow_jobs.started, swarrow_jobs.state <> 'running')"
    )
    keep = ("first_seen", "error_type", "error_message")
    updates = [
        f"{c} = CASE WHEN {newer} THEN excluded.{c} ELSE swarrow_jobs.{c} END"
        for c in COLUMNS[1:]
        if c not in keep
    ]
    updates.append(f"first_seen = {least}(swarrow_jobs.first_seen, excluded.first_seen)")
    # SET expressions all read the row as it was, so error_message can test the old error_type.
    updates.append(
        f"error_type = CASE WHEN {newer} THEN COALESCE(excluded.error_type, swarrow_jobs.error_type) "
        "ELSE COALESCE(swarrow_jobs.error_type, excluded.error_type) END"
    )
    updates.append(
        f"error_message = CASE WHEN {newer} "
        "THEN (CASE WHEN excluded.error_type IS NULL THEN swarrow_jobs.error_message "
        "ELSE excluded.error_message END) "
        "ELSE (CASE WHEN swarrow_jobs.error_type IS NULL THEN excluded.error_message "
        "ELSE swarrow_jobs.error_message END) END"
    )
    return (
        f"INSERT INTO swarrow_jobs ({names}) VALUES ({values}) "
        f"ON CONFLICT (id) DO UPDATE SET {', '.join(updates)}"
    )


# PostgreSQL types of COLUMNS, for one array parameter per column.
_PG_TYPES: Final = (
    "text", "text", "text", "int4", "float8", "float8", "float8", "float8", "float8",
    "text", "int4", "int8", "int8", "text", "text", "int4",
)  # fmt: skip


def upsert_arrays() -> str:
    """PostgreSQL: the upsert of a whole batch as one statement over `unnest` of one array per column.

    A third of the server time of one `executemany` row per job (measured: 25 against 85 µs per row on
    a loaded 2-core machine), which matters when the database shares the workers' cores. The batch must
    hold one row per id (`merge_records`): one statement cannot update a row twice.
    """
    names = ", ".join(COLUMNS)
    arrays = ", ".join(f"${n}::{kind}[]" for n, kind in enumerate(_PG_TYPES, start=1))
    on_conflict = upsert("postgresql").partition(" ON CONFLICT")[2]
    return f"INSERT INTO swarrow_jobs ({names}) SELECT * FROM unnest({arrays}) ON CONFLICT{on_conflict}"


_PLACEHOLDER = re.compile(r"\?")


def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2 …` (the queries here hold no literal question mark)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)
