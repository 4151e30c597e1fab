"""Parity: sender-selected distribution (`CC`, `BCC`), topic edge cases, dead-letter routing keys."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from parity.harness import Side, on_both, take
from swarrow import InvalidMessageError, Message

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]


async def _drain(side: Side, queue: str, count: int) -> list[Message]:
    provider = side.broker.provider(queue)
    await provider.start()
    try:
        messages = await take(provider, count)
        for message in messages:
            await provider.ack(message)
    finally:
        await provider.close()
    return messages


@pytest.mark.parametrize("kind", [{}, {"x_queue_type": "quorum"}], ids=["classic", "quorum"])
async def test_cc_and_bcc_route_copies_and_bcc_is_stripped(sides: list[Side], kind: dict[str, str]) -> None:
    """memory:// ignored CC and BCC: 1 copy instead of 3, and BCC reached the consumer."""

    async def scenario(side: Side) -> tuple[list[int | None], list[Any]]:
        main, copy, blind = side.q("main"), side.q("copy"), side.q("blind")
        for suffix in ("main", "copy", "blind"):
            await side.declare(suffix, **kind)
        headers = {"CC": [copy, 5, None, main], "BCC": [blind], "keep": 1}
        await side.publish(main, "x", headers=headers)
        ready = [await side.ready(q) for q in (main, copy, blind)]
        seen = []
        for queue in (main, copy, blind):
            (message,) = await _drain(side, queue, 1)
            seen.append((message.routing_key == main, dict(message.headers)))
        return ready, seen

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    cc = [sides[1].q("copy"), 5, None, sides[1].q("main")]
    assert rabbit == ([1, 1, 1], [(True, {"CC": cc, "keep": 1})] * 3)


async def test_cc_through_a_topic_exchange_routes_each_key_and_falls_back_once(sides: list[Side]) -> None:
    async def scenario(side: Side) -> list[int | None]:
        for suffix in ("orders", "invoices", "rest"):
            await side.declare(suffix)
        fallback = await side.exchange("fallback", "fanout")
        topic = await side.exchange("events", "topic", alternate_exchange=fallback)
        await side.broker.bind_queue(side.q("orders"), topic, "order.*")
        await side.broker.bind_queue(side.q("invoices"), topic, "invoice.#")
        await side.broker.bind_queue(side.q("rest"), fallback, "")
        publisher = side.broker.publisher()
        try:
            # One key routes, one does not: the alternate exchange is not used.
            await publisher.publish(
                Message(b"1", headers={"CC": ["nothing.here"]}), "order.placed", exchange=topic
            )
            await publisher.publish(
                Message(b"2", headers={"BCC": ["invoice.sent"]}), "order.paid", exchange=topic
            )
            await publisher.publish(Message(b"3", headers={"CC": ["x", "y"]}), "z", exchange=topic)
        finally:
            await publisher.close()
        return [await side.ready(side.q(s)) for s in ("orders", "invoices", "rest")]

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == [2, 1, 1]


@pytest.mark.parametrize("header", ["CC", "BCC"])
@pytest.mark.parametrize("value", ["a-queue", 5, {"k": "v"}], ids=["str", "int", "table"])
async def test_a_cc_or_bcc_that_is_not_a_list_is_refused_before_the_wire(
    sides: list[Side], header: str, value: object
) -> None:
    """RabbitMQ closes the publisher's channel (406 unacceptable_type_in_header); memory:// took it."""

    async def scenario(side: Side) -> tuple[str, int | None]:
        queue = await side.declare("q")
        publisher = side.broker.publisher()
        try:
            try:
                await publisher.publish(Message(b"x", headers={header: value}), queue)
            except InvalidMessageError as exc:
                error = str(exc)
            else:
                error = "published"
            await publisher.publish(Message(b"y"), queue)
        finally:
            await publisher.close()
        return error, await side.ready(queue)

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    assert f"headers[{header!r}]" in rabbit[0] and rabbit[1] == 1


@pytest.mark.parametrize("dead_key", [None, "moved", ""], ids=["own-keys", "dead-letter-key", "empty-key"])
async def test_dead_lettering_a_cc_message_routes_and_records_as_rabbitmq_does(
    sides: list[Side], dead_key: str | None
) -> None:
    async def scenario(side: Side) -> list[Any]:
        dlx = await side.exchange("dlx", "direct")
        queues = {}
        for key in ("main", "copy", "blind", "moved", ""):
            queues[key] = await side.declare(f"dead-{key or 'empty'}")
        main = side.q("main")
        for key, queue in queues.items():
            await side.broker.bind_queue(queue, dlx, main if key == "main" else key)
        extra = {} if dead_key is None else {"x_dead_letter_routing_key": dead_key}
        await side.declare("main", x_dead_letter_exchange=dlx, **extra)
        await side.publish(main, "x", headers={"CC": ["copy"], "BCC": ["blind"]})
        provider = side.broker.provider(main)
        await provider.start()
        (message,) = await take(provider, 1)
        await provider.reject(message)
        await provider.close()
        await anyio.sleep(0.2)  # where it went: counted once every queue had the time to take it
        reached = {key: await side.ready(queue) for key, queue in queues.items()}
        got = []
        for key, queue in queues.items():
            if reached[key]:
                (dead,) = await _drain(side, queue, 1)
                death = dead.headers["x-death"][0]
                got.append((key, dead.routing_key, "CC" in dead.headers, death["routing-keys"]))
        return [reached, got]

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    main = sides[1].q("main")
    if dead_key is None:
        # Routed again by every key it was published with, BCC's included (x-death lists CC's only).
        assert rabbit[0] == {"main": 1, "copy": 1, "blind": 1, "moved": 0, "": 0}
    else:
        assert rabbit[0] == {
            "main": 0,
            "copy": 0,
            "blind": 0,
            "moved": int(bool(dead_key)),
            "": int(not dead_key),
        }
    assert all(keys == [main, "copy"] for *_, keys in rabbit[1])


TOPIC_PATTERNS = ["#", "*", "", "#.a", "a.#.b", "a.*.#", "*.*", "a.*", "#.#", "a..b", "*.", ".*", "#.*"]
TOPIC_KEYS = ["", "a", "a.b", "a..b", "a.b.c.b", ".", "b.a", "a."]


async def test_topic_patterns_match_empty_words_and_empty_keys_alike(sides: list[Side]) -> None:
    """memory:// let `*` match the empty routing key (one empty word); RabbitMQ sees no word there."""

    async def scenario(side: Side) -> dict[str, list[str]]:
        topic = await side.exchange("t", "topic")
        for index, pattern in enumerate(TOPIC_PATTERNS):
            await side.declare(f"p{index}")
            await side.broker.bind_queue(side.q(f"p{index}"), topic, pattern)
        publisher = side.broker.publisher()
        try:
            for key in TOPIC_KEYS:
                await publisher.publish(Message(key.encode()), key, exchange=topic, mandatory=False)
        finally:
            await publisher.close()
        matched = {}
        for index, pattern in enumerate(TOPIC_PATTERNS):
            count = await side.ready(side.q(f"p{index}")) or 0
            matched[pattern] = sorted(m.body.decode() for m in await _drain(side, side.q(f"p{index}"), count))
        return matched

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    assert rabbit["*"] == ["a"] and rabbit["#"] == sorted(TOPIC_KEYS)
