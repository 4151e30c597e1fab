"""Scenario 1: `kill -9` of a `swarrow consume` worker mid-stream; a second worker finishes the queue."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Chaos

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.anyio]

MESSAGES = 3000
PREFETCH = 100
CONCURRENCY = 10
OPTIONS = ("--prefetch", str(PREFETCH), "--concurrency", str(CONCURRENCY), "--retry-delays", "100ms")


@pytest.mark.timeout(120)
async def test_kill_9_mid_stream_loses_nothing_and_a_second_worker_finishes(chaos: Chaos) -> None:
    await chaos.declare_topology((0.1,))
    published = chaos.ids("kill", MESSAGES)
    await chaos.publish(published)
    env = chaos.worker_env(SWARROW_TEST_SLEEP="0.005")

    first = chaos.consume("record", *OPTIONS, "--no-log", env=env)
    await chaos.wait_until(
        lambda: len(chaos.processed()) >= MESSAGES // 4 or first.returncode is not None,
        timeout=60,
        what="the first worker to be a quarter through",
    )
    assert first.returncode is None, f"the first worker exited early:\n{first.output()[-2000:]}"
    first.send(signal.SIGKILL)
    assert await first.wait(10) == -signal.SIGKILL
    done_by_first = len(chaos.processed())
    assert done_by_first < MESSAGES, "the first worker finished before the kill: not mid-stream"

    second = chaos.consume("record", *OPTIONS, "--no-log", "--stop-when-idle", "1s", env=env)
    assert await second.wait(90) == 0, second.output()[-2000:]

    row, dead = await chaos.settle("1. kill -9 mid-stream, second worker", published, chaos.processed())
    assert row.processed == MESSAGES and row.dead == 0 and row.remaining == 0
    # Only a message whose work was done but whose ack had not reached the broker runs twice: never
    # more than the deliveries the broker had handed out unacked (the prefetch).
    assert row.duplicates <= PREFETCH, (
        f"{row.duplicates} duplicates, more than the {PREFETCH} unacked at most"
    )
