"""A delivery whose properties Python cannot decode is dead-lettered once, not redelivered forever.

RabbitMQ carries header tables nested hundreds deep (another client's bug, or a hostile producer);
pamqp's decoder, and swarrow's careful one, recurse once per level and hit Python's recursion limit.
Before, that error killed the connection's reader: the consumer reconnected every ~2 s forever, the
messages delivered before it were redelivered and run again each time (their acks never went out),
and nothing after it was ever processed (attack, session 9). Now that one delivery never reaches the
callback: the retry layer dead-letters it at once (`UndecodableMessage`) with its body and the raw
bytes of its properties, and consuming goes on.
"""

from __future__ import annotations

import base64
import struct
import subprocess
import sys

import anyio
import pytest
from pamqp.commands import Basic

from processors.ack import AckProcessor
from processors.exception_catcher import ExceptionCatcherProcessor
from processors.retry import RetryProcessor
from swarrow import Consumer, Layer, Message, Stack
from swarrow.amqp import AmqpBroker
from swarrow.topology import (
    ERROR_TYPE_HEADER,
    UNDECODABLE_HEADER,
    UNDECODABLE_PROPERTIES_HEADER,
    RetryTopology,
)
from tests.integration._raw_amqp import RawPublisher

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

_DEPTH = 800  # {"a": {"a": ... }} this deep: past the default recursion limit of 1,000


def _deep_headers() -> bytes:
    """The properties part of a content header: the headers flag and a table nested _DEPTH deep."""
    table = struct.pack(">I", 0)
    for _ in range(_DEPTH):
        entry = b"\x01aF" + table
        table = struct.pack(">I", len(entry)) + entry
    return struct.pack(">H", 0x2080) + table + b"\x06poison"  # headers, then message_id "poison"


def _publish(amqp_url: str, queue: str, label: str) -> None:
    raw = RawPublisher(amqp_url)
    try:
        raw.publish("", queue, b"x", Basic.Properties(message_id=f"before-{label}"))
        raw.publish_header("", queue, b"poison body", _deep_headers())
        raw.publish("", queue, b"x", Basic.Properties(message_id=f"after-{label}"))
    finally:
        raw.close()


async def _depth(broker: AmqpBroker, queue: str, expected: int) -> None:
    with anyio.fail_after(10):
        while (info := await broker.inspect_queue(queue)) is None or info.message_count != expected:
            await anyio.sleep(0.05)


async def _letters(broker: AmqpBroker, queue: str, count: int) -> list[Message]:
    provider = broker.provider(queue, prefetch=count)
    await provider.start()
    letters = []
    try:
        with anyio.fail_after(5):
            while len(letters) < count:
                message = await provider.receive()
                assert message is not None
                letters.append(message)
                await provider.ack(message)
    finally:
        await provider.close()
    return letters


async def test_a_header_table_nested_too_deeply_is_dead_lettered_whole_and_consuming_goes_on(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str
) -> None:
    await RetryTopology(queue_name, (0.2,)).declare(amqp_broker)
    # Published before consuming: the first deliveries arrive behind basic.consume-ok and go aiormq's
    # way (pamqp, then swarrow's lenient decoder); published while consuming: the bulk intake's.
    await anyio.to_thread.run_sync(_publish, amqp_url, queue_name, "1")
    provider = amqp_broker.provider(queue_name, prefetch=10)
    publisher = amqp_broker.publisher()
    seen: list[tuple[str | None, bool]] = []

    async def callback(message: Message) -> None:
        seen.append((message.message_id, message.redelivered))

    stack = Stack(
        Layer(ExceptionCatcherProcessor),
        Layer(AckProcessor, provider=provider),
        Layer(RetryProcessor, publisher=publisher, attempts=1, delays=(0.2,)),
        callback=callback,
    )
    consumer = Consumer(provider, stack)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            await _depth(amqp_broker, f"{queue_name}.dead", 1)
            route = provider.fast_path.bulk_route if provider.fast_path else None
            assert route is not None
            taken = route.taken
            await anyio.to_thread.run_sync(_publish, amqp_url, queue_name, "2")
            await _depth(amqp_broker, f"{queue_name}.dead", 2)
            with anyio.fail_after(5):
                while len(seen) < 4:
                    await anyio.sleep(0.01)  # polling a condition, bounded by fail_after
            assert route.taken > taken  # the second round went through the bulk intake
            consumer.control.stop("test")
    finally:
        await publisher.close()
    assert sorted(seen) == [("after-1", False), ("after-2", False), ("before-1", False), ("before-2", False)]
    await _depth(amqp_broker, queue_name, 0)  # every ack reached the broker: nothing to redeliver
    for letter in await _letters(amqp_broker, f"{queue_name}.dead", 2):
        # The body and every byte of the properties, whatever Python can read of them.
        assert letter.body == b"poison body"
        assert "nested too deeply" in letter.headers[UNDECODABLE_HEADER]
        assert base64.b64decode(letter.headers[UNDECODABLE_PROPERTIES_HEADER]) == _deep_headers()
        assert letter.headers[ERROR_TYPE_HEADER] == "swarrow.errors.UndecodableMessage"
        assert letter.delivery_mode == 2  # persistent, whatever the undecodable original said


async def test_the_dead_letter_tools_leave_such_a_letter_where_it_is(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str
) -> None:
    dead = f"{queue_name}.dead"
    await amqp_broker.declare_queue(queue_name)
    await amqp_broker.declare_queue(dead)
    await anyio.to_thread.run_sync(_publish, amqp_url, dead, "dead")
    command = [sys.executable, "-m", "swarrow", "dead", "replay", "--queue", queue_name, "--url", amqp_url]
    replayed = await anyio.to_thread.run_sync(
        lambda: subprocess.run(command, capture_output=True, text=True, timeout=60)
    )
    assert replayed.returncode == 0, replayed.stderr
    assert "does not decode" in replayed.stderr and "left in the queue" in replayed.stderr
    await _depth(amqp_broker, dead, 1)  # the undecodable letter, untouched
    await _depth(amqp_broker, queue_name, 2)  # the two others, replayed
