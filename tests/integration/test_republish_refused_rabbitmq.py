"""A retry or dead-letter copy that RabbitMQ refuses: the original is held, never hot-looped or dropped."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from processors.ack import AckProcessor
from processors.exception_catcher import ExceptionCatcherProcessor
from processors.retry import RetryProcessor
from swarrow import Consumer, Layer, Message, Stack
from swarrow.amqp import AmqpBroker
from swarrow.errors import PermanentError
from swarrow.topology import RETRY_ATTEMPT_HEADER, RetryTopology

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

DELAYS = (0.1,)
WINDOW = 1.5  # seconds the broker refuses the copy


async def _run(
    broker: AmqpBroker,
    queue: str,
    callback: Any,
    *,
    refused_for: Callable[[], Awaitable[None]],
    done: Callable[[], Awaitable[bool]],
) -> RetryProcessor:
    """Consume `queue` while the copy is refused, run `refused_for` (the fix), then wait for `done`."""
    provider = broker.provider(queue, prefetch=10)
    publisher = broker.publisher()
    retry: list[RetryProcessor] = []

    def retry_layer(inner: Any) -> RetryProcessor:
        retry.append(RetryProcessor(inner, publisher=publisher, attempts=len(DELAYS), delays=DELAYS))
        return retry[0]

    stack = Stack(Layer(ExceptionCatcherProcessor), Layer(AckProcessor, provider=provider), retry_layer,
                  callback=callback)  # fmt: skip
    consumer = Consumer(provider, stack, concurrency=2, grace_period=0.5)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            await refused_for()
            with anyio.fail_after(10):
                while not await done():
                    await anyio.sleep(0.02)  # polling a condition, bounded by fail_after
            consumer.control.stop("test")
    finally:
        await publisher.close()
    return retry[0]


async def _count(broker: AmqpBroker, name: str) -> int:
    info = await broker.inspect_queue(name)
    return -1 if info is None else info.message_count


async def test_a_missing_retry_queue_holds_the_original_instead_of_rerunning_the_callback(
    amqp_broker: AmqpBroker, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Before the fix: the callback ran ~5,000 times in 1.5 s (the original requeued at once, forever).
    topology = RetryTopology(queue_name, DELAYS)
    await topology.declare(amqp_broker)
    await amqp_broker.delete_queue(f"{queue_name}.retry.1")
    publisher = amqp_broker.publisher()
    await publisher.publish(Message(b"job", message_id="m"), queue_name)
    await publisher.close()
    calls: list[Message] = []

    async def callback(message: Message) -> None:
        calls.append(message)
        if RETRY_ATTEMPT_HEADER not in message.headers:
            raise ConnectionError("the first call fails")

    async def missing_then_declared() -> None:
        await anyio.sleep(WINDOW)  # a measuring window, not a race: how often did the callback run?
        assert len(calls) == 1, f"the callback ran {len(calls)} times while the retry queue was missing"
        await topology.declare(amqp_broker)

    async def done() -> bool:
        return len(calls) == 2 and await _count(amqp_broker, queue_name) == 0

    with caplog.at_level(logging.WARNING, logger="processors"):
        retry = await _run(amqp_broker, queue_name, callback, refused_for=missing_then_declared, done=done)
    assert calls[1].headers[RETRY_ATTEMPT_HEADER] == 1 and not calls[1].redelivered
    assert retry.republish.failures >= 3 and retry.republish.held == 0
    assert "NO_ROUTE" in retry.republish.last_error or "unroutable" in retry.republish.last_error
    held = [r for r in caplog.records if "is held unacked" in r.getMessage()]
    assert held and all(r.levelno == logging.WARNING for r in held)
    assert "retry.1" in held[0].getMessage()


async def test_a_full_reject_publish_dead_letter_queue_holds_the_original(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # Before the fix: the PermanentError callback ran thousands of times while Q.dead refused the copy.
    dead = f"{queue_name}.dead"
    for name, arguments in RetryTopology(queue_name, DELAYS).queues()[:-1]:
        await amqp_broker.declare_queue(name, arguments=arguments or None)
    await amqp_broker.declare_queue(dead, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    publisher = amqp_broker.publisher()
    await publisher.publish(Message(b"filler"), dead)
    await publisher.publish(Message(b"poison", message_id="p"), queue_name)
    await publisher.close()
    calls: list[str] = []

    async def callback(message: Message) -> None:
        calls.append(message.message_id or "")
        raise PermanentError("never works")

    async def full_then_purged() -> None:
        await anyio.sleep(WINDOW)  # a measuring window, not a race
        assert calls == ["p"], f"the callback ran {len(calls)} times while Q.dead was full"
        assert await _count(amqp_broker, queue_name) == 0  # held by us, unacked
        await amqp_broker.purge_queue(dead)

    async def done() -> bool:
        return await _count(amqp_broker, dead) == 1 and await _count(amqp_broker, queue_name) == 0

    retry = await _run(amqp_broker, queue_name, callback, refused_for=full_then_purged, done=done)
    assert calls == ["p"] and retry.republish.failures >= 3
    assert "nack" in retry.republish.last_error.lower()


async def test_a_quorum_delivery_limit_never_drops_a_message_whose_copy_is_refused(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # Before the fix: 3 immediate requeues hit x-delivery-limit=2 and RabbitMQ dropped the message (Q empty).
    quorum = {"x-queue-type": "quorum"}
    await amqp_broker.declare_queue(queue_name, arguments={**quorum, "x-delivery-limit": 2})
    await amqp_broker.declare_queue(f"{queue_name}.dead", arguments=quorum)  # but no Q.retry.1
    publisher = amqp_broker.publisher()
    await publisher.publish(Message(b"keep", message_id="q", delivery_mode=2), queue_name)
    await publisher.close()
    calls: list[str] = []

    async def callback(message: Message) -> None:
        calls.append(message.message_id or "")
        raise ConnectionError("fails")

    async def refused() -> None:
        await anyio.sleep(WINDOW)  # a measuring window, not a race

    async def done() -> bool:
        return True

    retry = await _run(amqp_broker, queue_name, callback, refused_for=refused, done=done)
    assert calls == ["q"] and retry.republish.failures >= 2
    # The consumer stopped with the original held: it is back in Q, not dropped by the delivery limit.
    with anyio.fail_after(5):
        while await _count(amqp_broker, queue_name) != 1:
            await anyio.sleep(0.05)


async def test_a_stop_does_not_wait_the_grace_period_for_a_held_copy(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # Before the fix: the held copy was published again every 5 s until the grace period ran out, so a
    # stop took the whole of it (10.5 s through the CLI with --grace-period 10s; 30 s by default).
    # After: the original is left unsettled at once (redelivered once), the stop takes well under 1 s.
    topology = RetryTopology(queue_name, DELAYS)
    await topology.declare(amqp_broker)
    await amqp_broker.delete_queue(f"{queue_name}.retry.1")
    publisher = amqp_broker.publisher()
    await publisher.publish(Message(b"job", message_id="h"), queue_name)
    provider = amqp_broker.provider(queue_name, prefetch=10)
    retry: list[RetryProcessor] = []

    def retry_layer(inner: Any) -> RetryProcessor:
        retry.append(RetryProcessor(inner, publisher=publisher, attempts=len(DELAYS), delays=DELAYS))
        return retry[0]

    calls: list[str] = []

    async def callback(message: Message) -> None:
        calls.append(message.message_id or "")
        raise ConnectionError("fails")

    stack = Stack(Layer(ExceptionCatcherProcessor), Layer(AckProcessor, provider=provider), retry_layer,
                  callback=callback)  # fmt: skip
    consumer = Consumer(provider, stack, concurrency=2, grace_period=20)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            with anyio.fail_after(5):
                while not retry or retry[0].republish.held == 0:
                    await anyio.sleep(0.02)  # polling a condition, bounded by fail_after
            consumer.control.stop("test")
            stopping = anyio.current_time()
        took = anyio.current_time() - stopping
    finally:
        await publisher.close()
    assert took < 2, f"the stop took {took:.1f} s with a held copy"
    assert calls == ["h"] and retry[0].republish.held == 0
    with anyio.fail_after(5):
        while await _count(amqp_broker, queue_name) != 1:  # back in Q: left unsettled, not dropped
            await anyio.sleep(0.05)
