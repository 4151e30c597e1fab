"""Parity: queue declarations — what RabbitMQ refuses, what it compares on re-declare, what memory refuses."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from parity.harness import Side, eventually, on_both, take
from swarrow import ConfigurationError, Message, PublishError

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]


async def _declare_error(side: Side, durable: bool, arguments: dict[str, Any]) -> str | None:
    try:
        await side.broker.declare_queue(side.q("q"), durable=durable, arguments=arguments)
    except ConfigurationError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(
    ("durable", "arguments", "named"),
    [
        (True, {"x-message-ttl": "1000"}, "x-message-ttl"),
        (True, {"x-message-ttl": -1}, "x-message-ttl"),
        (True, {"x-message-ttl": 1000.0}, "x-message-ttl"),
        (True, {"x-message-ttl": True}, "x-message-ttl"),
        (True, {"x-max-length": "abc"}, "x-max-length"),
        (True, {"x-queue-type": "bogus"}, "x-queue-type"),
        (False, {"x-queue-type": "quorum"}, "durable"),
        (True, {"x-dead-letter-routing-key": "k"}, "x-dead-letter-routing-key"),
        (True, {"x-expires": 0}, "x-expires"),
        (True, {"x-max-priority": 300}, "x-max-priority"),
        (True, {"x-delivery-limit": 3}, "x-delivery-limit"),
        (True, {"x-overflow": "bogus"}, "x-overflow"),
        (True, {"x-dead-letter-exchange": 5}, "x-dead-letter-exchange"),
        (True, {"x-max-priority": 5, "x-queue-type": "quorum"}, "x-max-priority"),
    ],
)
async def test_arguments_rabbitmq_refuses_are_refused_on_both_naming_the_argument(
    sides: list[Side], durable: bool, arguments: dict[str, Any], named: str
) -> None:
    memory, rabbit = await on_both(sides, lambda side: _declare_error(side, durable, arguments))
    assert memory is not None and rabbit is not None
    assert named in memory and named in rabbit
    assert "already exists" not in rabbit, "a new queue with a bad argument is not a conflict"
    assert await sides[1].broker.inspect_queue(sides[1].q("q")) is None


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"x-max-priority": 10}, "x-max-priority"),
        ({"x-max-length-bytes": 100}, "x-max-length-bytes"),
        ({"x-single-active-consumer": True}, "x-single-active-consumer"),
        ({"x-queue-type": "stream"}, "x-queue-type"),
        ({"x-queue-type": "quorum", "x-delivery-limit": "3"}, "x-delivery-limit"),
        ({"x-queue-type": "quorum", "x-overflow": "reject-publish-dlx"}, "x-overflow"),
    ],
)
async def test_arguments_memory_does_not_model_are_refused_loudly(
    sides: list[Side], arguments: dict[str, Any], named: str
) -> None:
    memory, rabbit = await on_both(sides, lambda side: _declare_error(side, True, arguments))
    assert rabbit is None, "RabbitMQ accepts it"
    assert memory is not None and named in memory and "memory://" in memory


@pytest.mark.parametrize(
    ("first", "again", "named"),
    [
        ({"x-message-ttl": 1000}, {"x-message-ttl": 1000, "x-custom": 1}, None),
        ({"x-custom": 1}, {"x-custom": 2}, None),
        ({}, {"x-queue-type": "classic"}, None),
        ({"x-message-ttl": 1000}, {"x-message-ttl": 1000.0}, "x-message-ttl"),
        ({"x-max-length": 5}, {"x-max-length": 5.0}, "x-max-length"),
        ({"x-max-length": 5}, {}, "x-max-length"),
        ({"x-message-ttl": 1000}, {"x-message-ttl": 2000}, "x-message-ttl"),
    ],
)
async def test_re_declaring_compares_what_rabbitmq_compares(
    sides: list[Side], first: dict[str, Any], again: dict[str, Any], named: str | None
) -> None:
    async def scenario(side: Side) -> str | None:
        await side.broker.declare_queue(side.q("q"), arguments=first)
        return await _declare_error(side, True, again)

    memory, rabbit = await on_both(sides, scenario)
    if named is None:
        assert memory is None and rabbit is None
    else:
        assert memory is not None and rabbit is not None
        assert named in memory and named in rabbit


async def test_re_declaring_with_another_durability_is_refused_on_both(sides: list[Side]) -> None:
    async def scenario(side: Side) -> str | None:
        await side.broker.declare_queue(side.q("q"), durable=True)
        try:
            await side.broker.declare_queue(side.q("q"), durable=False)
        except ConfigurationError as exc:
            return str(exc)
        return None

    memory, rabbit = await on_both(sides, scenario)
    assert memory is not None and rabbit is not None
    assert "durable" in memory and "durable" in rabbit


@pytest.mark.parametrize("kind", [{}, {"x_queue_type": "quorum"}], ids=["classic", "quorum"])
@pytest.mark.parametrize("overflow", [None, "drop-head"])
async def test_max_length_drops_the_head_and_dead_letters_it_as_maxlen(
    sides: list[Side], overflow: str | None, kind: dict[str, str]
) -> None:
    async def scenario(side: Side) -> tuple[int | None, list[str], list[object]]:
        dead = await side.declare("dead")
        extra: dict[str, str] = dict(kind) if overflow is None else {"x_overflow": overflow, **kind}
        queue = await side.declare(
            "q", x_max_length=2, x_dead_letter_exchange="", x_dead_letter_routing_key=dead, **extra
        )
        await side.publish(queue, "m1", "m2", "m3")
        kept = []
        provider = side.broker.provider(queue)
        await provider.start()
        for _ in range(2):
            message = await provider.receive()
            assert message is not None
            kept.append(message.body.decode())
            await provider.ack(message)
        await provider.close()
        await eventually(lambda: side.ready(dead), 1)
        reader = side.broker.provider(dead)
        await reader.start()
        died = await reader.receive()
        assert died is not None
        await reader.ack(died)
        await reader.close()
        death = died.headers["x-death"][0]
        return await side.ready(queue), kept, [died.body, death["reason"], death["queue"], death["count"]]

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == (0, ["m2", "m3"], [b"m1", "maxlen", sides[1].q("q"), 1])


@pytest.mark.parametrize("kind", [{}, {"x_queue_type": "quorum"}], ids=["classic", "quorum"])
async def test_reject_publish_overflow_refuses_the_publish(sides: list[Side], kind: dict[str, str]) -> None:
    async def scenario(side: Side) -> tuple[bool, int | None]:
        queue = await side.declare("q", x_max_length=1, x_overflow="reject-publish", **kind)
        await side.publish(queue, "fits")
        if kind:
            await side.publish(queue, "one past the limit: a quorum queue refuses once it is over it")
        try:
            await side.publish(queue, "refused")
        except PublishError:
            refused = True
        else:
            refused = False
        return refused, await side.ready(queue)

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == (True, 2 if kind else 1)


async def test_reject_publish_dlx_refuses_and_dead_letters(sides: list[Side]) -> None:
    async def scenario(side: Side) -> tuple[bool, int | None, int | None]:
        dead = await side.declare("dead")
        queue = await side.declare(
            "q", x_max_length=1, x_overflow="reject-publish-dlx", x_dead_letter_exchange="",
            x_dead_letter_routing_key=dead,
        )  # fmt: skip
        await side.publish(queue, "fits")
        try:
            await side.publish(queue, "refused")
        except PublishError:
            refused = True
        else:
            refused = False
        return refused, await side.ready(queue), await eventually(lambda: side.ready(dead), 1)

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == (True, 1, 1)


async def test_an_unused_queue_with_x_expires_goes_away_and_inspecting_it_counts_as_use(
    sides: list[Side],
) -> None:
    async def scenario(side: Side) -> tuple[list[int | None], int | None]:
        queue = await side.declare("q", x_expires=400)
        await side.publish(queue, "x")
        polled = []
        for _ in range(6):  # a passive declare every 0.15 s keeps it alive past its 0.4 s
            polled.append(await side.ready(queue))
            await anyio.sleep(0.15)
        await anyio.sleep(0.8)  # the deadline passes untouched
        return polled, await side.ready(queue)

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == ([1] * 6, None)


async def test_a_consumed_queue_with_x_expires_stays(sides: list[Side]) -> None:
    async def scenario(side: Side) -> int | None:
        queue = await side.declare("q", x_expires=200)
        provider = side.broker.provider(queue)
        await provider.start()
        try:
            await anyio.sleep(0.5)  # the deadline passes while consumed
            return await side.ready(queue)
        finally:
            await provider.close()

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == 0


async def _bodies_of(side: Side, queue: str) -> list[tuple[str, str | None]]:
    """Every ready message of `queue` (taken and acked): body, and its latest x-death reason."""
    count = await side.ready(queue) or 0
    provider = side.broker.provider(queue, prefetch=max(count, 1))
    await provider.start()
    try:
        messages = await take(provider, count)
        for message in messages:
            await provider.ack(message)
    finally:
        await provider.close()
    return [
        (m.body.decode(), m.headers["x-death"][0]["reason"] if "x-death" in m.headers else None)
        for m in messages
    ]


@pytest.mark.parametrize("kind", [{}, {"x_queue_type": "quorum"}], ids=["classic", "quorum"])
@pytest.mark.parametrize("how", ["reject", "close"])
async def test_a_delivery_coming_back_to_a_full_queue_makes_it_drop_its_head(
    sides: list[Side], kind: dict[str, str], how: str
) -> None:
    """memory:// let a requeue take a drop-head queue past x-max-length (3 ready of 2); RabbitMQ drops
    the head."""

    async def scenario(side: Side) -> list[Any]:
        dead = await side.declare("dead")
        queue = await side.declare(
            "q", x_max_length=2, x_dead_letter_exchange="", x_dead_letter_routing_key=dead, **kind
        )
        await side.publish(queue, "m1", "m2", "m3")  # m1 dropped at once
        provider = side.broker.provider(queue, prefetch=1)
        await provider.start()
        (m2,) = await take(provider, 1)
        await side.publish(queue, "m4")  # ready: m3 m4
        await provider.stop_consuming()
        if how == "reject":
            await provider.reject(m2, requeue=True)
        await provider.close()
        await eventually(lambda: side.ready(dead), 2)
        return [await side.ready(queue), await _bodies_of(side, queue), await _bodies_of(side, dead)]

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    if kind and how == "reject":  # back of a quorum queue: m3 is the head then
        assert rabbit == [2, [("m4", None), ("m2", None)], [("m1", "maxlen"), ("m3", "maxlen")]]
    else:  # back at its place in a classic queue, or returned first on a quorum one: m2 is the head
        assert rabbit == [2, [("m3", None), ("m4", None)], [("m1", "maxlen"), ("m2", "maxlen")]]


@pytest.mark.parametrize("kind", [{}, {"x_queue_type": "quorum"}], ids=["classic", "quorum"])
async def test_a_dead_letter_into_a_full_reject_publish_queue(
    sides: list[Side], kind: dict[str, str]
) -> None:
    """A classic queue drops it; a quorum queue takes it past its limit (no publisher to refuse):
    memory:// refused it on both."""

    async def scenario(side: Side) -> list[int | None]:
        full = await side.declare("full", x_max_length=1, x_overflow="reject-publish", **kind)
        await side.publish(full, "fits")
        queue = await side.declare("q", x_dead_letter_exchange="", x_dead_letter_routing_key=full)
        await side.publish(queue, "dies")
        provider = side.broker.provider(queue)
        await provider.start()
        (message,) = await take(provider, 1)
        await provider.reject(message)
        await provider.close()
        return [
            await eventually(lambda: side.ready(full), 2 if kind else 1, timeout=1),
            await side.ready(queue),
        ]

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == [2 if kind else 1, 0]


async def test_publishing_does_not_keep_an_x_expires_queue_alive(sides: list[Side]) -> None:
    async def scenario(side: Side) -> int | None:
        queue = await side.declare("q", x_expires=400)
        publisher = side.broker.publisher()
        try:
            for _ in range(8):  # a publish every 0.1 s for 0.8 s: not a use of the queue
                try:
                    await publisher.publish(Message(b"x"), queue, mandatory=False)
                except PublishError:
                    break
                await anyio.sleep(0.1)
        finally:
            await publisher.close()
        return await eventually(lambda: side.ready(queue), None, timeout=1)

    memory, rabbit = await on_both(sides, scenario)
    assert memory is None and rabbit is None
