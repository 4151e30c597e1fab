"""Scenario 3: a rolling restart of all three nodes, one at a time, while three workers consume.

Each node is stopped gracefully and started again (the way an upgrade goes); the next one waits
until the restarted node is an online member of the queue again, so the quorum queue keeps a
majority throughout. No worker exits, every id is processed, duplicates are counted.
"""

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import pytest

if TYPE_CHECKING:
    from conftest import Chaos

pytestmark = [pytest.mark.cluster, pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]

MESSAGES = 4_000
WORKER_OPTIONS = ("--concurrency", "2", "--prefetch", "20", "--retry-delays", "500ms")
SLEEP = 0.1  # ~20 msg/s per worker, ~60 in all: the three restarts (~15 s each) land mid-stream


@pytest.mark.timeout(360)
async def test_a_rolling_restart_of_every_node_loses_nothing(chaos: Chaos) -> None:
    cluster = chaos.cluster
    await chaos.declare_topology((0.5,))
    published = chaos.ids("rolling", MESSAGES)
    await chaos.publish(published)
    workers = [chaos.consume(cluster.url(first), *WORKER_OPTIONS, sleep=SLEEP) for first in (1, 2, 3)]
    await chaos.wait_until(
        lambda: len(set(chaos.processed())) >= MESSAGES // 20, timeout=90, what="the first ids processed"
    )

    def online(n: int) -> bool:
        rows = json.loads(cluster.ctl("list_queues", "name", "online", "--formatter", "json"))
        return any(
            row["name"] == chaos.queue and f"rmq{n}@localhost" in row.get("online", []) for row in rows
        )

    progress = []
    for n in (1, 2, 3):
        await cluster.restart(n)
        await chaos.wait_until(
            lambda n=n: anyio.to_thread.run_sync(online, n),  # type: ignore[misc]
            timeout=60,
            what=f"rmq{n} an online member of the queue again",
            interval=0.5,
        )
        progress.append(len(set(chaos.processed())))
        for k, worker in enumerate(workers):
            assert worker.returncode is None, (
                f"worker {k} exited after rmq{n}'s restart:\n{worker.output()[-3000:]}"
            )

    await chaos.wait_processed(published, workers, timeout=200)
    for k, worker in enumerate(workers):
        assert worker.returncode is None, f"worker {k} exited:\n{worker.output()[-3000:]}"
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert await worker.wait(60) == 0, worker.output()[-2000:]
    # As in the leader kill: a retry copy (ids ending in 0) waits in Q.retry.1, and RabbitMQ 3.10.8's
    # at-most-once dead-lettering can drop it when a restarting node held a leader as it expired (seen
    # once, 2026-11-29: 25 retry copies in a clean-clone CI trial, every other id processed): reported.
    row = await chaos.settle(
        "3. rolling restart of the 3 nodes", published, broker_may_drop=lambda i: i.endswith("0")
    )
    print(f"\nprocessed after each restart: {progress}; duplicates {row.duplicates}")
    assert progress[-1] < MESSAGES, "the rolling restart ended after the queue was drained: not mid-stream"
    assert progress[0] < progress[-1], "nothing was processed during the rolling restart"
    assert row.processed + row.remaining + row.lost == MESSAGES and row.dead == 0, row
