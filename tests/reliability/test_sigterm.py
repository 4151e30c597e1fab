"""Scenario 4: SIGTERM with slow messages in flight: they finish and are acked, exit 0, none redelivered."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Chaos

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.anyio]

MESSAGES = 40
CONCURRENCY = 10
SLOW = 1.5


@pytest.mark.timeout(60)
async def test_sigterm_lets_in_flight_messages_finish_and_acks_them(chaos: Chaos) -> None:
    await chaos.declare_topology((0.1,))
    published = chaos.ids("term", MESSAGES)
    await chaos.publish(published)
    worker = chaos.consume(
        "record",
        *("--prefetch", "20", "--concurrency", str(CONCURRENCY), "--retry-delays", "100ms"),
        *("--grace-period", "30s"),
        env=chaos.worker_env(SWARROW_TEST_SLEEP=str(SLOW)),
    )
    await chaos.wait_until(
        lambda: len(chaos.started()) >= CONCURRENCY or worker.returncode is not None,
        timeout=30,
        what=f"{CONCURRENCY} slow messages in flight",
    )
    assert not chaos.processed(), "a slow message finished before SIGTERM: the test would prove nothing"
    signalled = time.monotonic()
    worker.send(signal.SIGTERM)
    code = await worker.wait(SLOW + 15)
    stopped_after = time.monotonic() - signalled
    assert code == 0, worker.output()[-2000:]

    processed, started = chaos.processed(), chaos.started()
    row, _ = await chaos.settle("4. SIGTERM with slow messages in flight", published, processed)
    # Everything that started finished (nothing cancelled mid-way), nothing new started after the
    # signal, and what finished was acked: not one of them is back in the queue.
    assert sorted(processed) == sorted(started)
    assert len(processed) >= CONCURRENCY
    assert row.processed + row.remaining == MESSAGES and row.dead == 0
    assert row.duplicates == 0, "a message that finished before the exit was redelivered"
    assert stopped_after < SLOW + 10
