"""AckProcessor against RabbitMQ: requeue flags redeliveries, reject dead-letters, quorum counts rejects."""

from __future__ import annotations

import anyio
import pytest

from processors.ack import AckProcessor
from swarrow import Message
from swarrow.amqp import AmqpBroker, AmqpMessageProvider

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


class Boom(Exception):
    pass


async def _fail(message: Message) -> bool:
    raise Boom()


async def _ok(message: Message) -> bool:
    return True


async def _next(provider: AmqpMessageProvider) -> Message:
    with anyio.fail_after(3):
        message = await provider.receive()
    assert message is not None
    return message


async def _publish(broker: AmqpBroker, queue: str, body: bytes) -> None:
    publisher = broker.publisher()
    await publisher.publish(Message(body), queue)
    await publisher.close()


async def test_requeue_on_error_redelivers_with_the_flag_then_acks(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    await amqp_broker.declare_queue(queue_name)
    await _publish(amqp_broker, queue_name, b"again")
    provider = amqp_broker.provider(queue_name, prefetch=1)
    await provider.start()
    try:
        first = await _next(provider)
        assert first.redelivered is False
        with pytest.raises(Boom):
            await AckProcessor(_fail, provider=provider, requeue_on_error=True)(first)
        second = await _next(provider)
        assert second.redelivered is True and second.body == b"again"
        assert await AckProcessor(_ok, provider=provider)(second) is True
    finally:
        await provider.close()
    info = await amqp_broker.inspect_queue(queue_name)
    assert info is not None and info.message_count == 0  # acked: nothing came back on close


async def test_reject_without_requeue_goes_to_the_dead_letter_exchange(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    dead = f"{queue_name}.dead"
    await amqp_broker.declare_queue(dead)
    await amqp_broker.declare_queue(
        queue_name, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    )
    await _publish(amqp_broker, queue_name, b"gone")
    provider = amqp_broker.provider(queue_name, prefetch=1)
    await provider.start()
    try:
        with pytest.raises(Boom):
            await AckProcessor(_fail, provider=provider)(await _next(provider))
    finally:
        await provider.close()
    with anyio.fail_after(3):
        while (info := await amqp_broker.inspect_queue(dead)) is None or info.message_count == 0:
            await anyio.sleep(0.02)  # dead-lettering is asynchronous in the broker
    assert info.message_count == 1


async def test_quorum_queue_counts_rejects_in_x_delivery_count(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    await amqp_broker.declare_queue(queue_name, arguments={"x-queue-type": "quorum"})
    await _publish(amqp_broker, queue_name, b"q")
    provider = amqp_broker.provider(queue_name, prefetch=1)
    ack = AckProcessor(_fail, provider=provider, requeue_on_error=True)
    await provider.start()
    try:
        seen = []
        for _ in range(3):
            message = await _next(provider)
            seen.append(message.headers.get("x-delivery-count"))
            with pytest.raises(Boom):
                await ack(message)
    finally:
        await provider.close()
    assert seen[0] in (None, 0)
    assert seen[1:] == [1, 2]
