"""The embedded job store: stdlib sqlite3 in WAL mode, every call made in a worker thread, off the loop."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread

from swarrow.errors import ConfigurationError
from swarrow.jobs._sql import SCHEMA_VERSION, Dialect, migrations, upsert
from swarrow.jobs.errors import JobStoreError
from swarrow.jobs.model import JobRecord, rows_for_write

__all__ = ["SqliteBackend"]

_UPSERT: Final = upsert("sqlite")
_BUSY_TIMEOUT_S: Final = 5.0


def _path_from_url(url: str) -> str:
    # SQLAlchemy's spelling: sqlite:///relative/jobs.db, sqlite:////absolute/jobs.db.
    rest = url.partition("://")[2]
    if not rest.startswith("/") or rest == "/":
        raise ConfigurationError(
            "a SQLite job store URL names a file: sqlite:///relative/jobs.db or sqlite:////absolute/jobs.db, "
            f"got {url!r}"
        )
    path = rest[1:].partition("?")[0]
    if path == ":memory:":
        raise ConfigurationError(
            "sqlite:///:memory: would keep the jobs in one connection only; name a file: sqlite:///jobs.db"
        )
    return path


class SqliteBackend:
    """One sqlite3 connection used from worker threads under a lock (writes and queries never block the loop).

    A cancelled call (a deadline) returns at once and leaves its thread to finish on its own.

    WAL mode lets readers (`swarrow jobs status`) run while a worker writes; several worker processes
    may share one file (writes wait up to 5 s for the lock). `synchronous=NORMAL`: a power cut may
    lose the last batches, never corrupt the file — tracking is best-effort.
    """

    dialect: Dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.url = f"sqlite:///{self.path}"
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> SqliteBackend:
        """Parse `sqlite:///path`."""
        return cls(_path_from_url(url))

    async def connect(self) -> None:
        """Open the file (created if missing, not its directory), switch to WAL, migrate."""
        await anyio.to_thread.run_sync(self._connect, abandon_on_cancel=True)

    def _connect(self) -> None:
        with self._lock:
            if self._conn is not None:
                return
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise JobStoreError(
                    f"cannot open the job store {self.url}: directory {str(parent)!r} does not exist"
                )
            try:
                conn = sqlite3.connect(
                    self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
                )
            except sqlite3.Error as exc:
                raise JobStoreError(f"cannot open the job store {self.url}: {exc}") from None
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                self._migrate(conn)
            except sqlite3.Error as exc:
                conn.close()
                raise JobStoreError(f"cannot prepare the job store {self.url}: {exc}") from None
            self._conn = conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # one process migrates, the others wait and find it done
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS swarrow_jobs_schema (version INTEGER NOT NULL)")
            (current,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM swarrow_jobs_schema").fetchone()
            if current > SCHEMA_VERSION:
                raise JobStoreError(
                    f"the job store's schema is version {current}, newer than this swarrow knows "
                    f"({SCHEMA_VERSION}): upgrade swarrow"
                )
            for version, statements in migrations("sqlite", current):
                for statement in statements:
                    conn.execute(statement)
                conn.execute("DELETE FROM swarrow_jobs_schema")
                conn.execute("INSERT INTO swarrow_jobs_schema (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Close the connection (a WAL checkpoint happens on the last close)."""
        await anyio.to_thread.run_sync(self._close, abandon_on_cancel=True)

    def _close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._connect()
        conn = self._conn
        if conn is None:  # closed by another thread meanwhile
            raise JobStoreError(f"the job store {self.url} is closed")
        return conn

    async def write(self, records: Sequence[JobRecord]) -> None:
        """Merge per job and upsert in one transaction, in a worker thread."""
        await anyio.to_thread.run_sync(self._write, records, abandon_on_cancel=True)

    def _write(self, records: Sequence[JobRecord]) -> None:
        rows = rows_for_write(records)
        conn = self._connection()
        with self._lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(_UPSERT, rows)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise JobStoreError(
                    f"writing {len(rows)} job record(s) to {self.url} failed: {exc}"
                ) from None

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of a query, read in a worker thread."""
        return await anyio.to_thread.run_sync(self._fetch, sql, params, abandon_on_cancel=True)

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        conn = self._connection()
        with self._lock:
            try:
                return conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise JobStoreError(f"query on {self.url} failed: {exc}") from None

    async def execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run one statement in its own transaction; rows changed."""
        return await anyio.to_thread.run_sync(self._execute, sql, params, abandon_on_cancel=True)

    def _execute(self, sql: str, params: Sequence[Any]) -> int:
        conn = self._connection()
        with self._lock:
            try:
                return conn.execute(sql, tuple(params)).rowcount
            except sqlite3.Error as exc:
                raise JobStoreError(f"statement on {self.url} failed: {exc}") from None
