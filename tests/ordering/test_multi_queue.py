"""Several queues in one consumer: strict preference and weighted picks, on memory:// and RabbitMQ."""

from __future__ import annotations

import contextlib

import anyio
import pytest

from processors.ack import AckProcessor
from swarrow import Broker, ConfigurationError, Consumer, Layer, Message, Stack
from swarrow.multi_queue import MultiQueueProvider, parse_queue_spec

pytestmark = pytest.mark.anyio

N = 300
PREFETCH = 10


async def _fill(broker: Broker, urgent: str, normal: str) -> None:
    await broker.declare_queue(urgent)
    await broker.declare_queue(normal)
    publisher = broker.publisher()
    for n in range(N):
        await publisher.publish(Message(b"n", message_id=f"normal-{n}"), normal)
    for n in range(N):
        await publisher.publish(Message(b"u", message_id=f"urgent-{n}"), urgent)


async def _run(broker: Broker, urgent: str, normal: str, weights: list[int] | None) -> list[str]:
    seen: list[str] = []

    async def record(message: Message) -> None:
        seen.append(message.queue)
        await anyio.sleep(0.002)  # the 2 ms callback: the broker refills urgent's window meanwhile

    provider = MultiQueueProvider(
        [broker.provider(urgent, prefetch=PREFETCH), broker.provider(normal, prefetch=PREFETCH)], weights
    )
    stack = Stack(Layer(AckProcessor, provider=provider), callback=record)
    consumer = Consumer(provider, stack, concurrency=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(30):
            while len(seen) < 2 * N:
                await anyio.sleep(0.01)
        consumer.control.stop("test", "done")
    return seen


async def _cleanup(broker: Broker, *queues: str) -> None:
    for queue in queues:
        with contextlib.suppress(Exception):  # best effort: this test's own queues
            await broker.delete_queue(queue)


async def test_strict_preference_takes_urgent_first(broker: Broker, queue_name: str) -> None:
    urgent, normal = f"{queue_name}.urgent", f"{queue_name}.normal"
    await _fill(broker, urgent, normal)
    try:
        seen = await _run(broker, urgent, normal, None)
    finally:
        await _cleanup(broker, urgent, normal)
    assert seen.count(urgent) == N and seen.count(normal) == N
    last_urgent = max(i for i, queue in enumerate(seen) if queue == urgent)
    assert seen[:last_urgent].count(normal) <= PREFETCH, seen[: last_urgent + 1]


async def test_weighted_mode_serves_both_queues(broker: Broker, queue_name: str) -> None:
    urgent, normal = f"{queue_name}.urgent", f"{queue_name}.normal"
    await _fill(broker, urgent, normal)
    try:
        seen = await _run(broker, urgent, normal, [5, 1])
    finally:
        await _cleanup(broker, urgent, normal)
    assert seen.count(urgent) == N and seen.count(normal) == N
    window = seen[60:240]  # both queues full here: about one normal in six
    assert 20 <= window.count(normal) <= 45, window.count(normal)


def test_queue_spec_parsing() -> None:
    assert parse_queue_spec("urgent") == ("urgent", None)
    assert parse_queue_spec("urgent:5") == ("urgent", 5)
    assert parse_queue_spec("a:b") == ("a:b", None)
    with pytest.raises(ConfigurationError, match="urgent:0"):
        parse_queue_spec("urgent:0")


def test_a_queue_listed_twice_is_refused(memory_broker: Broker) -> None:
    with pytest.raises(ConfigurationError, match="listed twice"):
        MultiQueueProvider([memory_broker.provider("q"), memory_broker.provider("q")])


async def test_a_missing_queue_among_several_is_named(broker: Broker, queue_name: str) -> None:
    await broker.declare_queue(queue_name)
    missing = f"{queue_name}.missing"
    provider = MultiQueueProvider([broker.provider(queue_name), broker.provider(missing)])
    with pytest.raises(BaseException) as raised, anyio.fail_after(10):
        await Consumer(provider, lambda message: None).run()
    errors = raised.value.exceptions if isinstance(raised.value, BaseExceptionGroup) else (raised.value,)
    assert any(repr(missing) in str(error) for error in errors), errors
    assert not provider.is_consuming
