"""scripts/rabbitmq-cluster.sh: three clustered nodes on loopback, a replicated quorum queue, faults."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import aio_pika
import pytest

if TYPE_CHECKING:
    from conftest import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.integration, pytest.mark.anyio]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq-cluster.sh"


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False)


async def test_three_nodes_run_clustered_on_their_own_ports(cluster: Cluster) -> None:
    status = json.loads(cluster.ctl("cluster_status", "--formatter", "json"))
    assert sorted(status["running_nodes"]) == ["rmq1@localhost", "rmq2@localhost", "rmq3@localhost"]
    assert cluster.up() == [1, 2, 3]
    done = _script("status")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "running: rmq1@localhost rmq2@localhost rmq3@localhost" in done.stdout
    assert _script("url").stdout.strip() == cluster.url(1)
    listeners = cluster.ctl("eval", "rabbit_networking:active_listeners().", node=2)
    assert "5702" in listeners and "5672" not in listeners


async def test_a_quorum_queue_declared_on_one_node_is_served_by_the_others(cluster: Cluster) -> None:
    queue = f"cluster.smoke.{uuid.uuid4().hex[:8]}"
    first = await aio_pika.connect(cluster.node_url(1), timeout=10)
    try:
        channel = await first.channel()
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        third = await aio_pika.connect(cluster.node_url(3), timeout=10)
        try:
            other = await third.channel()
            await other.default_exchange.publish(
                aio_pika.Message(b"hello", message_id="m1", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue,
            )
        finally:
            await third.close()
        second = await aio_pika.connect(cluster.node_url(2), timeout=10)
        try:
            got = await (await (await second.channel()).get_queue(queue)).get(no_ack=True, timeout=10)
            assert got is not None and got.message_id == "m1"
        finally:
            await second.close()
        members = cluster.ctl("list_queues", "name", "members", "--formatter", "json")
        row = next(r for r in json.loads(members) if r["name"] == queue)
        assert sorted(row["members"]) == ["rmq1@localhost", "rmq2@localhost", "rmq3@localhost"]
    finally:
        await (await first.channel()).queue_delete(queue)
        await first.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_kill_then_start_brings_a_node_back_into_the_cluster(cluster: Cluster) -> None:
    await cluster.kill(3)
    assert cluster.up() == [1, 2]
    done = _script("status")
    assert done.returncode == 1 and "rmq3@localhost" in done.stdout and "down" in done.stdout
    await cluster.start(3)
    assert cluster.up() == [1, 2, 3]
    status = json.loads(cluster.ctl("cluster_status", "--formatter", "json", node=3))
    assert len(status["running_nodes"]) == 3


def test_a_bad_node_number_is_a_usage_error() -> None:
    done = _script("kill", "4")
    assert done.returncode == 1
    assert "node number must be 1, 2 or 3 (got '4')" in done.stderr
    assert _script("frobnicate").returncode == 2
