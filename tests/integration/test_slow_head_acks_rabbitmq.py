"""Coalesced acks behind a slow head message: bounded exposure, a stop settles what finished, no stall."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import pytest

from swarrow import Consumer, Message, Stack
from swarrow.amqp import AmqpBroker, AmqpMessageProvider
from swarrow.amqp.acks import SLOW_HEAD_ACK_AFTER
from swarrow.stack import Layer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

FAST = 29


class Ack:
    """Ack on return: the part of AckProcessor these tests need."""

    def __init__(
        self, inner: Callable[[Message], Awaitable[bool]], /, *, provider: AmqpMessageProvider
    ) -> None:
        self.inner = inner
        self.provider = provider

    async def __call__(self, message: Message, /) -> bool:
        keep_going = await self.inner(message)
        await self.provider.ack(message)
        return keep_going


async def _publish(broker: AmqpBroker, queue: str, fast: int) -> None:
    publisher = broker.publisher()
    try:
        await publisher.publish(Message(b"slow", message_id="slow"), queue)
        for i in range(fast):
            await publisher.publish(Message(b"fast", message_id=f"f{i}"), queue)
    finally:
        await publisher.close()


def _callback(done: list[str], release: anyio.Event) -> Callable[[Message], Awaitable[bool]]:
    async def handle(message: Message) -> bool:
        if message.body == b"slow":
            await release.wait()
        else:
            done.append(message.message_id or "")
        return True

    return handle


async def _ready(url: str, queue: str) -> int:
    """Ready messages of `queue`, seen from a connection of its own."""
    broker = AmqpBroker(url)
    try:
        info = await broker.inspect_queue(queue)
        assert info is not None
        return info.message_count
    finally:
        await broker.close()


async def _wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)  # polling a condition, bounded by fail_after


async def test_a_stop_that_cancels_the_head_still_acks_the_messages_finished_behind_it(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # Before the fix: all 29 finished messages came back with the cancelled one (30 ready after the stop).
    await amqp_broker.declare_queue(queue_name)
    await _publish(amqp_broker, queue_name, FAST)
    provider = amqp_broker.provider(queue_name, prefetch=100)
    done: list[str] = []
    stack = Stack(Layer(Ack, provider=provider), callback=_callback(done, anyio.Event()))
    consumer = Consumer(provider, stack, concurrency=4, grace_period=0.3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        await _wait_for(lambda: len(done) == FAST)
        consumer.control.stop("test")  # the grace period runs out on the slow head: it is cancelled
    assert await _ready(amqp_url, queue_name) == 1  # only the cancelled one goes back


async def test_finished_messages_behind_a_slow_head_are_acked_within_the_stated_bound(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # Before the fix: a crash 1.5 s after they finished redelivered all 29 (under the 50 fallback threshold).
    await amqp_broker.declare_queue(queue_name)
    await _publish(amqp_broker, queue_name, FAST)
    crashing = AmqpBroker(amqp_url)
    provider = crashing.provider(queue_name, prefetch=100)
    done: list[str] = []
    release = anyio.Event()
    stack = Stack(Layer(Ack, provider=provider), callback=_callback(done, release))
    consumer = Consumer(provider, stack, concurrency=4, grace_period=0)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            await _wait_for(lambda: len(done) == FAST)
            finished_at = time.monotonic()
            # The README's bound: acked at most 2 x SLOW_HEAD_ACK_AFTER (+ a flush interval) after finishing.
            await anyio.sleep(2 * SLOW_HEAD_ACK_AFTER + 0.2)  # wait out the bound, then crash
            assert time.monotonic() - finished_at < 3
            _abort_transport(crashing)  # a crash: nothing more reaches the broker
            await _wait_for(lambda: not provider.is_consuming)
            consumer.control.stop_now("test")
            release.set()
    finally:
        await crashing.close()
    with anyio.fail_after(5):
        while (ready := await _ready(amqp_url, queue_name)) < 1:
            await anyio.sleep(0.05)
    assert ready == 1  # only the slow head, never finished


async def test_an_ack_batch_as_large_as_the_prefetch_does_not_stall_behind_a_slow_message(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # Before the fix: prefetch 10, batch 10, one slow message: 9 others done in 2 s, then nothing.
    await amqp_broker.declare_queue(queue_name)
    await _publish(amqp_broker, queue_name, 200)
    provider = amqp_broker.provider(queue_name, prefetch=10, ack_batch_size=10)
    done: list[str] = []
    release = anyio.Event()
    stack = Stack(Layer(Ack, provider=provider), callback=_callback(done, release))
    consumer = Consumer(provider, stack, concurrency=2, grace_period=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.move_on_after(5):
            while len(done) < 200:
                await anyio.sleep(0.01)  # polling a condition, bounded by move_on_after
        release.set()
        consumer.control.stop("test")
    assert len(done) == 200, f"{len(done)} of 200 done in 5 s behind the slow message"
    assert provider.ack_batch_size == 5  # capped at half the prefetch


def _abort_transport(broker: AmqpBroker) -> None:
    """Drop the TCP connection without a word to the broker, as a killed process would."""
    connection = broker._connection
    assert connection is not None and connection.transport is not None
    writer_task = connection.transport.connection._writer_task  # type: ignore[attr-defined]
    assert writer_task is not None
    writer = writer_task.get_coro().cr_frame.f_locals["writer"]
    writer.transport.abort()
