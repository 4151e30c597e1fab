"""A quorum dead-letter queue counts every read as a delivery: `swarrow dead` says so before a limit bites.

RabbitMQ returns each letter a pass only looked at with its `x-delivery-count` one higher; with a
delivery limit on the dead-letter queue (an `x-delivery-limit`, a policy, RabbitMQ 4's default of 20)
the broker drops a letter read once too often. swarrow cannot lift that limit, so it warns as soon
as it sees letters read before, with the count, and the README says to keep limits off `Q.dead`.
"""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest

from swarrow import Message
from swarrow.amqp import AmqpBroker

pytestmark = [pytest.mark.integration]


def dead_list(queue: str, url: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "swarrow", "dead", "list", "--dead-queue", queue, "--url", url]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_reading_a_quorum_dead_letter_queue_again_warns_with_the_delivery_count(
    amqp_url: str, queue_name: str
) -> None:
    dead = f"{queue_name}.dead"

    async def setup() -> None:
        broker = AmqpBroker(amqp_url)
        await broker.connect()
        try:
            await broker.declare_queue(dead, arguments={"x-queue-type": "quorum", "x-delivery-limit": 5})
            for i in range(3):
                await broker.publisher().publish(Message(b"x", message_id=f"m{i}", delivery_mode=2), dead)
        finally:
            await broker.close()

    async def teardown() -> None:
        broker = AmqpBroker(amqp_url)
        await broker.connect()
        try:
            await broker.delete_queue(dead)
        finally:
            await broker.close()

    anyio.run(setup)
    try:
        first = dead_list(dead, amqp_url)
        assert first.returncode == 0 and "3 dead letters" in first.stdout, first.stderr
        assert "x-delivery-count" not in first.stderr  # never read before: nothing to say
        second = dead_list(dead, amqp_url)
        assert second.returncode == 0 and "3 dead letters" in second.stdout, second.stderr
        warning = second.stderr
        assert f"{dead!r} is a quorum queue" in warning and "x-delivery-count" in warning, warning
        assert "read 1 time(s) before" in warning and "delivery limit" in warning
        third = dead_list(dead, amqp_url)
        assert "read 2 time(s) before" in third.stderr, third.stderr
    finally:
        anyio.run(teardown)
