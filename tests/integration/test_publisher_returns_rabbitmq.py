"""Publisher confirms and returns: each publish gets its own outcome, even when message ids repeat."""

from __future__ import annotations

import functools

import anyio
import pytest

from swarrow import Message
from swarrow.amqp import AmqpBroker
from swarrow.errors import PublishError

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def test_concurrent_copies_with_one_message_id_each_get_their_own_outcome(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # Before the fix: aiormq matched the return by message_id, so the unroutable copy was reported confirmed
    # (the caller would ack an original whose copy was dropped) and the delivered one reported returned.
    await amqp_broker.declare_queue(queue_name)
    publisher = amqp_broker.publisher()
    outcomes: dict[str, str] = {}
    rounds = 20

    async def publish(key: str, routing_key: str, message: Message) -> None:
        try:
            await publisher.publish(message, routing_key)
            outcomes[key] = "confirmed"
        except PublishError:
            outcomes[key] = "returned"

    try:
        for i in range(rounds):
            message = Message(b"copy", message_id=f"same-{i}")
            async with anyio.create_task_group() as tg:
                tg.start_soon(publish, f"lost-{i}", f"{queue_name}.nowhere", message)
                tg.start_soon(publish, f"kept-{i}", queue_name, message)
    finally:
        await publisher.close()
    wrong = {k: v for k, v in outcomes.items() if v != ("returned" if k.startswith("lost") else "confirmed")}
    assert wrong == {}, f"{len(wrong)} of {2 * rounds} publishes got the other's outcome: {wrong}"
    info = await amqp_broker.inspect_queue(queue_name)
    assert info is not None and info.message_count == rounds


async def test_a_non_mandatory_publish_of_the_same_id_does_not_take_a_mandatory_ones_return(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # aiormq maps every confirmed publish's message_id to its delivery tag, mandatory or not: a
    # non-mandatory publish of the same id sent while a mandatory one awaits its return took that
    # return (it raised), and the unroutable mandatory one was reported confirmed.
    await amqp_broker.declare_queue(queue_name)
    publisher = amqp_broker.publisher()
    outcomes: dict[str, str] = {}
    rounds = 20

    async def publish(key: str, routing_key: str, message: Message, *, mandatory: bool) -> None:
        try:
            await publisher.publish(message, routing_key, mandatory=mandatory)
            outcomes[key] = "confirmed"
        except PublishError:
            outcomes[key] = "returned"

    try:
        for i in range(rounds):
            message = Message(b"copy", message_id=f"same-{i}")
            mandatory = functools.partial(publish, mandatory=True)
            optional = functools.partial(publish, mandatory=False)
            async with anyio.create_task_group() as tg:
                tg.start_soon(mandatory, f"lost-{i}", f"{queue_name}.nowhere", message)
                tg.start_soon(optional, f"kept-{i}", queue_name, message)
    finally:
        await publisher.close()
    wrong = {k: v for k, v in outcomes.items() if v != ("returned" if k.startswith("lost") else "confirmed")}
    assert wrong == {}, f"{len(wrong)} of {2 * rounds} publishes got the other's outcome: {wrong}"
