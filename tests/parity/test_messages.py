"""Parity: what a message may carry — values that round-trip alike, and values refused before the wire."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Any

import pytest

from parity.harness import Side, on_both, take
from swarrow import ConfigurationError, InvalidMessageError, Message, PublishError

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]

HEADERS: dict[str, Any] = {
    "str": "héllo",
    "int": 5,
    "negative": -(2**63),
    "float": 1.5,
    "decimal": Decimal("1.25"),
    "bool": True,
    "none": None,
    "list": [1, "a", [2], {"k": "v"}],
    "table": {"a": {"b": 1}},
    "naive": datetime(2024, 1, 2, 3, 4, 5, 123456),
    "aware": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
    "k" * 128: "longest key",
}


async def test_headers_and_properties_come_back_alike(sides: list[Side]) -> None:
    async def scenario(side: Side) -> Message:
        queue = await side.declare("q")
        await side.publish(
            queue, "x", headers=HEADERS, timestamp=datetime(2024, 5, 6, 7, 8, 9, 999999), priority=255,
            delivery_mode=2, content_type="text/plain", message_id="m" * 255, expiration="60000",
            correlation_id="c", reply_to="r", type="t", app_id="a", content_encoding="utf-8",
        )  # fmt: skip
        provider = side.broker.provider(queue)
        await provider.start()
        (message,) = await take(provider, 1)
        await provider.ack(message)
        await provider.close()
        return message.replace(delivery_tag=None, consumer_tag=None)

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    assert rabbit.headers["naive"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert rabbit.headers["aware"] == datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert rabbit.timestamp == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


BAD = [
    ({"headers": {"h": b"bytes"}}, "headers['h']"),
    ({"headers": {"h": (1, 2)}}, "headers['h']"),
    ({"headers": {"h": {1}}}, "headers['h']"),
    ({"headers": {"h": uuid.uuid4()}}, "headers['h']"),
    ({"headers": {"h": 2**63}}, "headers['h']"),
    ({"headers": {"d": Decimal("123456789.123456789")}}, "headers['d']"),  # raw TypeError over AMQP before
    ({"headers": {"h": [1, b"x"]}}, "headers['h'][1]"),
    ({"headers": {"t": {"deep": (1,)}}}, "headers['t']['deep']"),
    ({"headers": {"k" * 129: 1}}, "headers key"),
    ({"headers": {"h": "x" * 200_000}}, "headers encode to"),
    ({"message_id": "m" * 256}, "message_id"),
    ({"priority": 300}, "priority"),
    ({"delivery_mode": 3}, "delivery_mode"),
    ({"expiration": "abc"}, "expiration"),
    ({"expiration": "-1"}, "expiration"),
    ({"expiration": "1.5"}, "expiration"),
    ({"expiration": " 200"}, "expiration"),
    ({"expiration": "315360000001"}, "expiration"),  # over RabbitMQ's ten years: memory:// took it
    ({"headers": {"when": datetime(1960, 1, 1)}}, "headers['when']"),  # raw struct.error over AMQP before
    (
        {"headers": {"when": [datetime(2106, 2, 7, 6, 28, 16, tzinfo=UTC)]}},
        "headers['when'][0]",
    ),  # read back 1978
    ({"timestamp": datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)}, "timestamp"),
    ({"user_id": "nobody-at-all"}, "user_id"),
]


@pytest.mark.parametrize(("fields", "named"), BAD, ids=[named for _, named in BAD])
async def test_what_amqp_cannot_carry_is_refused_before_the_wire_on_both(
    sides: list[Side], fields: dict[str, Any], named: str
) -> None:
    async def scenario(side: Side) -> tuple[str, str, int | None]:
        queue = await side.declare("q")
        publisher = side.broker.publisher()
        try:
            try:
                await publisher.publish(Message(b"bad", **fields), queue)
            except (InvalidMessageError, ConfigurationError) as exc:
                error = (type(exc).__name__, str(exc))
            else:
                error = ("", "published")
            await publisher.publish(Message(b"good"), queue)  # the same publisher still works
        finally:
            await publisher.close()
        return error[0], error[1], await side.ready(queue)

    memory, rabbit = await on_both(sides, scenario)
    assert named in memory[1] and named in rabbit[1]
    assert memory[2] == rabbit[2] == 1
    if "user_id" in fields:  # RabbitMQ knows the connection's user; memory:// has none, so refuses any
        assert rabbit[0] == "InvalidMessageError" and memory[0] == "ConfigurationError"
    else:
        assert memory[0] == rabbit[0] == "InvalidMessageError"


async def test_user_id_of_the_connection_user_is_delivered_on_rabbitmq_and_refused_on_memory(
    sides: list[Side],
) -> None:
    async def scenario(side: Side) -> str:
        queue = await side.declare("q")
        try:
            await side.publish(queue, "x", user_id="guest")
        except ConfigurationError as exc:
            return str(exc)
        return "published"

    memory, rabbit = await on_both(sides, scenario)
    assert rabbit == "published"
    assert "user_id" in memory and "memory://" in memory


@pytest.mark.parametrize("expiration", ["0", "+5", "007", "-0", "315360000000"])
async def test_odd_but_valid_expiration_strings_are_taken_on_both(sides: list[Side], expiration: str) -> None:
    async def scenario(side: Side) -> bool:
        queue = await side.declare("q")
        try:
            await side.publish(queue, "x", expiration=expiration)
        except PublishError:
            return False
        return True

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit is True


async def test_a_message_without_an_id_gets_a_random_one_on_both(sides: list[Side]) -> None:
    async def scenario(side: Side) -> list[bool]:
        queue = await side.declare("q")
        await side.publish(queue, "a", "b")
        provider = side.broker.provider(queue)
        await provider.start()
        first, second = await take(provider, 2)
        for message in (first, second):
            await provider.ack(message)
        await provider.close()
        ids = [first.message_id or "", second.message_id or ""]
        return [len(ids[0]) == 32, all(c in "0123456789abcdef" for c in ids[0]), ids[0] != ids[1]]

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == [True, True, True]


async def test_a_float_header_comes_back_in_32_bits_on_both(sides: list[Side]) -> None:
    """aiormq packs a float header in 32 bits; memory:// said 0.1, RabbitMQ 0.10000000149011612."""

    async def scenario(side: Side) -> Any:
        queue = await side.declare("q")
        await side.publish(queue, "x", headers={"f": 0.1, "nested": [{"g": 2.5}]})
        provider = side.broker.provider(queue)
        await provider.start()
        (message,) = await take(provider, 1)
        await provider.ack(message)
        await provider.close()
        return message.headers

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    assert rabbit["f"] == 0.10000000149011612 and rabbit["nested"] == [{"g": 2.5}]


class _Colour(IntEnum):
    RED = 1


class _Shape(StrEnum):
    ROUND = "round"


async def test_values_come_back_as_the_amqp_client_decodes_them(sides: list[Side]) -> None:
    """memory:// handed back the very objects published: a bytearray body (mutable after the publish),
    an IntEnum, Decimal('1E+3'), tables in insertion order. Over AMQP: bytes, int, Decimal('1000'),
    keys sorted (pamqp sorts every table it encodes)."""

    async def scenario(side: Side) -> list[Any]:
        queue = await side.declare("q")
        body = bytearray(b"before")
        edges = [datetime(1970, 1, 1, tzinfo=UTC), datetime(2106, 2, 7, 6, 28, 15, tzinfo=UTC)]
        headers = {"zz": _Colour.RED, "aa": {"y": _Shape.ROUND, "b": Decimal("1E+3")}, "mm": edges}
        publisher = side.broker.publisher()
        try:
            await publisher.publish(Message(body, headers=headers), queue)  # type: ignore[arg-type]
            await publisher.publish(Message(memoryview(b"view")), queue)  # type: ignore[arg-type]
        finally:
            await publisher.close()
        body[:] = b"after!"
        provider = side.broker.provider(queue)
        await provider.start()
        first, second = await take(provider, 2)
        for message in (first, second):
            await provider.ack(message)
        await provider.close()
        seen = first.headers
        return [
            type(first.body), first.body, type(second.body), list(seen), list(seen["aa"]),
            [type(seen["zz"]), type(seen["aa"]["y"]), str(seen["aa"]["b"])], seen["mm"],
        ]  # fmt: skip

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    assert rabbit[:6] == [bytes, b"before", bytes, ["aa", "mm", "zz"], ["b", "y"], [int, str, "1000"]]


async def test_a_body_over_rabbitmqs_default_max_size_is_refused_and_the_publisher_goes_on(
    sides: list[Side],
) -> None:
    """RabbitMQ 3.10 refuses a body over 128 MiB (its default max_message_size); memory:// took it."""

    async def scenario(side: Side) -> tuple[str, int | None]:
        queue = await side.declare("q")
        publisher = side.broker.publisher()
        try:
            try:
                await publisher.publish(Message(bytes(134_217_729)), queue)
            except PublishError as exc:
                error = "refused" if "134217728" in str(exc) else str(exc)
            else:
                error = "published"
            await publisher.publish(Message(b"small"), queue)
        finally:
            await publisher.close()
        return error, await side.ready(queue)

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == ("refused", 1)


async def test_headers_none_means_no_headers_on_both(sides: list[Side]) -> None:
    """memory:// raised a raw TypeError ('NoneType' object is not iterable); AMQP delivered it with {}."""

    async def scenario(side: Side) -> Any:
        queue = await side.declare("q")
        await side.publish(queue, "x", headers=None)
        provider = side.broker.provider(queue)
        await provider.start()
        (message,) = await take(provider, 1)
        await provider.ack(message)
        await provider.close()
        return message.headers

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == {}
