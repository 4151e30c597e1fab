"""Parity: settling twice, publishing where nothing routes, and the `amq.*` exchanges."""

from __future__ import annotations

import pytest

from parity.harness import Side, eventually, on_both, take
from swarrow import Message, PublishError

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.mark.parametrize("kind", [{}, {"x_queue_type": "quorum"}], ids=["classic", "quorum"])
@pytest.mark.parametrize("second", ["ack", "reject", "requeue"])
async def test_a_delivery_settled_twice_changes_nothing_else(
    sides: list[Side], second: str, kind: dict[str, str]
) -> None:
    async def scenario(side: Side) -> tuple[int | None, int | None]:
        queue = await side.declare("q", **kind)
        await side.publish(queue, "a", "b", "c")
        provider = side.broker.provider(queue, prefetch=3)  # acks go one at a time
        await provider.start()
        a, b, c = await take(provider, 3)
        await provider.ack(a)
        if second == "ack":
            await provider.ack(a)
        else:
            await provider.reject(a, requeue=second == "requeue")
        await provider.ack(b)
        await provider.ack(c)
        await provider.close()
        return await eventually(lambda: side.ready(queue), 0, timeout=1), await side.ready(queue)

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == (0, 0)  # nothing redelivered: the other deliveries' acks stood


async def test_publishing_to_a_missing_exchange_raises_and_the_next_publish_works(sides: list[Side]) -> None:
    async def scenario(side: Side) -> tuple[bool, int | None]:
        queue = await side.declare("q")
        publisher = side.broker.publisher()
        try:
            try:
                await publisher.publish(Message(b"x"), queue, exchange=f"{side.prefix}.no-such-exchange")
            except PublishError:
                raised = True
            else:
                raised = False
            await publisher.publish(Message(b"y"), queue)
        finally:
            await publisher.close()
        return raised, await side.ready(queue)

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == (True, 1)


@pytest.mark.parametrize("exchange", ["amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"])
async def test_the_amq_exchanges_exist_and_route_nowhere_unbound(sides: list[Side], exchange: str) -> None:
    async def scenario(side: Side) -> tuple[str, str]:
        queue = await side.declare("q")
        publisher = side.broker.publisher()
        try:
            await publisher.publish(Message(b"x"), queue, exchange=exchange, mandatory=False)
            dropped = "dropped"
            try:
                await publisher.publish(Message(b"x"), queue, exchange=exchange, mandatory=True)
            except PublishError as exc:
                returned = "unroutable" if "unroutable" in str(exc) else str(exc)
            else:
                returned = "routed"
        finally:
            await publisher.close()
        return dropped, returned

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == ("dropped", "unroutable")


async def test_topic_routing_and_an_alternate_exchange_route_alike(sides: list[Side]) -> None:
    async def scenario(side: Side) -> list[int | None]:
        one, many, rest = side.q("one"), side.q("many"), side.q("rest")
        for suffix in ("one", "many", "rest"):
            await side.declare(suffix)
        fallback = await side.exchange("fallback", "fanout")
        topic = await side.exchange("events", "topic", alternate_exchange=fallback)
        await side.broker.bind_queue(one, topic, "order.*")
        await side.broker.bind_queue(many, topic, "order.#")
        await side.broker.bind_queue(rest, fallback, "")
        publisher = side.broker.publisher()
        try:
            for key in ("order.placed", "order.placed.eu", "order", "invoice.sent"):
                await publisher.publish(Message(key.encode()), key, exchange=topic)
        finally:
            await publisher.close()
        return [await side.ready(one), await side.ready(many), await side.ready(rest)]

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == [1, 3, 1]
