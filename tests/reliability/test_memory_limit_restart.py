"""Scenario 9: a leaking callback: the worker exits at the memory limit with the documented code (0),
and restarted workers finish the queue without losing or repeating a message."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from swarrow.cli import EXIT_OK

if TYPE_CHECKING:
    from conftest import Chaos

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.anyio]

MESSAGES = 80
LEAK_MB = 4
LIMIT = "150MiB"  # an idle worker sits well below (~50-70 MiB); 4 MiB a message crosses it after ~20
MAX_WORKERS = 12


@pytest.mark.timeout(120)
async def test_leaking_worker_exits_at_the_memory_limit_and_restarts_finish_the_queue(chaos: Chaos) -> None:
    await chaos.declare_topology((0.1,))
    published = chaos.ids("leak", MESSAGES)
    await chaos.publish(published)
    # 20 ms of work a message: the limit layer reads RSS at most every 10 ms, so it sees each step.
    env = chaos.worker_env(SWARROW_TEST_LEAK_MB=str(LEAK_MB), SWARROW_TEST_SLEEP="0.02")
    options = ("--concurrency", "2", "--prefetch", "10", "--retry-delays", "100ms", "--memory-limit", LIMIT)

    stopped_by_memory = 0
    for _ in range(MAX_WORKERS):
        if set(chaos.processed()) >= set(published):
            break
        worker = chaos.consume("leak", *options, "--stop-when-idle", "1s", env=env)
        code = await worker.wait(60)
        output = worker.output()
        assert code == EXIT_OK, f"worker exited {code}:\n{output[-2000:]}"
        if "memory_limit" in output:
            stopped_by_memory += 1
    assert set(chaos.processed()) >= set(published), f"{MAX_WORKERS} workers did not finish the queue"
    assert stopped_by_memory >= 2, "the memory limit never stopped a worker: the leak was too small"

    row, _ = await chaos.settle("9. memory leak, exit at limit, restart", published, chaos.processed())
    assert row.processed == MESSAGES
    assert row.duplicates == 0, "a memory-limit stop is graceful: in-flight messages are acked, not redone"
