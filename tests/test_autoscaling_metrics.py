"""What an autoscaler reads: the worker's utilization and the queue's backlog, with no management plugin."""

from __future__ import annotations

import functools

import anyio
import pytest
from prometheus_client import CollectorRegistry

from processors.ack import AckProcessor
from processors.metrics import MetricsProcessor
from swarrow import Broker, Consumer, Layer, Message, Stack

pytestmark = pytest.mark.anyio


async def test_utilization_and_backlog_follow_the_work(broker: Broker, queue_name: str) -> None:
    await broker.declare_queue(queue_name)
    publisher = broker.publisher()
    for n in range(30):
        await publisher.publish(Message(f"{n}".encode()), queue_name)
    release = anyio.Event()

    async def slow(message: Message) -> None:
        await release.wait()

    registry = CollectorRegistry()
    provider = broker.provider(queue_name, prefetch=5)
    stack = Stack(
        Layer(
            MetricsProcessor, registry=registry, provider=provider, heartbeat_interval=0.05,
            liveness_timeout=5, queue_stats=functools.partial(broker.inspect_queue, queue_name),
            queue_stats_interval=0.1,
        ),
        Layer(AckProcessor, provider=provider),
        callback=slow,
    )  # fmt: skip
    consumer = Consumer(provider, stack, concurrency=5, grace_period=5)

    def value(name: str) -> float:
        return registry.get_sample_value(name, {"queue": queue_name}) or 0.0

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(20):
            # Five slots busy, five messages pushed into the prefetch window: 25 ready, one consumer.
            while not (value("swarrow_queue_messages_ready") == 25 and value("swarrow_queue_consumers") == 1):
                await anyio.sleep(0.02)
            while value("swarrow_worker_utilization") < 0.99:
                await anyio.sleep(0.02)
        release.set()
        with anyio.fail_after(20):
            while value("swarrow_queue_messages_ready") != 0 or consumer.in_flight:
                await anyio.sleep(0.02)
            while value("swarrow_worker_utilization") > 0.01:  # ten idle samples later
                await anyio.sleep(0.02)
        consumer.control.stop("test", "done")
    await publisher.close()
