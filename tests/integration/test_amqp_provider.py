"""The AMQP provider under the faults it promises to survive, against the real RabbitMQ."""

from __future__ import annotations

import os
import subprocess

import anyio
import pytest

from processors.ack import AckProcessor
from swarrow import Consumer, Layer, Message, Stack
from swarrow.amqp import AmqpBroker

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

# The node behind SWARROW_TEST_URL: restarting another one fails the test and disturbs its users.
RABBITMQCTL = ["rabbitmqctl", "-n", os.environ.get("SWARROW_TEST_NODE", "rabbit@localhost")]


async def _publish(broker: AmqpBroker, queue: str, ids: list[str]) -> None:
    publisher = broker.publisher()
    for message_id in ids:
        await publisher.publish(Message(b"x" * 100, message_id=message_id, delivery_mode=2), queue)
    await publisher.close()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run([*RABBITMQCTL, *args], check=True, capture_output=True, timeout=60)


async def test_consumer_resumes_after_the_broker_restarts(amqp_broker: AmqpBroker, queue_name: str) -> None:
    await amqp_broker.declare_queue(queue_name, durable=True)
    ids = [f"r{i}" for i in range(300)]
    await _publish(amqp_broker, queue_name, ids)
    consumer_broker = AmqpBroker(amqp_broker.broker_url, reconnect_interval=0.5)
    provider = consumer_broker.provider(queue_name, prefetch=20)
    processed: list[str] = []
    halfway = anyio.Event()
    broker_down = anyio.Event()

    channels: list[object] = []

    async def handle(message: Message) -> bool:
        processed.append(message.message_id or "")
        if provider._underlay is not None and provider._underlay not in channels:
            channels.append(provider._underlay)
        if len(processed) == 50:
            halfway.set()
        if halfway.is_set() and not broker_down.is_set():
            await broker_down.wait()  # in flight while the broker stops: their acks hit a dead channel
        return set(processed) != set(ids)

    consumer = Consumer(
        provider, Stack(Layer(AckProcessor, provider=provider), callback=handle), concurrency=5
    )

    async def restart_broker() -> None:
        await halfway.wait()
        try:
            await anyio.to_thread.run_sync(_rabbitmqctl, "stop_app")
            broker_down.set()
            assert not provider.is_consuming
        finally:
            broker_down.set()
            await anyio.to_thread.run_sync(_rabbitmqctl, "start_app")

    try:
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                tg.start_soon(restart_broker)
                reason = await consumer.run()
    finally:
        await consumer_broker.close()
    assert reason.code == "callback"
    assert set(processed) == set(ids), f"lost: {sorted(set(ids) - set(processed))[:10]}"
    assert len(processed) > len(ids), "the messages in flight during the outage must be redelivered"
    # The reopened channel, too, lets the connection's reader run ahead (its frame queue is unbounded).
    assert len(channels) >= 2
    assert all(channel.frames.maxsize == 0 for channel in channels)  # type: ignore[attr-defined]
    await amqp_broker.close()  # its connection died with the restart; the fixture reconnects for cleanup


async def test_consumer_survives_its_queue_being_deleted_and_recreated(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    await amqp_broker.declare_queue(queue_name)
    await _publish(amqp_broker, queue_name, ["before"])
    provider = amqp_broker.provider(queue_name)
    seen: list[str] = []
    first = anyio.Event()

    async def handle(message: Message) -> bool:
        seen.append(message.message_id or "")
        first.set()
        return message.message_id != "after"

    consumer = Consumer(provider, Stack(Layer(AckProcessor, provider=provider), callback=handle))

    async def recreate() -> None:
        await first.wait()
        await amqp_broker.delete_queue(queue_name)
        while provider.is_consuming:  # the server-sent basic.cancel reaches the provider
            await anyio.sleep(0.02)
        await amqp_broker.declare_queue(queue_name)
        await _publish(amqp_broker, queue_name, ["after"])

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(recreate)
            reason = await consumer.run()
    assert reason.code == "callback"
    assert seen == ["before", "after"]


async def test_unreachable_broker_is_a_clear_error_with_the_password_masked() -> None:
    from swarrow import BrokerUnavailableError

    broker = AmqpBroker("amqp://guest:s3cret@127.0.0.1:1/", connect_timeout=2)
    with pytest.raises(BrokerUnavailableError) as caught:
        await broker.connect()
    assert "s3cret" not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)


async def test_wrong_credentials_are_a_clear_error(amqp_url: str) -> None:
    from swarrow import BrokerUnavailableError

    broker = AmqpBroker("amqp://guest:wrong-password@127.0.0.1:5672/", connect_timeout=5)
    with pytest.raises(BrokerUnavailableError) as caught:
        await broker.connect()
    assert "wrong-password" not in str(caught.value)


async def test_prefetch_bounds_what_the_provider_holds(amqp_broker: AmqpBroker, queue_name: str) -> None:
    # The channel's frame queue is unbounded (see let_reader_run_ahead): prefetch alone bounds it.
    await amqp_broker.declare_queue(queue_name, durable=True)
    await _publish(amqp_broker, queue_name, [f"p{i}" for i in range(30)])
    provider = amqp_broker.provider(queue_name, prefetch=5)
    await provider.start()
    try:
        held = []
        with anyio.fail_after(10):
            while len(held) < 5:
                message = await provider.receive()
                assert message is not None
                held.append(message)
            while (info := await amqp_broker.inspect_queue(queue_name)) is None or info.message_count != 25:
                await anyio.sleep(0.02)
        assert provider.receive_nowait() is None, "more unacked deliveries than the prefetch"
        for message in held:
            await provider.ack(message)
        with anyio.fail_after(10):
            more = await provider.receive()
        assert more is not None and more.message_id == "p5"
        await provider.ack(more)
    finally:
        await provider.close()
