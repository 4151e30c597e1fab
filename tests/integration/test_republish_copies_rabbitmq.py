"""Retry and dead-letter copies on RabbitMQ: what they must not inherit from the original."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from processors.ack import AckProcessor
from processors.exception_catcher import ExceptionCatcherProcessor
from processors.retry import RetryProcessor
from swarrow import Broker, Consumer, Layer, Message, Stack
from swarrow.amqp import AmqpBroker
from swarrow.errors import PermanentError
from swarrow.topology import (
    DROPPED_HEADERS_HEADER,
    ERROR_MESSAGE_HEADER,
    ORIGINAL_EXPIRATION_HEADER,
    RETRY_ATTEMPT_HEADER,
    RetryTopology,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

TTL_MS = 300  # the producer's TTL for waiting in Q, far shorter than the retry delay below


async def _run_until(
    broker: Broker, queue: str, callback: Any, done: Any, delays: tuple[float, ...], send: list[Message]
) -> None:
    """Consume `queue`; once the consumer is registered, publish `send` (short TTLs reach it in time)."""
    provider = broker.provider(queue, prefetch=10)
    publisher = broker.publisher()
    stack = Stack(
        Layer(ExceptionCatcherProcessor),
        Layer(AckProcessor, provider=provider),
        Layer(RetryProcessor, publisher=publisher, attempts=len(delays), delays=delays),
        callback=callback,
    )
    consumer = Consumer(provider, stack, concurrency=4)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            with anyio.fail_after(8):
                while not provider.is_consuming:
                    await anyio.sleep(0.01)
                for message in send:
                    await publisher.publish(message, queue)
                while not await done():
                    await anyio.sleep(0.02)  # polling a condition, bounded by fail_after
            consumer.control.stop("test")
    finally:
        await publisher.close()


async def _count(broker: Broker, name: str) -> int:
    info = await broker.inspect_queue(name)
    return -1 if info is None else info.message_count


async def test_dead_letter_copies_do_not_expire_with_the_originals_ttl(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # Before the fix: the 5 dead copies carried expiration=300 ms and Q.dead was empty 0.6 s later.
    await RetryTopology(queue_name, (5.0,)).declare(amqp_broker)
    calls: list[str] = []

    async def callback(message: Message) -> None:
        calls.append(message.message_id or "")
        raise PermanentError("cannot handle this one")

    dead = f"{queue_name}.dead"

    async def all_dead() -> bool:
        return await _count(amqp_broker, dead) == 5

    send = [Message(b"x", message_id=f"m{i}", expiration=str(TTL_MS)) for i in range(5)]
    await _run_until(amqp_broker, queue_name, callback, all_dead, (5.0,), send)
    assert sorted(calls) == [f"m{i}" for i in range(5)]
    # Twice the original TTL later, every dead copy is still there (a deliberate wait for a TTL, not a race).
    await anyio.sleep(2 * TTL_MS / 1000)
    assert await _count(amqp_broker, dead) == 5
    assert await _count(amqp_broker, queue_name) == 0
    copy = await _get(amqp_broker, dead)
    assert copy.expiration is None
    assert copy.headers[ORIGINAL_EXPIRATION_HEADER] == str(TTL_MS)


async def test_retry_copies_wait_the_retry_queues_delay_not_the_originals_ttl(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # Before the fix: the copy kept the original's 300 ms TTL and came back after 0.3 s, not the 1 s delay.
    delay = 1.0
    await RetryTopology(queue_name, (delay,)).declare(amqp_broker)
    calls: list[tuple[float, Any, str | None]] = []

    async def callback(message: Message) -> None:
        calls.append((time.monotonic(), message.headers.get(RETRY_ATTEMPT_HEADER), message.expiration))
        if len(calls) == 1:
            raise ConnectionError("transient")

    async def done() -> bool:
        return len(calls) == 2

    send = [Message(b"x", message_id="m", expiration=str(TTL_MS))]
    await _run_until(amqp_broker, queue_name, callback, done, (delay,), send)
    assert [a for _, a, _ in calls] == [None, 1]
    assert calls[1][0] - calls[0][0] >= delay * 0.95, calls  # the retry queue's TTL, not the original's
    assert calls[1][2] is None


async def _get(broker: AmqpBroker, queue: str) -> Message:
    provider = broker.provider(queue, prefetch=1)
    await provider.start()
    try:
        with anyio.fail_after(3):
            message = await provider.receive()
        assert message is not None
        await provider.reject(message, requeue=True)
        return message
    finally:
        await provider.close()


async def test_a_dead_copy_too_big_for_one_frame_is_cut_to_fit_instead_of_held_forever(
    broker: Broker, queue_name: str
) -> None:
    # Before the fix: a producer's message with headers near the 128,000-byte limit got a dead copy
    # 128,625 bytes long, refused locally (InvalidMessageError) every 5 s forever: 0 of 3 in Q.dead,
    # its slot held until a restart; an error message holding a lone surrogate did the same.
    await RetryTopology(queue_name, (5.0,)).declare(broker)

    async def callback(message: Message) -> None:
        raise PermanentError("bad byte \udcff" if message.message_id == "surrogate" else "x" * 900)

    dead = f"{queue_name}.dead"

    async def all_dead() -> bool:
        return await _count(broker, dead) == 3

    send = [
        Message(b"near", message_id="near", headers={"blob": "a" * 127_500}),
        # Any name may be left out, x-swarrow-… included: a producer chooses it.
        Message(b"over", message_id="over", headers={"x-swarrow-blob": "b" * 127_950, "keep": "k"}),
        Message(b"surrogate", message_id="surrogate"),
    ]
    await _run_until(broker, queue_name, callback, all_dead, (5.0,), send)
    copies = {m.message_id: m for m in await _get_all(broker, dead, 3)}
    near, over, surrogate = copies["near"], copies["over"], copies["surrogate"]
    assert near.body == b"near" and near.headers["blob"] == "a" * 127_500
    assert near.headers[ERROR_MESSAGE_HEADER].endswith("…")  # our error message gave way
    assert DROPPED_HEADERS_HEADER not in near.headers
    assert over.body == b"over" and "x-swarrow-blob" not in over.headers and over.headers["keep"] == "k"
    assert over.headers[DROPPED_HEADERS_HEADER] == "x-swarrow-blob"
    assert surrogate.headers[ERROR_MESSAGE_HEADER] == "bad byte \\udcff"
    assert await _count(broker, queue_name) == 0


async def _get_all(broker: Broker, queue: str, n: int) -> list[Message]:
    """Read `n` messages of `queue` and put them back."""
    provider = broker.provider(queue, prefetch=n)
    await provider.start()
    got: list[Message] = []
    try:
        with anyio.fail_after(5):
            while len(got) < n:
                message = await provider.receive()
                assert message is not None
                got.append(message)
        for message in got:
            await provider.reject(message, requeue=True)
        return got
    finally:
        await provider.close()
