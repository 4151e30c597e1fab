"""The bulk intake against bytes other clients put on the wire: short strings that are not UTF-8,
timestamps in nanoseconds.

RabbitMQ passes them through (a routing key, a property, a header name, a timestamp). Before, pamqp
raised on them inside aiormq's reader: the consumer's connection failed, reconnected, got the same
delivery back and failed again, forever — nothing behind it on the queue was ever consumed.
"""

from __future__ import annotations

import datetime
import os
import struct
import subprocess
import sys

import anyio
import pytest
from pamqp.commands import Basic

from swarrow.amqp import AmqpBroker, AmqpMessageProvider
from swarrow.message import Message
from swarrow.rpc import RpcClient
from tests.integration._raw_amqp import PLACEHOLDER, RawPublisher

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

_BAD = "\ufffd\ufffd"  # what NOT_UTF8 (two invalid bytes) decodes to
_SECONDS = 1_000_000_000
_NANOSECONDS = 1_700_000_000_000_000_000  # a timestamp as a client counting nanoseconds sends it


async def _receive(provider: AmqpMessageProvider, timeout: float = 10.0) -> Message:
    with anyio.fail_after(timeout):
        message = await provider.receive()
    assert message is not None
    return message


def _publish_odd(amqp_url: str, queue: str, count: int) -> None:
    raw = RawPublisher(amqp_url)
    try:
        raw.fanout_to(f"{queue}.odd", queue)
        for n in range(count):
            properties = Basic.Properties(
                message_id=f"odd{n}{PLACEHOLDER}",
                content_type=f"text/{PLACEHOLDER}",
                headers={f"k{PLACEHOLDER}": {f"n{PLACEHOLDER}": [1, {f"a{PLACEHOLDER}": "v"}]}, "ok": 7},
            )
            raw.publish(f"{queue}.odd", f"rk{PLACEHOLDER}", b"odd body", properties)
        at = datetime.datetime.fromtimestamp(_SECONDS, tz=datetime.UTC)
        raw.publish(
            "",
            queue,
            b"late",
            Basic.Properties(message_id="late", timestamp=at, headers={"sent": at}),
            swaps=((struct.pack(">Q", _SECONDS), struct.pack(">Q", _NANOSECONDS)),),
        )
        raw.publish("", queue, b"plain", Basic.Properties(message_id="plain"))
    finally:
        raw.close()


def _check_odd(message: Message, n: int) -> None:
    assert message.body == b"odd body"
    assert message.message_id == f"odd{n}{_BAD}"
    assert message.content_type == f"text/{_BAD}"
    assert message.routing_key == f"rk{_BAD}"
    assert message.headers == {f"k{_BAD}": {f"n{_BAD}": [1, {f"a{_BAD}": "v"}]}, "ok": 7}


async def _check_late(provider: AmqpMessageProvider) -> None:
    """The timestamp datetime cannot hold: None as the property, the integer sent as a header."""
    message = await _receive(provider)
    assert (message.message_id, message.body, message.timestamp) == ("late", b"late", None)
    assert message.headers == {"sent": _NANOSECONDS}
    await provider.ack(message)


async def test_short_strings_not_utf8_and_huge_timestamps_are_delivered_not_fatal(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str
) -> None:
    await amqp_broker.declare_queue(queue_name)
    # Waiting before the consumer starts: the first deliveries arrive behind basic.consume-ok, so the
    # bulk reader lets aiormq's path take them (pamqp decodes their frames).
    await anyio.to_thread.run_sync(_publish_odd, amqp_url, queue_name, 2)
    provider = amqp_broker.provider(queue_name, prefetch=10, ack_batch_size=1)
    try:
        await provider.start()
        underlay = provider._underlay
        for n in range(2):
            message = await _receive(provider)
            _check_odd(message, n)
            assert not message.redelivered
            await provider.ack(message)
        await _check_late(provider)
        plain = await _receive(provider)
        assert (plain.message_id, plain.redelivered) == ("plain", False)
        await provider.ack(plain)
        # Published while consuming: taken whole by the bulk reader with swarrow's own decoder.
        route = provider.fast_path.bulk_route if provider.fast_path else None
        assert route is not None
        taken = route.taken
        await anyio.to_thread.run_sync(_publish_odd, amqp_url, queue_name, 3)
        for n in range(3):
            message = await _receive(provider)
            _check_odd(message, n)
            assert not message.redelivered
            await provider.ack(message)
        await _check_late(provider)
        assert (await _receive(provider)).message_id == "plain"
        assert route.taken > taken
        assert provider._underlay is underlay  # no channel or connection was lost on the way
    finally:
        await provider.close()


def _publish_odd_letter(amqp_url: str, dead: str) -> None:
    raw = RawPublisher(amqp_url)
    try:
        at = datetime.datetime.fromtimestamp(_SECONDS, tz=datetime.UTC)
        properties = Basic.Properties(
            message_id=f"odd{PLACEHOLDER}", timestamp=at, headers={f"k{PLACEHOLDER}": 1}
        )
        swaps = ((struct.pack(">Q", _SECONDS), struct.pack(">Q", _NANOSECONDS)),)
        raw.publish("", dead, b"odd body", properties, swaps=swaps)
        raw.publish("", dead, b"plain", Basic.Properties(message_id="plain"))
    finally:
        raw.close()


async def test_the_dead_letter_scan_reads_a_letter_with_odd_bytes(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # The broker's own dead-lettering (or another client) can put such a letter in QUEUE.dead;
    # before, every `swarrow dead` command failed on it: "connection ... lost (Could not unmarshal ...)".
    dead = f"{queue_name}.dead"
    await amqp_broker.declare_queue(queue_name)
    await amqp_broker.declare_queue(dead)
    await anyio.to_thread.run_sync(_publish_odd_letter, amqp_url, dead)
    command = [sys.executable, "-m", "swarrow", "dead", "show", "--queue", queue_name, "--url", amqp_url]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    shown = await anyio.to_thread.run_sync(
        lambda: subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    )
    assert shown.returncode == 0, shown.stderr
    assert f"message_id=odd{_BAD}" in shown.stdout and "message_id=plain" in shown.stdout
    with anyio.fail_after(10):
        while (info := await amqp_broker.inspect_queue(dead)) is None or info.message_count != 2:
            await anyio.sleep(0.05)  # `show` leaves every letter where it was


def _reply_odd(amqp_url: str, reply_to: str, correlation_id: str) -> None:
    raw = RawPublisher(amqp_url)
    try:
        properties = Basic.Properties(correlation_id=correlation_id, message_id=f"r{PLACEHOLDER}")
        raw.publish("", reply_to, b"answer", properties)
    finally:
        raw.close()


async def test_an_rpc_reply_with_odd_bytes_reaches_its_caller(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # A worker written with another client answers with a message_id that is not UTF-8; before,
    # the caller's connection failed on the reply: RpcConnectionLost for it and every call in flight.
    await amqp_broker.declare_queue(queue_name)
    provider = amqp_broker.provider(queue_name, prefetch=1)

    async def serve() -> None:
        request = await _receive(provider)
        assert request.reply_to is not None and request.correlation_id is not None
        await anyio.to_thread.run_sync(_reply_odd, amqp_url, request.reply_to, request.correlation_id)
        await provider.ack(request)

    try:
        await provider.start()
        caller = AmqpBroker(amqp_url)  # a connection of its own, as a client process has
        try:
            async with anyio.create_task_group() as tg, RpcClient(caller) as client:
                tg.start_soon(serve)
                reply = await client.call(queue_name, b"question", timeout=10)
                assert (reply.body, reply.message.message_id) == (b"answer", f"r{_BAD}")
        finally:
            await caller.close()
    finally:
        await provider.close()
