"""The poison guard on RabbitMQ: a quorum requeue loop and a classic x-death loop both end in Q.dead."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from processors.ack import AckProcessor
from processors.delivery_limit import DeliveryLimitProcessor
from processors.exception_catcher import ExceptionCatcherProcessor
from swarrow import Consumer, Layer, Message, Stack
from swarrow.amqp import AmqpBroker

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def _run_until_dead(broker: AmqpBroker, queue: str, callback: Any, *, requeue: bool) -> Message:
    """Consume with catcher → ack → delivery_limit(3) until Q.dead holds a message; return it."""
    provider = broker.provider(queue, prefetch=5)
    publisher = broker.publisher()
    stack = Stack(
        Layer(ExceptionCatcherProcessor),
        Layer(AckProcessor, provider=provider, requeue_on_error=requeue),
        Layer(DeliveryLimitProcessor, publisher=publisher, max_deliveries=3),
        callback=callback,
    )
    consumer = Consumer(provider, stack)
    dead = f"{queue}.dead"
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            with anyio.fail_after(4):
                while (info := await broker.inspect_queue(dead)) is None or info.message_count == 0:
                    await anyio.sleep(0.02)  # polling a condition, bounded by fail_after
            consumer.control.stop("test")
        reader = broker.provider(dead, prefetch=1)
        await reader.start()
        with anyio.fail_after(3):
            message = await reader.receive()
        assert message is not None
        await reader.ack(message)
        await reader.close()
        return message
    finally:
        await publisher.close()


async def test_quorum_requeue_loop_is_dead_lettered_past_the_limit(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    await amqp_broker.declare_queue(queue_name, arguments={"x-queue-type": "quorum"})
    await amqp_broker.declare_queue(f"{queue_name}.dead")
    publisher = amqp_broker.publisher()
    await publisher.publish(Message(b"poison"), queue_name)
    await publisher.close()
    calls: list[Message] = []

    async def callback(message: Message) -> None:
        calls.append(message)
        raise RuntimeError("crashes every time")

    dead = await _run_until_dead(amqp_broker, queue_name, callback, requeue=True)
    assert len(calls) == 3
    assert dead.body == b"poison"
    assert dead.headers["x-swarrow-error-type"] == "swarrow.DeliveryLimitExceeded"
    assert "delivered 4 times" in dead.headers["x-swarrow-error-message"]
    info = await amqp_broker.inspect_queue(queue_name)
    assert info is not None and info.message_count == 0


async def test_classic_dlx_loop_is_counted_from_x_death(amqp_broker: AmqpBroker, queue_name: str) -> None:
    # Q rejects into a wait queue that expires back into Q: no redelivered flag, only x-death grows.
    # The wait queue is named like a retry queue so the fixture deletes it.
    wait = f"{queue_name}.retry.1"
    await amqp_broker.declare_queue(
        queue_name, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": wait}
    )
    await amqp_broker.declare_queue(
        wait,
        arguments={
            "x-message-ttl": 20,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue_name,
        },
    )
    await amqp_broker.declare_queue(f"{queue_name}.dead")
    publisher = amqp_broker.publisher()
    await publisher.publish(Message(b"loop"), queue_name)
    await publisher.close()
    calls: list[Message] = []

    async def callback(message: Message) -> None:
        calls.append(message)
        raise RuntimeError("crashes every time")

    dead = await _run_until_dead(amqp_broker, queue_name, callback, requeue=False)
    assert len(calls) == 3
    assert all(not m.redelivered for m in calls)
    assert "x-death count here=3" in dead.headers["x-swarrow-error-message"]
