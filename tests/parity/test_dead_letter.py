"""Parity: dead-lettering — `x-death` as RabbitMQ writes it, and the automatic cycles it drops."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from parity.harness import Side, eventually, on_both, take

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]


def _shape(headers: Any) -> dict[str, Any]:
    """The headers with each `time` replaced by whether it is a UTC datetime to the second."""
    out = dict(headers)
    out["x-death"] = [
        {
            **death,
            "time": isinstance(death["time"], datetime)
            and death["time"].tzinfo is not None
            and death["time"].utcoffset() == UTC.utcoffset(None)
            and death["time"].microsecond == 0,
        }
        for death in headers["x-death"]
    ]
    return out


@pytest.mark.parametrize("kind", [{}, {"x_queue_type": "quorum"}], ids=["classic", "quorum"])
async def test_an_expired_message_carries_original_expiration_and_every_x_death_field(
    sides: list[Side], kind: dict[str, str]
) -> None:
    async def scenario(side: Side) -> tuple[dict[str, Any], str | None]:
        target = await side.declare("target")
        wait = await side.declare("wait", x_dead_letter_exchange="", x_dead_letter_routing_key=target, **kind)
        await side.publish(wait, "x", expiration="50", headers={"keep": "me"})
        provider = side.broker.provider(target)
        await provider.start()
        (message,) = await take(provider, 1)
        await provider.ack(message)
        await provider.close()
        return _shape(message.headers), message.expiration

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    wait = sides[1].q("wait")
    assert rabbit == (
        {
            "keep": "me",
            "x-death": [
                {
                    "count": 1,
                    "reason": "expired",
                    "queue": wait,
                    "time": True,
                    "exchange": "",
                    "routing-keys": [wait],
                    "original-expiration": "50",
                }
            ],
            "x-first-death-exchange": "",
            "x-first-death-queue": wait,
            "x-first-death-reason": "expired",
        },
        None,
    )


async def test_a_second_death_bumps_the_count_and_keeps_the_first_time(sides: list[Side]) -> None:
    async def scenario(side: Side) -> tuple[list[int], bool]:
        queue = await side.declare("q", x_dead_letter_exchange="", x_dead_letter_routing_key=side.q("q"))
        await side.publish(queue, "x")
        provider = side.broker.provider(queue)
        await provider.start()
        counts, times = [], []
        for round_ in range(3):
            (message,) = await take(provider, 1)
            if round_:
                death = message.headers["x-death"][0]
                counts.append(death["count"])
                times.append(death["time"])
            if round_ == 1:
                await anyio.sleep(1.05)  # let the clock pass a second: `time` has second precision
            if round_ < 2:
                await provider.reject(message)
            else:
                await provider.ack(message)
        await provider.close()
        return counts, times[0] == times[1]

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == ([1, 2], True)


async def test_a_queue_whose_ttl_dead_letters_into_itself_drops_the_message(sides: list[Side]) -> None:
    async def scenario(side: Side) -> tuple[int | None, int | None]:
        name = side.q("loop")
        queue = await side.declare(
            "loop", x_message_ttl=50, x_dead_letter_exchange="", x_dead_letter_routing_key=name
        )
        await side.publish(queue, "x")
        gone = await eventually(lambda: side.ready(queue), 0)
        await anyio.sleep(0.3)  # a circulating message would be back by now (TTL 50 ms)
        return gone, await side.ready(queue)

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == (0, 0)


async def test_a_two_queue_ttl_cycle_drops_the_message_when_it_comes_round(sides: list[Side]) -> None:
    async def scenario(side: Side) -> list[Any]:
        a, b = side.q("a"), side.q("b")
        await side.declare("a", x_message_ttl=50, x_dead_letter_exchange="", x_dead_letter_routing_key=b)
        await side.declare("b", x_dead_letter_exchange="", x_dead_letter_routing_key=a)
        await side.publish(a, "x")
        provider = side.broker.provider(b)
        await provider.start()
        (message,) = await take(provider, 1)
        await provider.reject(message)  # B -> A by a reject: no cycle yet (a reject breaks it)
        await provider.close()
        # Back in A it expires again: A -> B would close a cycle A, B, A of which B's death is a reject,
        # so RabbitMQ routes it to B again.
        again = await eventually(lambda: side.ready(b), 1)
        reader = side.broker.provider(b)
        await reader.start()
        (second,) = await take(reader, 1)
        await reader.ack(second)
        await reader.close()
        return [again, [(d["queue"] == a, d["reason"], d["count"]) for d in second.headers["x-death"]]]

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == [1, [(True, "expired", 2), (False, "rejected", 1)]]


async def test_a_ttl_only_cycle_between_two_queues_is_dropped(sides: list[Side]) -> None:
    async def scenario(side: Side) -> tuple[int | None, int | None]:
        a, b = side.q("a"), side.q("b")
        await side.declare("a", x_message_ttl=30, x_dead_letter_exchange="", x_dead_letter_routing_key=b)
        await side.declare("b", x_message_ttl=30, x_dead_letter_exchange="", x_dead_letter_routing_key=a)
        await side.publish(a, "x")
        await eventually(lambda: _total(side, a, b), 0)
        await anyio.sleep(0.3)  # a circulating message would show up again within 30 ms
        return await side.ready(a), await side.ready(b)

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == (0, 0)


async def _total(side: Side, *queues: str) -> int:
    return sum([await side.ready(q) or 0 for q in queues])


@pytest.mark.parametrize("kind", [{}, {"x_queue_type": "quorum"}], ids=["classic", "quorum"])
async def test_a_rejected_message_is_dead_lettered_with_its_routing(
    sides: list[Side], kind: dict[str, str]
) -> None:
    async def scenario(side: Side) -> dict[str, Any]:
        dead = await side.declare("dead")
        queue = await side.declare("q", x_dead_letter_exchange="", x_dead_letter_routing_key=dead, **kind)
        await side.publish(queue, "x", message_id="m-1")
        provider = side.broker.provider(queue)
        await provider.start()
        (message,) = await take(provider, 1)
        await provider.reject(message)
        await provider.close()
        reader = side.broker.provider(dead)
        await reader.start()
        (died,) = await take(reader, 1)
        await reader.ack(died)
        await reader.close()
        return {
            "headers": _shape(died.headers),
            "message_id": died.message_id,
            "routing_key": died.routing_key,
        }

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    assert rabbit["headers"]["x-death"][0]["reason"] == "rejected"
    assert rabbit["routing_key"] == sides[1].q("dead")


@pytest.mark.parametrize("kind", [{}, {"x_queue_type": "quorum"}], ids=["classic", "quorum"])
@pytest.mark.parametrize(
    "given",
    [
        {"zz": 1, "x-delivery-count": 7},
        {"x-first-death-queue": "set-by-the-producer"},
        {"x-death": "not-a-list", "x-first-death-queue": "set-by-the-producer"},
    ],
    ids=["plain", "first-death-given", "x-death-not-a-list"],
)
async def test_dead_lettering_rewrites_the_headers_as_rabbitmq_does(
    sides: list[Side], kind: dict[str, str], given: dict[str, Any]
) -> None:
    """memory:// kept its own key order, dropped a producer's x-delivery-count, and never overwrote
    x-first-death-*; RabbitMQ sorts the table, keeps x-delivery-count, and writes x-first-death-*
    (over a producer's) only when the message had no x-death."""

    async def scenario(side: Side) -> tuple[list[str], dict[str, Any]]:
        dead = await side.declare("dead")
        queue = await side.declare("q", x_dead_letter_exchange="", x_dead_letter_routing_key=dead, **kind)
        await side.publish(queue, "x", headers=given)
        provider = side.broker.provider(queue)
        await provider.start()
        (message,) = await take(provider, 1)
        await provider.reject(message)
        await provider.close()
        reader = side.broker.provider(dead)
        await reader.start()
        (died,) = await take(reader, 1)
        await reader.ack(died)
        await reader.close()
        return list(died.headers), _shape(died.headers)

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    keys = rabbit[0]
    assert keys == sorted(keys)
    if "x-death" in given:
        assert (
            rabbit[1]["x-first-death-queue"] == "set-by-the-producer" and "x-first-death-reason" not in keys
        )
    else:
        assert rabbit[1]["x-first-death-queue"] == sides[1].q("q")


@pytest.mark.parametrize("kind", [{}, {"x_queue_type": "quorum"}], ids=["classic", "quorum"])
async def test_a_queue_whose_overflow_dead_letters_into_itself_drops_the_head(
    sides: list[Side], kind: dict[str, str]
) -> None:
    async def scenario(side: Side) -> tuple[list[str], int | None]:
        name = side.q("loop")
        queue = await side.declare(
            "loop", x_max_length=1, x_dead_letter_exchange="", x_dead_letter_routing_key=name, **kind
        )
        await side.publish(queue, "first", "second")
        await anyio.sleep(0.2)
        count = await side.ready(queue) or 0
        provider = side.broker.provider(queue, prefetch=5)
        await provider.start()
        messages = await take(provider, count)
        for message in messages:
            await provider.ack(message)
        await provider.close()
        return [m.body.decode() for m in messages], await side.ready(queue)

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == (["second"], 0)  # "first" would close a maxlen-only cycle: dropped
