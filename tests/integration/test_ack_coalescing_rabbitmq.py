"""Ack coalescing against the real RabbitMQ: no 406, no double ack, a crash before a flush only redelivers."""

from __future__ import annotations

import random

import anyio
import pytest

from swarrow import Consumer, Message, Stack
from swarrow.amqp import AmqpBroker, AmqpMessageProvider
from swarrow.stack import Layer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def _publish(broker: AmqpBroker, queue: str, count: int) -> list[str]:
    ids = [f"m{i}" for i in range(count)]
    publisher = broker.publisher()
    try:
        async with anyio.create_task_group() as tg:
            for chunk in range(0, count, 100):

                async def send(part: list[str]) -> None:
                    for message_id in part:
                        message = Message(b"x" * 100, message_id=message_id, delivery_mode=2)
                        await publisher.publish(message, queue)

                tg.start_soon(send, ids[chunk : chunk + 100])
    finally:
        await publisher.close()
    return ids


def _abort_transport(broker: AmqpBroker) -> None:
    """Drop the TCP connection without a word to the broker, as a killed process would."""
    connection = broker._connection
    assert connection is not None and connection.transport is not None
    # aiormq keeps its StreamWriter in the writer task's frame
    writer_task = connection.transport.connection._writer_task  # type: ignore[attr-defined]
    assert writer_task is not None
    writer = writer_task.get_coro().cr_frame.f_locals["writer"]
    writer.transport.abort()


class AckOrReject:
    """AckProcessor's contract in a few lines: ack on return, reject (not requeued) on an exception."""

    def __init__(self, inner: object, /, *, provider: AmqpMessageProvider) -> None:
        self.inner = inner
        self.provider = provider

    async def __call__(self, message: Message, /) -> bool:
        try:
            keep_going: bool = await self.inner(message)  # type: ignore[operator]
        except ValueError:
            await self.provider.reject(message, requeue=False)
            return True
        await self.provider.ack(message)
        return keep_going


async def test_coalesced_acks_with_rejects_and_out_of_order_finishes_empty_the_queue(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    await amqp_broker.declare_queue(queue_name)
    ids = await _publish(amqp_broker, queue_name, 2000)
    provider = amqp_broker.provider(queue_name, prefetch=100)  # coalescing on by default: batch 50
    assert provider.ack_batch_size == 50
    seen: list[str] = []
    redelivered = 0
    rng = random.Random(7)

    async def handle(message: Message) -> bool:
        nonlocal redelivered
        seen.append(message.message_id or "")
        redelivered += message.redelivered
        if rng.random() < 0.3:
            await anyio.sleep(rng.random() / 1000)  # finishes out of order
        if len(seen) % 97 == 0:
            raise ValueError("rejected on its own, in the middle of a batch")
        return len(seen) < len(ids)

    stack = Stack(Layer(AckOrReject, provider=provider), callback=handle)
    consumer = Consumer(provider, stack, concurrency=10)
    with anyio.fail_after(30):
        reason = await consumer.run()
    assert reason.code == "callback"
    # A 406 (double ack, or a multiple ack naming a rejected tag) would close the channel: the
    # consumer would re-consume and see redeliveries, and settlements would be dropped.
    assert redelivered == 0
    assert provider.stale_settlements == 0
    assert sorted(seen) == sorted(ids)
    info = await amqp_broker.inspect_queue(queue_name)  # the consumer closed: anything unacked is back
    assert info is not None and info.message_count == 0


@pytest.mark.parametrize("flushed", [False, True])
async def test_a_crash_before_the_flush_redelivers_and_loses_nothing(
    amqp_broker: AmqpBroker, amqp_url: str, queue_name: str, flushed: bool
) -> None:
    await amqp_broker.declare_queue(queue_name)
    ids = await _publish(amqp_broker, queue_name, 50)
    victim = AmqpBroker(amqp_url, reconnect_interval=30)
    provider = victim.provider(queue_name, prefetch=100, ack_batch_size=1000, ack_flush_interval=60)
    try:
        await provider.start()
        with anyio.fail_after(10):
            taken = [await provider.receive() for _ in range(20)]
        for message in taken:
            assert message is not None
            await provider.ack(message)  # recorded, not written: no batch or timer flush is due
        if flushed:
            await provider.stop_consuming()  # flushes the 20 acks before the crash
        _abort_transport(victim)
    finally:
        await victim.close()
    expected = 30 if flushed else 50
    deadline = anyio.current_time() + 15  # the broker requeues the dead connection's deliveries
    while (info := await amqp_broker.inspect_queue(queue_name)) is None or info.message_count != expected:
        assert anyio.current_time() < deadline, (
            f"{info and info.message_count} back in the queue, not {expected}"
        )
        await anyio.sleep(0.05)
    survivor = amqp_broker.provider(queue_name, prefetch=100, ack_batch_size=1)
    await survivor.start()
    try:
        with anyio.fail_after(10):
            back = [await survivor.receive() for _ in range(expected)]
        got = {m.message_id for m in back if m is not None}
        acked = {m.message_id for m in taken if m is not None}
        assert got == (set(ids) - acked if flushed else set(ids))
        assert all(m is not None and m.redelivered for m in back)
    finally:
        await survivor.close()
