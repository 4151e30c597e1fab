"""Scenario 6: a poison message crashes the callback on every delivery: it ends in Q.dead after the
limit and never loops forever (faststream#1488/#1657, taskiq-aio-pika#35), on a classic queue with
broker-delayed retries and on a quorum queue with x-delivery-limit (broker-side, and swarrow's own
delivery-limit guard reading x-delivery-count)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from callbacks import Recorder, poisoned

from processors import default_stack
from swarrow import Consumer, Stack
from swarrow.topology import ATTEMPTS_HEADER, ERROR_MESSAGE_HEADER, ERROR_TYPE_HEADER

if TYPE_CHECKING:
    from conftest import Chaos

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.anyio]

POISON = 5
GOOD = 50


async def _run(chaos: Chaos, scenario: str, **stack_options: Any) -> tuple[Counter[str], list[Any]]:
    poison, good = chaos.ids("poison", POISON), chaos.ids("good", GOOD)
    await chaos.publish(poison + good)
    broker = chaos.broker()
    recorder = Recorder()
    provider = broker.provider(chaos.queue, prefetch=50)
    stack = Stack(
        *default_stack(
            provider=provider, publisher=broker.publisher(), signals=False, log=False, **stack_options
        ),
        callback=poisoned(recorder),
    )
    consumer = Consumer(provider, stack, concurrency=5)

    async def settled() -> bool:
        return len(recorder.done) == GOOD and await chaos.ready(chaos.dead) == POISON

    reason = await chaos.run_until(consumer, settled, timeout=30, what=f"{POISON} poison messages in Q.dead")
    assert reason.code == "test"
    row, dead = await chaos.settle(scenario, poison + good, recorder.processed)
    assert row.processed == GOOD and row.dead == POISON and row.remaining == 0
    assert sorted(d.message_id for d in dead) == poison
    calls = Counter(m for m in recorder.started if m.startswith("poison"))
    return calls, dead


@pytest.mark.timeout(60)
async def test_poison_message_is_retried_then_dead_lettered_with_the_reason(chaos: Chaos) -> None:
    delays = (0.05, 0.05)
    await chaos.declare_topology(delays)
    calls, dead = await _run(
        chaos, "6a. poison, classic queue, 2 retries", retry_attempts=len(delays), retry_delays=delays
    )
    assert set(calls.values()) == {len(delays) + 1}, f"each poison message runs exactly 3 times: {calls}"
    for message in dead:
        assert message.headers[ERROR_TYPE_HEADER] == "RuntimeError"
        assert "poison message" in message.headers[ERROR_MESSAGE_HEADER]
        assert message.headers[ATTEMPTS_HEADER] == len(delays) + 1


@pytest.mark.timeout(60)
async def test_poison_message_on_a_quorum_queue_stops_at_the_broker_delivery_limit(chaos: Chaos) -> None:
    limit = 2
    await chaos.declare(chaos.dead)
    await chaos.declare(
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": limit,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": chaos.dead,
        }
    )
    # No swarrow retry: a failure is requeued with basic.reject, which the quorum queue counts.
    calls, dead = await _run(
        chaos, "6b. poison, quorum x-delivery-limit (broker)", retry=False, requeue_on_error=True
    )
    assert set(calls.values()) == {limit + 1}, f"the broker allows {limit} redeliveries: {calls}"
    assert all(d.headers.get("x-first-death-reason") == "delivery_limit" for d in dead), dead[0].headers


@pytest.mark.timeout(60)
async def test_poison_message_on_a_quorum_queue_stops_at_swarrows_delivery_limit(chaos: Chaos) -> None:
    await chaos.declare(chaos.dead)
    await chaos.declare(arguments={"x-queue-type": "quorum"})  # no broker limit: unbounded by itself
    calls, dead = await _run(
        chaos, "6c. poison, quorum + --delivery-limit 3", retry=False, requeue_on_error=True, delivery_limit=3
    )
    assert set(calls.values()) == {3}, f"delivery_limit=3 calls the callback 3 times at most: {calls}"
    for message in dead:
        assert message.headers[ERROR_TYPE_HEADER] == "swarrow.DeliveryLimitExceeded"
        assert "x-delivery-count=3" in message.headers[ERROR_MESSAGE_HEADER]
