"""Broker-delayed retry end to end on RabbitMQ: TTL queues, dead letters, a failing republish."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from processors.ack import AckProcessor
from processors.exception_catcher import ExceptionCatcherProcessor
from processors.retry import RetryProcessor
from swarrow import Consumer, Layer, Message, Stack
from swarrow.amqp import AmqpBroker
from swarrow.topology import RETRY_ATTEMPT_HEADER, RetryTopology

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

DELAYS = (0.2, 0.4)


async def _consume_until(
    broker: AmqpBroker, queue: str, callback: Any, done: Callable[[], bool], **retry: Any
) -> None:
    provider = broker.provider(queue, prefetch=10)
    publisher = broker.publisher()
    stack = Stack(
        Layer(ExceptionCatcherProcessor),
        Layer(AckProcessor, provider=provider),
        Layer(RetryProcessor, publisher=publisher, attempts=len(DELAYS), delays=DELAYS, **retry),
        callback=callback,
    )
    consumer = Consumer(provider, stack)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            with anyio.fail_after(4):
                while not done():
                    await anyio.sleep(0.01)  # polling a condition, bounded by fail_after
            consumer.control.stop("test")
    finally:
        await publisher.close()


async def _get_one(broker: AmqpBroker, queue: str) -> Message:
    provider = broker.provider(queue, prefetch=1)
    await provider.start()
    try:
        with anyio.fail_after(3):
            message = await provider.receive()
        assert message is not None
        await provider.ack(message)
        return message
    finally:
        await provider.close()


@pytest.mark.parametrize("quorum", [False, True], ids=["classic", "quorum"])
async def test_fails_twice_then_processed_once_after_the_delays(
    amqp_broker: AmqpBroker, queue_name: str, quorum: bool
) -> None:
    # Quorum queues honour x-message-ttl from RabbitMQ 3.10: this runs the same topology on both types.
    infos = await RetryTopology(queue_name, DELAYS, quorum=quorum).declare(amqp_broker)
    assert [i.name for i in infos][-1] == f"{queue_name}.dead"
    publisher = amqp_broker.publisher()
    await publisher.publish(Message(b"job", message_id="m1", delivery_mode=2), queue_name)
    await publisher.close()
    calls: list[tuple[float, Any]] = []
    succeeded: list[Message] = []

    async def callback(message: Message) -> None:
        calls.append((time.monotonic(), message.headers.get(RETRY_ATTEMPT_HEADER)))
        if len(calls) <= 2:
            raise ConnectionError(f"fail {len(calls)}")
        succeeded.append(message)

    await _consume_until(amqp_broker, queue_name, callback, lambda: bool(succeeded))
    assert [a for _, a in calls] == [None, 1, 2]
    assert calls[1][0] - calls[0][0] >= DELAYS[0]
    assert calls[2][0] - calls[1][0] >= DELAYS[1]
    assert len(succeeded) == 1 and succeeded[0].body == b"job" and succeeded[0].message_id == "m1"
    for name in (queue_name, f"{queue_name}.dead", f"{queue_name}.retry.1", f"{queue_name}.retry.2"):
        info = await amqp_broker.inspect_queue(name)
        assert info is not None and info.message_count == 0, name


async def test_always_failing_message_lands_in_dead_with_headers(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    await RetryTopology(queue_name, DELAYS).declare(amqp_broker)
    publisher = amqp_broker.publisher()
    await publisher.publish(Message(b"bad", headers={"tenant": "t1"}), queue_name)
    await publisher.close()
    calls: list[Message] = []

    async def callback(message: Message) -> None:
        calls.append(message)
        raise ValueError("cannot handle")

    async def dead_count() -> int:
        info = await amqp_broker.inspect_queue(f"{queue_name}.dead")
        return 0 if info is None else info.message_count

    dead_seen: list[int] = []

    def done() -> bool:
        return bool(dead_seen) and dead_seen[-1] > 0

    async def watch() -> None:
        while not done():
            dead_seen.append(await dead_count())
            await anyio.sleep(0.02)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await _consume_until(amqp_broker, queue_name, callback, done)
    assert len(calls) == len(DELAYS) + 1
    dead = await _get_one(amqp_broker, f"{queue_name}.dead")
    assert dead.body == b"bad"
    assert dead.headers["x-swarrow-error-type"] == "ValueError"
    assert dead.headers["x-swarrow-error-message"] == "cannot handle"
    assert dead.headers["x-swarrow-attempts"] == 3
    assert dead.headers["x-swarrow-original-queue"] == queue_name
    assert "T" in dead.headers["x-swarrow-failed-at"]
    assert dead.headers["tenant"] == "t1"


async def test_a_returned_retry_publish_requeues_once_the_hold_is_over(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    topology = RetryTopology(queue_name, DELAYS)
    await topology.declare(amqp_broker)
    publisher = amqp_broker.publisher()
    await publisher.publish(Message(b"keep"), queue_name)
    await publisher.close()
    calls: list[Message] = []
    succeeded: list[Message] = []

    async def callback(message: Message) -> None:
        calls.append(message)
        if len(calls) == 1:
            # The retry queue vanishes: the mandatory publish comes back unroutable.
            await amqp_broker.delete_queue(f"{queue_name}.retry.1")
            raise ConnectionError("first")
        if len(calls) == 2:
            await topology.declare(amqp_broker)
            raise ConnectionError("second")
        succeeded.append(message)

    await _consume_until(amqp_broker, queue_name, callback, lambda: bool(succeeded), republish_hold=0)
    assert len(calls) == 3
    assert calls[1].redelivered is True  # the original was requeued, not acked or dropped
    assert calls[1].headers.get(RETRY_ATTEMPT_HEADER) is None
    assert calls[2].headers.get(RETRY_ATTEMPT_HEADER) == 1
    assert len(succeeded) == 1
    for name in (queue_name, f"{queue_name}.dead", f"{queue_name}.retry.1"):
        info = await amqp_broker.inspect_queue(name)
        assert info is not None and info.message_count == 0, name
