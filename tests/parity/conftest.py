"""The parity suite's fixture: a memory side and a RabbitMQ side, each scenario's queues deleted after."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from parity.harness import AMQP_URL, Side, rabbitmq_listens
from swarrow import MemoryBroker
from swarrow.amqp import AmqpBroker


@pytest.fixture
async def sides(request: pytest.FixtureRequest) -> AsyncIterator[list[Side]]:
    """`[memory, rabbitmq]`: RabbitMQ is required under CI=true (or SWARROW_REQUIRE_RABBITMQ=1)."""
    if not rabbitmq_listens():
        message = f"no RabbitMQ at {AMQP_URL} for the parity suite (run `make rabbitmq`)"
        if (
            os.environ.get("CI", "").lower() in ("1", "true", "yes")
            or os.environ.get("SWARROW_REQUIRE_RABBITMQ") == "1"
        ):
            pytest.fail(message)
        pytest.skip(message)
    prefix = f"parity.{request.node.name[:40]}.{uuid.uuid4().hex[:8]}".replace("[", ".").replace("]", "")
    amqp = AmqpBroker(AMQP_URL, reconnect_interval=0.5)
    await amqp.connect()
    pair = [
        Side("memory", MemoryBroker(f"parity-{uuid.uuid4().hex[:6]}"), prefix),
        Side("rabbitmq", amqp, prefix),
    ]
    try:
        yield pair
    finally:
        for queue in pair[1].queues:
            await amqp.delete_queue(queue)
        if pair[1].exchanges:  # no delete_exchange in the Broker API: a raw channel of our own
            channel = await amqp._scratch_channel()
            for exchange in pair[1].exchanges:
                await channel.exchange_delete(exchange)
            await channel.close()
        await amqp.close()
