"""Several queues in one worker (MultiQueueProvider) across a broker restart: nothing lost, no stop."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import pytest

from processors.ack import AckProcessor
from swarrow import Consumer, Layer, Message, Stack
from swarrow.amqp import AmqpBroker
from swarrow.multi_queue import MultiQueueProvider

if TYPE_CHECKING:
    from conftest import Chaos

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.anyio, pytest.mark.slow]

PER_QUEUE = 1000


@pytest.mark.timeout(150)
async def test_two_queues_in_one_worker_survive_a_broker_restart(chaos: Chaos, amqp_url: str) -> None:
    queues = [f"{chaos.queue}.urgent", f"{chaos.queue}.normal"]
    broker = AmqpBroker(amqp_url, reconnect_interval=0.2)
    await broker.connect()
    seen: set[str] = set()

    async def record(message: Message) -> None:
        seen.add(message.message_id or "")
        await anyio.sleep(0.005)

    try:
        published = []
        for queue in queues:
            await broker.declare_queue(queue, durable=True)
            for n in range(PER_QUEUE):
                message_id = f"{queue}-{n}"
                persistent = Message(b"x", message_id=message_id, delivery_mode=2)
                await broker.publisher().publish(persistent, queue)
                published.append(message_id)
        provider = MultiQueueProvider([broker.provider(queue, prefetch=20) for queue in queues])
        stack = Stack(Layer(AckProcessor, provider=provider), callback=record)
        consumer = Consumer(provider, stack, concurrency=2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            await chaos.wait_until(lambda: len(seen) >= 100, timeout=30, what="100 messages first")
            try:
                await anyio.to_thread.run_sync(chaos.rabbitmqctl, "stop_app")
                during_outage = len(seen)
            finally:
                await anyio.to_thread.run_sync(chaos.rabbitmqctl, "start_app")
            await chaos.wait_until(
                lambda: seen >= set(published) or consumer.control.reason is not None,
                timeout=90,
                what="every message of both queues processed after the restart",
            )
            assert consumer.control.reason is None, f"the consumer stopped: {consumer.control.reason}"
            consumer.control.stop("test", "done")
        assert seen == set(published)
        assert during_outage < len(published), "the restart came after the end: not mid-stream"
    finally:
        for queue in queues:
            with contextlib.suppress(Exception):
                await broker.delete_queue(queue)
        await broker.close()
