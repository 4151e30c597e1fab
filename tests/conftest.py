"""Shared fixtures: the anyio backend, a RabbitMQ URL (or a clean skip), unique queue names, brokers."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from swarrow import Broker, MemoryBroker
from swarrow.amqp import AmqpBroker

AMQP_URL = os.environ.get("SWARROW_TEST_URL", "amqp://guest:guest@127.0.0.1:5672/")


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
