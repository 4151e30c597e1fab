"""Readiness notices a consumer the broker does not feed while its queue holds ready messages.

A standby consumer of a single-active-consumer queue is the single-node stand-in for a quorum queue
without a majority (tests/cluster/test_minority.py): registered, channel open, nothing delivered.
"""

from __future__ import annotations

import aio_pika
import anyio
import pytest

from swarrow.amqp import AmqpBroker

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def _until(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


async def test_a_fed_nothing_consumer_is_not_ready_until_deliveries_flow(
    amqp_broker: AmqpBroker, amqp_url: str, queue_name: str
) -> None:
    await amqp_broker.declare_queue(queue_name, arguments={"x-single-active-consumer": True})
    other = await aio_pika.connect(amqp_url)
    try:
        channel = await other.channel()
        await channel.set_qos(prefetch_count=1)
        for n in range(5):
            await channel.default_exchange.publish(
                aio_pika.Message(b"x", message_id=f"m{n}"), routing_key=queue_name
            )
        held: list[aio_pika.abc.AbstractIncomingMessage] = []
        queue = await channel.get_queue(queue_name)
        await queue.consume(held.append)  # the active consumer: holds one, never acks
        await _until(lambda: len(held) == 1, 10, "the active consumer's delivery")

        provider = AmqpBroker(amqp_url).provider(queue_name, prefetch=10, stall_check_interval=0.3)
        await provider.start()
        try:
            assert provider.consumer_registered
            await _until(lambda: provider.stalled, 5, "the standby consumer reported stalled")
            assert not provider.is_consuming and provider.delivered == 0

            await channel.close()  # the active consumer goes (its message back): ours is active and fed
            await _until(lambda: provider.delivered > 0, 10, "deliveries to our consumer")
            await _until(lambda: not provider.stalled, 5, "ready again once deliveries flow")
            assert provider.is_consuming
        finally:
            await provider.close()
            await provider.broker.close()
    finally:
        await other.close()


async def test_an_idle_consumer_of_an_empty_queue_stays_ready(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    await amqp_broker.declare_queue(queue_name)
    provider = amqp_broker.provider(queue_name, prefetch=10, stall_check_interval=0.2)
    await provider.start()
    try:
        await anyio.sleep(1.0)  # several check intervals with nothing delivered: an empty queue is no stall
        assert provider.is_consuming and not provider.stalled
    finally:
        await provider.close()
