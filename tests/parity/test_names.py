"""Parity: names — the reserved `amq.` namespace, AMQP's 255-byte names, exchange re-declares, bindings."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest

from parity.harness import Side, on_both
from swarrow import ConfigurationError, Message, PublishError

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]


async def _outcome(call: Awaitable[Any]) -> str:
    """'ok', or the error's type and whether it names what it refuses (the caller checks the text)."""
    try:
        await call
    except (ConfigurationError, PublishError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


async def test_exchange_re_declares_compare_durability_and_type(sides: list[Side]) -> None:
    """memory:// ignored `durable` on an exchange: a re-declare RabbitMQ refuses (406) passed on memory."""

    async def scenario(side: Side) -> list[str]:
        name = f"{side.prefix}.x"
        side.exchanges.append(name)
        broker = side.broker
        return [
            await _outcome(broker.declare_exchange(name, "direct", durable=False)),
            await _outcome(broker.declare_exchange(name, "direct", durable=False)),
            await _outcome(broker.declare_exchange(name, "direct", durable=True)),
            await _outcome(broker.declare_exchange(name, "fanout", durable=False)),
            await _outcome(broker.declare_exchange("amq.direct", "direct", durable=True)),
            await _outcome(broker.declare_exchange("amq.fanout", "fanout", durable=False)),
        ]

    memory, rabbit = await on_both(sides, scenario)
    assert [m[:2] for m in memory] == [r[:2] for r in rabbit] == ["ok", "ok", "Co", "Co", "ok", "Co"]
    assert all("durable" in text for text in (memory[2], rabbit[2], memory[5], rabbit[5]))


@pytest.mark.parametrize("kind", ["queue", "exchange"])
async def test_a_new_amq_name_is_refused_naming_it(sides: list[Side], kind: str) -> None:
    """memory:// declared `amq.anything`; RabbitMQ refuses (403, a raw ChannelAccessRefused for exchanges)."""

    async def scenario(side: Side) -> str:
        name = f"amq.{side.prefix}"
        if kind == "queue":
            return await _outcome(side.broker.declare_queue(name))
        return await _outcome(side.broker.declare_exchange(name, "direct", durable=False))

    memory, rabbit = await on_both(sides, scenario)
    for text in (memory, rabbit):
        assert text.startswith("ConfigurationError") and "amq." in text and "ACCESS_REFUSED" in text


async def test_binding_to_the_default_exchange_is_refused_naming_it(sides: list[Side]) -> None:
    async def scenario(side: Side) -> str:
        queue = await side.declare("q")
        return await _outcome(side.broker.bind_queue(queue, "", "k"))

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    assert rabbit.startswith("ConfigurationError") and "default exchange" in rabbit


@pytest.mark.parametrize(
    "call",
    ["declare_queue", "inspect_queue", "purge_queue", "delete_queue", "provider", "declare_exchange", "bind"],
)
async def test_a_name_over_255_bytes_is_refused_naming_it(sides: list[Side], call: str) -> None:
    """Over AMQP a raw ValueError from pamqp ('Max length exceeded for queue'); memory:// accepted it."""
    long = "é" * 128  # 256 bytes

    async def scenario(side: Side) -> str:
        broker = side.broker
        try:
            if call == "provider":
                broker.provider(long)
                return "ok"
            if call == "declare_exchange":
                return await _outcome(broker.declare_exchange(long, "direct", durable=False))
            if call == "bind":
                return await _outcome(broker.bind_queue(await side.declare("q"), long, "k"))
            return await _outcome(getattr(broker, call)(long))
        except ConfigurationError as exc:
            return f"ConfigurationError: {exc}"

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    assert rabbit.startswith("ConfigurationError") and ("256 bytes" in rabbit or "128 characters" in rabbit)


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("queue", "café"),
        ("queue", "orders[eu]"),
        ("queue", "a\nb"),
        ("exchange", "événements"),
        ("exchange", "x" * 128),
    ],
    ids=["queue-accent", "queue-bracket", "queue-newline", "exchange-accent", "exchange-128"],
)
async def test_a_name_the_amqp_client_cannot_send_is_refused_naming_it(
    sides: list[Side], kind: str, name: str
) -> None:
    """pamqp takes only [a-zA-Z0-9 -_.:@#,/+] in names and 127 characters for an exchange: a raw
    ValueError ('Invalid value for queue') over AMQP, while memory:// took any name."""

    async def scenario(side: Side) -> list[str]:
        outcomes = []
        if kind == "queue":
            outcomes.append(await _outcome(side.broker.declare_queue(name)))
            publisher = side.broker.publisher()
            outcomes.append(await _outcome(publisher.publish(Message(b"x"), name)))  # a routing key: any
            await publisher.close()
        else:
            outcomes.append(await _outcome(side.broker.declare_exchange(name, "direct", durable=False)))
            publisher = side.broker.publisher()
            outcomes.append(await _outcome(publisher.publish(Message(b"x"), "k", exchange=name)))
            await publisher.close()
        return [o.split(":")[0] for o in outcomes] + [repr(name[:60]) in outcomes[0]]

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    if kind == "queue":  # the routing key may be anything: unroutable, as no such queue can exist
        assert rabbit == ["ConfigurationError", "PublishError", True]
    else:
        assert rabbit == ["ConfigurationError", "InvalidMessageError", True]


@pytest.mark.parametrize("where", ["routing_key", "exchange"])
async def test_a_routing_key_or_exchange_over_255_bytes_is_refused_before_the_wire(
    sides: list[Side], where: str
) -> None:
    async def scenario(side: Side) -> tuple[str, int | None]:
        queue = await side.declare("q")
        publisher = side.broker.publisher()
        try:
            if where == "routing_key":
                error = await _outcome(publisher.publish(Message(b"x"), "k" * 256))
            else:
                error = await _outcome(publisher.publish(Message(b"x"), queue, exchange="e" * 256))
            await publisher.publish(Message(b"y"), queue)  # the publisher still works
        finally:
            await publisher.close()
        return error, await side.ready(queue)

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    assert rabbit[0].startswith("InvalidMessageError") and rabbit[1] == 1
    assert "256 bytes" in rabbit[0] or "256 characters" in rabbit[0]
