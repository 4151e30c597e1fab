"""Scenario 3: the queue is deleted and re-declared under a running consumer (server-sent basic.cancel).

aio-pika#334: a consumer cancelled by the server is never restored. Here the deliveries the
consumer already holds when the queue goes away are finished (their acks must not crash it), the
provider notices the cancel, consumes again once the queue is back, and processes the new
messages — the same `Consumer.run()`, never restarted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from callbacks import Recorder

from processors import default_stack
from swarrow import Consumer, Message, Stack

if TYPE_CHECKING:
    from conftest import Chaos

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.anyio]

HELD = 20  # all delivered before the delete: none of them is destroyed with the queue
AFTER = 300
CONCURRENCY = 5


@pytest.mark.timeout(60)
async def test_consumer_outlives_its_queue_being_deleted_and_declared_again(chaos: Chaos) -> None:
    await chaos.declare_topology((0.1,))
    broker = chaos.broker()
    before = chaos.ids("before-delete", HELD)
    after = chaos.ids("after-redeclare", AFTER)
    await chaos.publish(before)

    recorder = Recorder()
    gate = anyio.Event()
    holding = 0

    async def callback(message: Message) -> None:
        nonlocal holding
        if (message.message_id or "").startswith("before"):
            holding += 1
            await gate.wait()  # held in flight while the queue is deleted
        await recorder(message)

    provider = broker.provider(chaos.queue, prefetch=100)
    stack = Stack(
        *default_stack(provider=provider, publisher=broker.publisher(), signals=False, retry_delays=(0.1,),
                       retry_attempts=1),
        callback=callback,
    )  # fmt: skip
    consumer = Consumer(provider, stack, concurrency=CONCURRENCY)
    cancelled_seen = False

    async def delete_and_redeclare() -> None:
        nonlocal cancelled_seen

        async def all_held() -> bool:
            return holding == CONCURRENCY and await chaos.ready() == 0

        await chaos.wait_until(all_held, timeout=15, what=f"{HELD} deliveries held, {CONCURRENCY} in flight")
        await chaos.delete(chaos.queue)
        await chaos.wait_until(
            lambda: not provider.is_consuming, timeout=10, what="the provider to see basic.cancel"
        )
        cancelled_seen = True
        gate.set()  # the held deliveries finish and are acked after their queue is gone
        await chaos.wait_until(lambda: len(recorder.done) == HELD, timeout=10, what="the held messages done")
        await chaos.declare()
        await chaos.wait_until(
            lambda: provider.is_consuming, timeout=15, what="the provider consuming the new queue"
        )
        await chaos.publish(after)

    reason = await chaos.run_until(
        consumer,
        lambda: len(recorder.done) == HELD + AFTER,
        timeout=45,
        what="every message before and after the re-declare processed",
        during=delete_and_redeclare,
    )
    assert reason.code == "test", "the consumer must not have stopped or crashed on its own"
    assert cancelled_seen
    row, _ = await chaos.settle("3. queue deleted and re-declared", before + after, recorder.processed)
    assert row.processed == HELD + AFTER and row.duplicates == 0
