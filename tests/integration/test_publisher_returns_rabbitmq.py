"""Publisher confirms and returns: each publish gets its own outcome, even when message ids repeat."""

from __future__ import annotations

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
