"""Scenario 8: a callback that hangs: the time limit frees its slot and the worker keeps consuming
(dramatiq#211/#653: stuck threads run the worker out of capacity)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from callbacks import Recorder, hanging

from processors import default_stack
from swarrow import Consumer, Stack
from swarrow.topology import ERROR_TYPE_HEADER

if TYPE_CHECKING:
    from conftest import Chaos

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.anyio]

CONCURRENCY = 2
DELAYS = (0.05,)


@pytest.mark.timeout(60)
async def test_hanging_callbacks_are_cut_by_the_time_limit_and_consuming_goes_on(chaos: Chaos) -> None:
    await chaos.declare_topology(DELAYS)
    hangers = chaos.ids("hang", CONCURRENCY)  # first in the queue: they take every slot
    normal = chaos.ids("normal", 100)
    await chaos.publish(hangers + normal)
    broker = chaos.broker()
    recorder = Recorder()
    provider = broker.provider(chaos.queue, prefetch=10)
    stack = Stack(
        *default_stack(provider=provider, publisher=broker.publisher(), signals=False, log=False,
                       time_limit=0.5, retry_attempts=len(DELAYS), retry_delays=DELAYS),
        callback=hanging(recorder),
    )  # fmt: skip
    consumer = Consumer(provider, stack, concurrency=CONCURRENCY)

    async def settled() -> bool:
        return len(recorder.done) == len(normal) and await chaos.ready(chaos.dead) == len(hangers)

    reason = await chaos.run_until(consumer, settled, timeout=30, what="hung messages dead-lettered")
    assert reason.code == "test"
    row, dead = await chaos.settle(
        "8. hanging callback, 0.5 s time limit", hangers + normal, recorder.processed
    )
    assert row.processed == len(normal) and row.dead == len(hangers) and row.duplicates == 0
    assert {d.headers[ERROR_TYPE_HEADER] for d in dead} == {"swarrow.errors.TimeLimitExceeded"}
    # Each hung message was cut twice (first call and its one retry), and nothing else hung.
    assert sorted(m for m in recorder.started if m.startswith("hang")) == sorted(hangers * 2)
