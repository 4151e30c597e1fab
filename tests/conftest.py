"""Shared fixtures: the anyio backend, a RabbitMQ URL (or a clean skip), unique queue names, brokers."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner, Result
from stuck_threads import pytest_sessionfinish, pytest_unconfigure  # noqa: F401  # hooks, found by name

from swarrow import Broker, MemoryBroker
from swarrow.amqp import AmqpBroker

AMQP_URL = os.environ.get("SWARROW_TEST_URL", "amqp://guest:guest@127.0.0.1:5672/")

_PYTEST_PID = os.getpid()
_real_exit = os._exit


def _exit_guard(code: int) -> None:
    """`os._exit` in the pytest process itself ends the run with that code, 0 reading as green: fail instead.

    (The CLI ends a process whose callback threads hang; run in-process by a test, it once ended the
    unit run of `make test-lowest` at 37% with exit 0, hiding 25 failures.) Forked children exit as usual.
    """
    if os.getpid() != _PYTEST_PID:
        _real_exit(code)
    raise RuntimeError(f"os._exit({code}) called in the pytest process: it would end the run silently")


_exit_guard.__swarrow_real_exit__ = _real_exit  # type: ignore[attr-defined]  # for tests/stuck_threads.py
os._exit = _exit_guard


def _invoke_restoring_the_root_logger(self: CliRunner, *args: Any, **kwargs: Any) -> Result:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return _cli_runner_invoke(self, *args, **kwargs)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


# A CLI run in-process points the root logger at click's runner stream, which click < 8.3.2 closes when the
# run returns: every later run or test that logged then failed with "I/O operation on closed file" (22
# failures of `make test-lowest` on click 8.3.0). Each run leaves the root logger as it found it.
_cli_runner_invoke = CliRunner.invoke
CliRunner.invoke = _invoke_restoring_the_root_logger  # type: ignore[method-assign]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The test broker's URL; skips (or fails with SWARROW_REQUIRE_RABBITMQ=1) when none listens."""
    if not _reachable(AMQP_URL):
        message = f"no RabbitMQ at {AMQP_URL} (run `make rabbitmq`)"
        if os.environ.get("SWARROW_REQUIRE_RABBITMQ") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return AMQP_URL


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    """A queue name unique to this test (integration tests delete it and its retry queues)."""
    return f"test.{request.node.name[:40]}.{uuid.uuid4().hex[:8]}".replace("[", ".").replace("]", "")


async def _delete_family(broker: Broker, queue: str) -> None:
    names = [queue, f"{queue}.dead", *(f"{queue}.retry.{k}" for k in range(1, 21))]
    for name in names:
        await broker.delete_queue(name)


@pytest.fixture
async def amqp_broker(amqp_url: str, queue_name: str) -> AsyncIterator[AmqpBroker]:
    """A connected RabbitMQ broker; `queue_name`, its `.dead` and `.retry.k` queues are deleted after."""
    broker = AmqpBroker(amqp_url, reconnect_interval=0.5)
    await broker.connect()
    try:
        yield broker
    finally:
        await _delete_family(broker, queue_name)
        await broker.close()


@pytest.fixture
def delete_queue_family(amqp_url: str, queue_name: str) -> Iterator[str]:
    """Sync tests declaring through the CLI: `queue_name`, its `.dead` and `.retry.k` queues deleted after."""
    yield queue_name

    async def delete() -> None:
        broker = AmqpBroker(amqp_url)
        await broker.connect()
        try:
            await _delete_family(broker, queue_name)
        finally:
            await broker.close()

    asyncio.run(delete())


@pytest.fixture
def memory_broker() -> MemoryBroker:
    """A fresh in-memory broker."""
    return MemoryBroker("test")


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.integration)])
async def broker(request: pytest.FixtureRequest, queue_name: str) -> AsyncIterator[Broker]:
    """Each provider contract test runs twice: against the in-memory broker and against RabbitMQ."""
    if request.param == "memory":
        yield MemoryBroker("contract")
        return
    url = request.getfixturevalue("amqp_url")
    amqp = AmqpBroker(url, reconnect_interval=0.5)
    await amqp.connect()
    try:
        yield amqp
    finally:
        await _delete_family(amqp, queue_name)
        await amqp.close()


# ---- job stores (swarrow.jobs): a SQLite file per test, a PostgreSQL schema per test ----------------------

# scripts/postgresql.sh starts this server; CI exports the variable.
DEFAULT_POSTGRES_URL = "postgresql://swarrow:swarrow@127.0.0.1:55432/swarrow"
POSTGRES_URL = os.environ.get("SWARROW_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL; a skip on a developer machine without it, a failure in CI (CI=true)."""
    if not _reachable(POSTGRES_URL):
        shown = POSTGRES_URL.replace(":swarrow@", ":***@")
        message = f"no PostgreSQL at {shown} (run scripts/postgresql.sh start)"
        if os.environ.get("CI") == "true" or os.environ.get("SWARROW_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


def _in_a_thread(coroutine: Any) -> Any:
    """Run `coroutine` on its own event loop in another thread: a sync fixture, usable by every test."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """A URL whose tables land in a schema of this test's own (dropped after), so tests never share rows."""
    import asyncpg

    schema = f"test_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    _in_a_thread(run(f"CREATE SCHEMA {schema}"))
    try:
        # asyncpg passes unknown DSN query parameters on as server settings.
        yield f"{postgres_url}?search_path={schema}"
    finally:
        _in_a_thread(run(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite store in this test's temporary directory (absolute path: four slashes)."""
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each contract test runs against both stores."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("postgres_schema_url")
    return url
