"""Quorum retry topology on a real RabbitMQ: at-least-once dead-lettering and the broker's delivery limit."""

from __future__ import annotations

import aio_pika
import anyio
import pytest

from swarrow.amqp import AmqpBroker
from swarrow.topology import RetryTopology

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def _get(
    channel: aio_pika.abc.AbstractChannel, queue: str, timeout: float = 10
) -> aio_pika.abc.AbstractIncomingMessage:
    """basic.get `queue` until a message is there (a TTL or a dead-lettering may take a moment)."""
    target = await channel.get_queue(queue)
    with anyio.fail_after(timeout):
        while (message := await target.get(no_ack=False, fail=False)) is None:
            await anyio.sleep(0.05)
    return message


async def test_rabbitmq_accepts_the_at_least_once_topology_and_copies_come_back(
    amqp_broker: AmqpBroker, amqp_url: str, queue_name: str
) -> None:
    topology = RetryTopology(queue_name, (0.05,), quorum=True, dead_letter_strategy="at-least-once")
    created = await topology.declare(amqp_broker)
    assert [info.created for info in created] == [True, True, True]
    again = await topology.declare(amqp_broker)  # idempotent with the same arguments
    assert [info.created for info in again] == [False, False, False]
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(b"x", message_id="copy-1"), routing_key=f"{queue_name}.retry.1"
        )
        back = await _get(channel, queue_name)
        assert back.message_id == "copy-1"
        await back.ack()
    finally:
        await connection.close()


async def test_the_broker_delivery_limit_dead_letters_into_the_dead_queue(
    amqp_broker: AmqpBroker, amqp_url: str, queue_name: str
) -> None:
    await RetryTopology(queue_name, (1,), quorum=True, delivery_limit=2).declare(amqp_broker)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(b"p", message_id="poison"), routing_key=queue_name
        )
        for _ in range(3):  # delivered 3 times: the first plus 2 requeues, the limit
            message = await _get(channel, queue_name)
            await message.reject(requeue=True)
        dead = await _get(channel, f"{queue_name}.dead")
        assert dead.message_id == "poison"
        await dead.ack()
        assert (await (await channel.get_queue(queue_name)).get(fail=False)) is None
    finally:
        await connection.close()


def test_swarrow_declare_offers_at_least_once_dead_lettering_and_a_queue_delivery_limit(
    amqp_url: str, queue_name: str
) -> None:
    from click.testing import CliRunner

    from swarrow.cli import cli

    args = ["declare", "--url", amqp_url, "-q", queue_name, "--quorum", "--retry-delays", "1s"]
    runner = CliRunner()
    try:
        result = runner.invoke(
            cli, [*args, "--dead-letter-strategy", "at-least-once", "--queue-delivery-limit", "10"]
        )
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0] == (
            f"created {queue_name} (quorum, dead-lettering at-least-once, "
            f"x-delivery-limit=10 → {queue_name}.dead)"
        )
        assert "dead-lettering at-least-once" in lines[1] and lines[1].startswith(
            f"created {queue_name}.retry.1"
        )
        # Declaring again without the options asks RabbitMQ to change the arguments: exit 2 naming the queue.
        again = runner.invoke(cli, args)
        assert again.exit_code == 2 and queue_name in again.output
        classic = runner.invoke(
            cli, ["declare", "--url", amqp_url, "-q", "other", "--dead-letter-strategy", "at-least-once"]
        )
        assert classic.exit_code == 2 and "--dead-letter-strategy needs --quorum" in classic.output
    finally:

        async def delete() -> None:
            broker = AmqpBroker(amqp_url)
            for name in (queue_name, f"{queue_name}.retry.1", f"{queue_name}.dead"):
                await broker.delete_queue(name)
            await broker.close()

        anyio.run(delete)
