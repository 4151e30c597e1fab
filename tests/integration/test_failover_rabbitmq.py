"""Several broker URLs against the real RabbitMQ: the node rotation at start and after a lost connection.

The second "node" of each URL is a port nothing listens on, so the shared broker on 5672 stands in
for the live nodes of a cluster (tests/cluster proves the same on a real 3-node cluster). These
tests also prove that the aio-pika hook `FailoverConnection` relies on (`_on_connection_close` on
every failed attempt) still fires with the installed aio-pika: without it a worker would retry the
dead node forever.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import uuid
from urllib.parse import urlsplit

import anyio
import pytest
from prometheus_client import CollectorRegistry

from processors import AckProcessor
from swarrow import BrokerUnavailableError, Consumer, Layer, Message, Stack
from swarrow.amqp import AmqpBroker
from swarrow.metrics import SwarrowMetrics

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

RABBITMQCTL = ["rabbitmqctl", "-q", "-n", os.environ.get("SWARROW_TEST_NODE", "rabbit@localhost")]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: connecting is refused


def _with_nodes(amqp_url: str, *authorities: str) -> str:
    parts = urlsplit(amqp_url)
    userinfo = parts.netloc.rpartition("@")[0]
    return f"{parts.scheme}://{userinfo}@{','.join(authorities)}{parts.path or '/'}"


def _live(amqp_url: str) -> str:
    return urlsplit(amqp_url).netloc.rpartition("@")[2]


async def test_start_skips_a_refusing_node_and_says_where_it_is(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"127.0.0.1:{_dead_port()}"
    broker = AmqpBroker(_with_nodes(amqp_url, dead, _live(amqp_url)), shuffle=False)
    with caplog.at_level(logging.INFO, logger="swarrow.amqp"):
        await broker.connect()
    try:
        assert broker.is_connected
        assert broker.node.endswith(f"@{_live(amqp_url)}/")
        assert ":***@" in broker.node and "guest:guest" not in broker.node
        messages = [r.getMessage() for r in caplog.records if r.name.startswith("swarrow")]
        assert any(f"cannot connect to amqp://guest:***@{dead}/" in m for m in messages), messages
        assert any(f"connected to amqp://guest:***@{_live(amqp_url)}/" in m for m in messages), messages
        assert not any("guest:guest" in m for m in messages)
    finally:
        await broker.close()


async def test_every_node_refusing_is_broker_unavailable_naming_each_masked() -> None:
    first, second = _dead_port(), _dead_port()
    broker = AmqpBroker(f"amqp://app:s3cr%2Ft@127.0.0.1:{first},127.0.0.1:{second}/", node_timeout=2)
    with pytest.raises(BrokerUnavailableError) as raised:
        await broker.connect()
    text = str(raised.value)
    assert "cannot connect to any of the 2 nodes of amqp://app:***@" in text
    assert f"127.0.0.1:{first}:" in text and f"127.0.0.1:{second}:" in text
    assert "s3cr" not in text


async def test_start_order_is_random_so_workers_spread() -> None:
    # With every node refusing, the error lists the nodes in the order tried: it must vary.
    ports = [_dead_port() for _ in range(3)]
    url = "amqp://guest:guest@" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/"
    firsts = set()
    for _ in range(12):
        with pytest.raises(BrokerUnavailableError) as raised:
            await AmqpBroker(url, node_timeout=2).connect()
        text = str(raised.value).split(": ", 1)[1]
        firsts.add(min(ports, key=lambda p: text.find(f"127.0.0.1:{p}:")))
    assert len(firsts) >= 2, "every start tried the same node first"


async def test_a_lost_connection_fails_over_consumes_again_and_is_counted(
    amqp_url: str, queue_name: str, amqp_broker: AmqpBroker, caplog: pytest.LogCaptureFixture
) -> None:
    await amqp_broker.declare_queue(queue_name)
    name = f"swarrow-failover-{uuid.uuid4().hex[:8]}"
    dead = f"127.0.0.1:{_dead_port()}"
    broker = AmqpBroker(
        _with_nodes(amqp_url, _live(amqp_url), dead),
        shuffle=False,
        reconnect_interval=0.3,
        connection_name=name,
    )
    provider = broker.provider(queue_name, prefetch=10)
    publisher = amqp_broker.publisher()
    seen: list[str] = []
    registry_metrics = SwarrowMetrics(CollectorRegistry(), process_metrics=False)

    async def handle(message: Message) -> bool:
        seen.append(message.message_id or "")
        return True

    consumer = Consumer(
        provider, Stack(Layer(AckProcessor, provider=provider), callback=handle), concurrency=2
    )
    with caplog.at_level(logging.INFO, logger="swarrow.amqp"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            for n in range(5):
                await publisher.publish(Message(b"x", message_id=f"before-{n}"), queue_name)
            with anyio.fail_after(20):
                while len(seen) < 5:
                    await anyio.sleep(0.05)
            channels_before = provider._underlay
            closed = _close_connections(name)
            assert closed == 1
            with anyio.fail_after(20):
                while not (broker.failovers == 1 and provider.is_consuming):
                    await anyio.sleep(0.05)
            for n in range(5):
                await publisher.publish(Message(b"x", message_id=f"after-{n}"), queue_name)
            with anyio.fail_after(20):
                while len(set(seen)) < 10:
                    await anyio.sleep(0.05)
            registry_metrics.count_failovers(broker, broker.failovers)
            registry_metrics.count_failovers(broker, broker.failovers)  # a second layer: counted once
            consumer.control.stop("test", "done")
    await broker.close()
    assert provider._underlay is not channels_before, "consumption did not move to a new channel"
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("swarrow")]
    assert any(f"trying amqp://guest:***@{dead}/ next" in m for m in messages), messages
    assert any("(failover 1)" in m for m in messages), messages
    assert registry_metrics.registry.get_sample_value("swarrow_connection_failovers_total") == 1.0


def _close_connections(name: str) -> int:
    """Have the broker close our connection(s) named `name`, as a dying node would."""
    listing = subprocess.run(
        [*RABBITMQCTL, "list_connections", "pid", "client_properties", "--no-table-headers"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if name in line]
    for pid in pids:
        subprocess.run(
            [*RABBITMQCTL, "close_connection", pid, "swarrow failover test"],
            capture_output=True, timeout=60, check=True,
        )  # fmt: skip
    return len(pids)
