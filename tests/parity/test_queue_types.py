"""Parity: which queue arguments each queue type takes, and the values RabbitMQ 3.10 checks."""

from __future__ import annotations

from typing import Any

import pytest

from parity.harness import Side, on_both
from swarrow import ConfigurationError

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]

# One valid value for each argument RabbitMQ 3.10 knows (memory:// models or refuses each).
KNOWN: dict[str, Any] = {
    "x-expires": 60_000,
    "x-message-ttl": 60_000,
    "x-dead-letter-exchange": "",
    "x-max-length": 10,
    "x-max-length-bytes": 10_000,
    "x-max-in-memory-length": 10,
    "x-max-in-memory-bytes": 10_000,
    "x-max-priority": 5,
    "x-overflow": "drop-head",
    "x-queue-mode": "lazy",
    "x-queue-version": 2,
    "x-single-active-consumer": False,
    "x-queue-master-locator": "client-local",
    "x-queue-leader-locator": "balanced",
    "x-quorum-initial-group-size": 1,
    "x-delivery-limit": 5,
    "x-dead-letter-strategy": "at-most-once",
    "x-max-age": "1D",
    "x-initial-cluster-size": 1,
    "x-stream-max-segment-size-bytes": 1_000_000,
}


async def _declare(side: Side, arguments: dict[str, Any]) -> str | None:
    try:
        await side.broker.declare_queue(side.q("q"), arguments=arguments)
    except ConfigurationError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
@pytest.mark.parametrize("argument", list(KNOWN))
async def test_an_argument_of_another_queue_type_is_refused_on_both(
    sides: list[Side], queue_type: str, argument: str
) -> None:
    """memory:// took `x-queue-leader-locator` on a classic queue, `x-queue-mode` on a quorum one..."""
    arguments = {"x-queue-type": queue_type, argument: KNOWN[argument]}
    memory, rabbit = await on_both(sides, lambda side: _declare(side, arguments))
    if rabbit is None:  # RabbitMQ takes it: memory models it, or refuses it as not modelled
        assert memory is None or ("memory://" in memory and argument in memory), memory
    else:
        assert memory is not None and argument in memory and argument in rabbit, (memory, rabbit)
        assert "memory://" not in memory, "RabbitMQ refuses it too: the error must not blame memory://"


BAD_VALUES = [
    ({"x-queue-mode": "bogus"}, "x-queue-mode"),
    ({"x-queue-version": 3}, "x-queue-version"),
    (
        {"x-queue-master-locator": "bogus"},
        "x-queue-master-locator",
    ),  # RabbitMQ: INTERNAL_ERROR, connection gone
    ({"x-queue-type": "quorum", "x-queue-leader-locator": "bogus"}, "x-queue-leader-locator"),
    ({"x-queue-type": "quorum", "x-quorum-initial-group-size": 0}, "x-quorum-initial-group-size"),
    ({"x-queue-type": "quorum", "x-max-in-memory-length": -1}, "x-max-in-memory-length"),
    ({"x-queue-type": "quorum", "x-dead-letter-strategy": "bogus"}, "x-dead-letter-strategy"),
    ({"x-single-active-consumer": "yes"}, "x-single-active-consumer"),
    ({"x-message-ttl": 315_360_000_001}, "x-message-ttl"),
    ({"x-expires": 315_360_000_001}, "x-expires"),
    ({"x-message-ttl": 2**63}, "x-message-ttl"),  # a raw TypeError from the AMQP encoder before
    ({"x-custom": b"bytes"}, "x-custom"),  # a raw TypeError from the AMQP encoder before
]


@pytest.mark.parametrize(("arguments", "named"), BAD_VALUES, ids=[named for _, named in BAD_VALUES])
async def test_values_rabbitmq_refuses_are_refused_on_both_naming_the_argument(
    sides: list[Side], arguments: dict[str, Any], named: str
) -> None:
    """memory:// took the first eight (stored and ignored); over AMQP the last two were a raw TypeError."""
    memory, rabbit = await on_both(sides, lambda side: _declare(side, arguments))
    assert memory is not None and rabbit is not None, (memory, rabbit)
    assert named in memory and named in rabbit
    assert await sides[1].broker.inspect_queue(sides[1].q("q")) is None


GOOD_VALUES = [
    {"x-message-ttl": 315_360_000_000, "x-expires": 315_360_000_000},  # memory:// stopped at 2**32 - 1
    {"x-single-active-consumer": False},  # memory:// refused it as not modelled: it asks for nothing
    {"x-queue-type": "quorum", "x-dead-letter-strategy": "at-most-once"},  # the default: nothing to model
    {"x-queue-mode": "default", "x-queue-version": 1, "x-queue-master-locator": "min-masters"},
]


@pytest.mark.parametrize("arguments", GOOD_VALUES, ids=[str(i) for i in range(len(GOOD_VALUES))])
async def test_values_rabbitmq_takes_are_taken_on_both(sides: list[Side], arguments: dict[str, Any]) -> None:
    memory, rabbit = await on_both(sides, lambda side: _declare(side, arguments))
    assert memory is None and rabbit is None, (memory, rabbit)


@pytest.mark.parametrize("exchange_type", ["bogus", "DIRECT"])
async def test_an_unknown_exchange_type_is_refused_and_the_connection_survives(
    sides: list[Side], exchange_type: str
) -> None:
    """RabbitMQ answers an unknown type by closing the whole connection (COMMAND_INVALID, a raw
    ConnectionCommandInvalid before): now refused before the wire, naming the type."""

    async def scenario(side: Side) -> tuple[str, int | None]:
        name = f"{side.prefix}.x"
        side.exchanges.append(name)
        try:
            await side.broker.declare_exchange(name, exchange_type, durable=False)
        except ConfigurationError as exc:
            error = str(exc)
        else:
            error = "declared"
        queue = await side.declare("after")
        await side.publish(queue, "x")
        return error, await side.ready(queue)

    memory, rabbit = await on_both(sides, scenario)
    assert repr(exchange_type) in memory[0] and repr(exchange_type) in rabbit[0]
    assert memory[1] == rabbit[1] == 1
