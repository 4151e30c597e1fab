"""Ordering work: priorities within a queue, serial groups in a worker, and sharded queues across workers."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from typing import Any

import anyio
import pytest

from processors.ack import AckProcessor
from processors.defaults import default_stack
from processors.serial_group import SerialGroupProcessor
from swarrow import Broker, ConfigurationError, Consumer, Layer, Message, Stack
from swarrow.amqp import AmqpBroker
from swarrow.ordering import HASH_EXCHANGE_TYPE, SERIAL_HEADER, shard_exchange_name, shard_queue_name
from swarrow.topology import RetryTopology

pytestmark = pytest.mark.anyio


async def _priority_queue(broker: Broker, queue: str) -> bool:
    """Declare `queue` with x-max-priority 10; False when the broker refuses to model it (memory://)."""
    try:
        await broker.declare_queue(queue, arguments={"x-max-priority": 10})
    except ConfigurationError:
        return False
    return True


async def test_high_priority_messages_come_first(broker: Broker, queue_name: str) -> None:
    if not await _priority_queue(broker, queue_name):
        # memory:// refuses x-max-priority loudly (the README's memory section); RabbitMQ must take it.
        assert broker.url.startswith("memory://"), broker.url
        return
    publisher = broker.publisher()
    for n in range(1000):
        await publisher.publish(Message(b"low", message_id=f"low-{n}", priority=1), queue_name)
    for n in range(10):
        await publisher.publish(Message(b"high", message_id=f"high-{n}", priority=9), queue_name)
    seen: list[str] = []

    async def record(message: Message) -> None:
        seen.append(message.message_id or "")

    provider = broker.provider(queue_name, prefetch=1)
    stack = Stack(Layer(AckProcessor, provider=provider), callback=record)
    consumer = Consumer(provider, stack, concurrency=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(30):
            while len(seen) < 20:
                await anyio.sleep(0.01)
        consumer.control.stop("test", "done")
    assert sorted(seen[:10]) == sorted(f"high-{n}" for n in range(10)), seen[:12]


async def test_retry_and_dead_copies_keep_the_priority(broker: Broker, queue_name: str) -> None:
    await RetryTopology(queue_name, [0.05]).declare(broker)
    await broker.publisher().publish(Message(b"x", message_id="p", priority=7), queue_name)
    priorities: list[int | None] = []

    async def fail(message: Message) -> None:
        priorities.append(message.priority)
        raise RuntimeError("fails every time")

    provider = broker.provider(queue_name, prefetch=5)
    layers = default_stack(
        provider=provider, publisher=broker.publisher(), signals=False, log=False, retry_attempts=1,
        retry_delays=[0.05], max_messages=2,
    )  # fmt: skip
    with anyio.fail_after(20):
        await Consumer(provider, Stack(*layers, callback=fail)).run()
    assert priorities == [7, 7]
    dead = broker.provider(f"{queue_name}.dead", prefetch=1)
    await dead.start()
    with anyio.fail_after(10):
        copy = await dead.receive()
    assert copy is not None and copy.priority == 7
    await dead.ack(copy)
    await dead.close()


class _Recorder:
    """The callback of the serial-group tests: (group, seq, start, end) per message, 2 ms of work each."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, int, float, float]] = []
        self.running = 0
        self.most = 0

    async def __call__(self, message: Message) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        started = time.monotonic()
        await anyio.sleep(0.002)
        self.runs.append((str(message.headers[SERIAL_HEADER]), int(message.body), started, time.monotonic()))
        self.running -= 1

    def check(self, expected: int) -> None:
        assert len(self.runs) == expected, f"{len(self.runs)} of {expected} processed"
        by_group: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
        for group, seq, start, end in self.runs:
            by_group[group].append((seq, start, end))
        for group, runs in by_group.items():
            runs.sort(key=lambda r: r[1])
            assert [seq for seq, _, _ in runs] == sorted(seq for seq, _, _ in runs), f"{group} out of order"
            for (_, _, end), (_, start, _) in itertools.pairwise(runs):
                assert start >= end, f"two messages of {group} ran at the same time"


async def _publish_groups(broker: Broker, queue: str, messages: int, groups: int, exchange: str = "") -> None:
    publisher = broker.publisher()
    for n in range(messages):
        group = f"g{n % groups}"
        message = Message(str(n).encode(), message_id=str(n), headers={SERIAL_HEADER: group})
        await publisher.publish(message, group if exchange else queue, exchange)
    await publisher.close()


async def test_a_serial_group_runs_one_at_a_time_in_order_and_groups_run_in_parallel(
    broker: Broker, queue_name: str
) -> None:
    await broker.declare_queue(queue_name)
    await _publish_groups(broker, queue_name, 1000, 20)
    recorder = _Recorder()
    provider = broker.provider(queue_name, prefetch=200)
    stack = Stack(Layer(SerialGroupProcessor), Layer(AckProcessor, provider=provider), callback=recorder)
    consumer = Consumer(provider, stack, concurrency=10, grace_period=5)
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(60):
            while len(recorder.runs) < 1000:
                await anyio.sleep(0.01)
        consumer.control.stop("test", "done")
    wall = time.monotonic() - started
    recorder.check(1000)
    assert recorder.most > 1, "groups never ran at the same time"
    serial = sum(end - start for _, _, start, end in recorder.runs)
    assert wall < serial, f"{wall:.2f} s wall for {serial:.2f} s of work: groups did not run in parallel"
    info = await broker.inspect_queue(queue_name)
    assert info is not None and info.message_count == 0


async def test_a_stop_leaves_a_groups_waiting_messages_for_redelivery(
    broker: Broker, queue_name: str
) -> None:
    await broker.declare_queue(queue_name)
    await _publish_groups(broker, queue_name, 50, 1)
    recorder = _Recorder()
    provider = broker.provider(queue_name, prefetch=50)
    stack = Stack(Layer(SerialGroupProcessor), Layer(AckProcessor, provider=provider), callback=recorder)
    consumer = Consumer(provider, stack, concurrency=5, grace_period=5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(20):
            while len(recorder.runs) < 5:
                await anyio.sleep(0.001)
        consumer.control.stop("test", "stop mid-group")
    done = len(recorder.runs)
    with anyio.fail_after(20):
        while (info := await broker.inspect_queue(queue_name)) is None or info.message_count != 50 - done:
            await anyio.sleep(0.05)
    recorder.check(done)


@pytest.mark.integration
async def test_sharded_queues_with_single_active_consumers_keep_groups_serial_across_workers(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    exchange = shard_exchange_name(queue_name)
    await amqp_broker.declare_exchange(exchange, HASH_EXCHANGE_TYPE)
    shards = [shard_queue_name(queue_name, k) for k in (1, 2)]
    try:
        for shard in shards:
            await amqp_broker.declare_queue(shard, arguments={"x-single-active-consumer": True})
            await amqp_broker.bind_queue(shard, exchange, "1")
        await _publish_groups(amqp_broker, queue_name, 600, 20, exchange=exchange)
        recorder = _Recorder()
        consumers: list[Consumer] = []
        for shard in shards:
            for _ in range(2):  # two workers per shard: one active, one standing by
                provider = amqp_broker.provider(shard, prefetch=100)
                stack = Stack(
                    Layer(SerialGroupProcessor), Layer(AckProcessor, provider=provider), callback=recorder
                )
                consumers.append(Consumer(provider, stack, concurrency=5, grace_period=5))
        async with anyio.create_task_group() as tg:
            for consumer in consumers:
                tg.start_soon(consumer.run)
            with anyio.fail_after(60):
                while len(recorder.runs) < 600:
                    await anyio.sleep(0.01)
            for consumer in consumers:
                consumer.control.stop("test", "done")
        recorder.check(600)
        counts = [(await amqp_broker.inspect_queue(shard)) for shard in shards]
        assert all(info is not None and info.message_count == 0 for info in counts)
    finally:
        for shard in shards:
            await amqp_broker.delete_queue(shard)
        channel: Any = await amqp_broker._scratch_channel()
        await channel.exchange_delete(exchange)
        await channel.close()
