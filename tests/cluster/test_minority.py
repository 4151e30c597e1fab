"""Scenario 5: two of the three nodes stopped — the quorum queue has no majority and cannot deliver.

Workers must keep trying without crashing, every worker's `/readyz` must answer 503 (those that
lost their node cannot consume again; those whose node survived hold a consumer that receives
nothing while messages are ready), and consumption must resume once a second node is back.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import pytest

if TYPE_CHECKING:
    from conftest import Chaos

pytestmark = [pytest.mark.cluster, pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]

MESSAGES = 3_500
WORKER_OPTIONS = ("--concurrency", "2", "--prefetch", "20", "--retry-delays", "500ms")
SLEEP = 0.04


@pytest.mark.timeout(360)
async def test_a_minority_makes_workers_unready_and_they_resume_when_a_node_returns(chaos: Chaos) -> None:
    cluster = chaos.cluster
    await chaos.declare_topology((0.5,))
    published = chaos.ids("minority", MESSAGES)
    await chaos.publish(published)
    workers = [chaos.consume(cluster.url(first), *WORKER_OPTIONS, sleep=SLEEP) for first in (1, 2, 3)]

    async def statuses() -> list[int]:
        return [await anyio.to_thread.run_sync(chaos.http_status, w.readyz) for w in workers]

    async def all_ready() -> bool:
        return all(status == 200 for status in await statuses())

    await chaos.wait_until(all_ready, timeout=60, what="every worker's /readyz at 200")
    await chaos.wait_until(
        lambda: len(set(chaos.processed())) >= MESSAGES // 20, timeout=90, what="the first ids processed"
    )

    await cluster.stop(2)
    await cluster.stop(3)
    stopped_at = time.monotonic()

    async def all_unready() -> bool:
        for k, worker in enumerate(workers):
            assert worker.returncode is None, f"worker {k} exited in the minority:\n{worker.output()[-3000:]}"
        return all(status == 503 for status in await statuses())

    await chaos.wait_until(all_unready, timeout=45, what=f"every /readyz at 503 (last: {await statuses()})")
    unready_after = time.monotonic() - stopped_at
    stalled_at = len(set(chaos.processed()))
    await anyio.sleep(5)  # the minority lasts a while: nobody crashes, nothing is consumed
    for k, worker in enumerate(workers):
        assert worker.returncode is None, f"worker {k} exited in the minority:\n{worker.output()[-3000:]}"
    assert len(set(chaos.processed())) - stalled_at <= 3 * 20, "a leaderless quorum queue kept delivering"

    await cluster.start(2)
    back_at = time.monotonic()
    await chaos.wait_until(all_ready, timeout=60, what="every /readyz at 200 once a majority is back")
    ready_again_after = time.monotonic() - back_at
    await chaos.wait_processed(published, workers, timeout=200)
    for k, worker in enumerate(workers):
        assert worker.returncode is None, f"worker {k} exited:\n{worker.output()[-3000:]}"
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert await worker.wait(60) == 0, worker.output()[-2000:]
    row = await chaos.settle("5. minority (2 of 3 nodes stopped), then a node back", published)
    print(
        f"\nunready {unready_after:.1f} s after the second stop; ready again {ready_again_after:.1f} s after "
        f"a node returned; {stalled_at} processed at the stall; duplicates {row.duplicates}"
    )
    assert stalled_at < MESSAGES, "the minority came after the end: not mid-stream"
    assert row.processed + row.remaining == MESSAGES and row.dead == 0, row
