"""The shared job store: PostgreSQL through asyncpg, for workers on several hosts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, unquote, urlsplit

import anyio

from swarrow.errors import ConfigurationError
from swarrow.jobs._sql import SCHEMA_VERSION, Dialect, migrations, numbered, upsert_arrays
from swarrow.jobs.errors import JobStoreError, mask_store_url
from swarrow.jobs.model import JobRecord, rows_for_write

if TYPE_CHECKING:
    import asyncpg

__all__ = ["PostgresBackend"]

_UPSERT: Final = upsert_arrays()
# Any constant both sides agree on: serialises first-use migrations of workers that start together.
_MIGRATION_LOCK: Final = 0x5377_6172_726F_77  # "Swarrow"
_CONNECT_TIMEOUT_S: Final = 5.0
_COMMAND_TIMEOUT_S: Final = 30.0


def _driver() -> Any:
    try:
        import asyncpg
    except ImportError:
        raise ConfigurationError(
            "a postgresql:// job store needs the asyncpg driver: pip install 'swarrow[postgres]'"
        ) from None
    return asyncpg


class PostgresBackend:
    """One asyncpg connection, reconnected on the next call after it broke (a restart, a failover).

    asyncpg because it is the fastest maintained PostgreSQL driver for asyncio (binary protocol,
    prepared statements, arrays as parameters), and the consumer already runs on asyncio.
    Calls are serialised on the connection; the tracker writes from one task, the CLI asks one question
    at a time.
    """

    dialect: Dialect = "postgresql"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.url = mask_store_url(dsn)
        self._conn: asyncpg.Connection | None = None
        self._lock = anyio.Lock()
        self._migrated = False

    @classmethod
    def from_url(cls, url: str) -> PostgresBackend:
        """Parse `postgresql://user:password@host:port/dbname` (`postgres://` works too)."""
        _driver()
        rest = url.partition("://")[2]
        if not rest or rest == "/":
            raise ConfigurationError(
                f"a PostgreSQL job store URL names a host and a database, got {mask_store_url(url)!r}"
            )
        _check_ports(url)
        dsn = _encoded_credentials(url)
        try:
            urlsplit(dsn)  # what asyncpg reads it with: fail now, not at every connect
        except ValueError as exc:
            raise ConfigurationError(
                f"a PostgreSQL job store URL that does not parse ({exc}): {mask_store_url(url)!r}"
            ) from None
        return cls(dsn)

    async def connect(self) -> None:
        """Connect and migrate the schema under an advisory lock."""
        async with self._lock:
            await self._connection()

    async def _connection(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        asyncpg = _driver()
        try:
            conn = await asyncpg.connect(
                self.dsn, timeout=_CONNECT_TIMEOUT_S, command_timeout=_COMMAND_TIMEOUT_S
            )
        except TimeoutError:
            raise JobStoreError(
                f"cannot connect to the job store {self.url}: no answer within {_CONNECT_TIMEOUT_S:g} s"
            ) from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise JobStoreError(
                f"cannot connect to the job store {self.url}: {_reason(exc, self.dsn)}"
            ) from None
        try:
            if not self._migrated:
                await self._migrate(conn)
                self._migrated = True
        except BaseException:
            conn.terminate()  # at once: awaiting a close here would itself be cancelled by a deadline
            raise
        self._conn = conn
        return conn

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS swarrow_jobs_schema (version INTEGER NOT NULL)"
                )
                current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM swarrow_jobs_schema")
                if current > SCHEMA_VERSION:
                    raise JobStoreError(
                        f"the job store's schema is version {current}, newer than this swarrow knows "
                        f"({SCHEMA_VERSION}): upgrade swarrow"
                    )
                for version, statements in migrations("postgresql", current):
                    for statement in statements:
                        await conn.execute(statement)
                    await conn.execute("DELETE FROM swarrow_jobs_schema")
                    await conn.execute("INSERT INTO swarrow_jobs_schema (version) VALUES ($1)", version)
        except JobStoreError:
            raise
        except Exception as exc:
            raise JobStoreError(
                f"cannot prepare the job store {self.url}: {_reason(exc, self.dsn)}"
            ) from None

    async def close(self) -> None:
        """Close the connection (bounded: a dead server does not hold the caller; cancelled, it drops it)."""
        conn = self._conn
        try:
            async with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None and not conn.is_closed():
                    await conn.close(timeout=2)
        except BaseException as exc:  # a server that does not answer, or the caller's deadline
            self._conn = None
            if conn is not None:
                conn.terminate()
            if not isinstance(exc, Exception):
                raise

    async def _run(self, what: str, call: Any) -> Any:
        async with self._lock:
            conn = await self._connection()
            try:
                return await call(conn)
            except JobStoreError:
                raise
            except BaseException as exc:
                # Cancelled or failed mid-call, the connection may sit inside a transaction: never reuse it.
                self._conn = None
                conn.terminate()
                if not isinstance(exc, Exception):
                    raise
                raise JobStoreError(
                    f"{what} on the job store {self.url} failed: {_reason(exc, self.dsn)}"
                ) from None

    async def write(self, records: Sequence[JobRecord]) -> None:
        """Merge per job and upsert the batch in one statement (`unnest` of one array per column)."""
        rows = rows_for_write(records)

        columns = list(zip(*rows, strict=True)) if rows else []

        async def call(conn: asyncpg.Connection) -> None:
            await conn.execute(_UPSERT, *columns)  # one statement, its own transaction

        await self._run(f"writing {len(rows)} job record(s)", call)

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of a query."""

        async def call(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in await conn.fetch(numbered(sql), *params)]

        result: list[tuple[Any, ...]] = await self._run("a query", call)
        return result

    async def execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run one statement; rows changed (from the command tag, `DELETE 12`)."""

        async def call(conn: asyncpg.Connection) -> str:
            return str(await conn.execute(numbered(sql), *params))

        tag: str = await self._run("a statement", call)
        last = tag.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0


def _encoded_credentials(url: str) -> str:
    """`url` with user and password percent-encoded, so a raw password holding `/ # ? @ :` works.

    The credentials end at the last `@`, as in swarrow's amqp:// URLs; asyncpg would split at the
    first `/` and read the rest of the password as a port. Already encoded ones stay as they are.
    """
    scheme, separator, rest = url.partition("://")
    at = rest.rfind("@")
    if at < 0:
        return url
    user, colon, password = rest[:at].partition(":")
    credentials = quote(unquote(user), safe="") + (":" + quote(unquote(password), safe="") if colon else "")
    return f"{scheme}{separator}{credentials}@{rest[at + 1 :]}"


def _check_ports(url: str) -> None:
    """Refuse a port that is not a number in 1-65535 now (asyncpg would say `invalid literal for int()`)."""
    rest = url.partition("://")[2]
    hosts = re.split(r"[/?#]", rest[rest.rfind("@") + 1 :], maxsplit=1)[0]  # credentials end at the last @
    for host in hosts.split(","):
        port = host.rpartition("]")[2] if host.startswith("[") else host
        if ":" not in port:
            continue
        port = port.rpartition(":")[2]
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigurationError(
                f"a PostgreSQL job store URL has port {port!r}, not a number in 1-65535: "
                f"{mask_store_url(url)!r}"
            )


def _reason(exc: BaseException, dsn: str) -> str:
    """The driver's message, with the URL's password masked should it echo it."""
    text = str(exc) or type(exc).__name__
    password = dsn.partition("://")[2].rpartition("@")[0].partition(":")[2] if "@" in dsn else ""
    for shape in (password, unquote(password)):  # as written in the URL, and as sent to the server
        if shape and shape in text:
            text = text.replace(shape, "***")
    return text
