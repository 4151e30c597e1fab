"""Parity: what a consumer sees — order after a requeue, the prefetch window as a push, TTL 0, stopping."""

from __future__ import annotations

import pytest

from parity.harness import Side, bodies, eventually, on_both, take

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.timeout(60)]

QUEUE_TYPES = [{}, {"x_queue_type": "quorum"}]
TYPE_IDS = ["classic", "quorum"]


@pytest.mark.parametrize("kind", QUEUE_TYPES, ids=TYPE_IDS)
async def test_a_requeued_message_goes_back_to_its_place_classic_or_to_the_back_quorum(
    sides: list[Side], kind: dict[str, str]
) -> None:
    async def scenario(side: Side) -> list[tuple[str, bool]]:
        queue = await side.declare("q", **kind)
        await side.publish(queue, "m1", "m2", "m3")
        provider = side.broker.provider(queue, prefetch=1)
        await provider.start()
        try:
            (first,) = await take(provider, 1)
            await provider.reject(first, requeue=True)
            seen = []
            for _ in range(3):
                (message,) = await take(provider, 1)
                seen.append((message.body.decode(), message.redelivered))
                await provider.ack(message)
            return seen
        finally:
            await provider.close()

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    if kind:
        assert rabbit == [("m2", False), ("m3", False), ("m1", True)]
    else:
        assert rabbit == [("m1", True), ("m2", False), ("m3", False)]


async def test_a_requeue_inside_a_prefetch_window_comes_back_after_what_was_pushed(sides: list[Side]) -> None:
    async def scenario(side: Side) -> list[str]:
        queue = await side.declare("q")
        await side.publish(queue, "m1", "m2", "m3")
        provider = side.broker.provider(queue, prefetch=10)
        await provider.start()
        try:
            (first,) = await take(provider, 1)
            await eventually(lambda: side.ready(queue), 0)  # the whole window was pushed
            await provider.reject(first, requeue=True)
            messages = await take(provider, 3)
            for message in messages:
                await provider.ack(message)
            return bodies(messages)
        finally:
            await provider.close()

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == ["m2", "m3", "m1"]


@pytest.mark.parametrize("kind", QUEUE_TYPES, ids=TYPE_IDS)
async def test_the_prefetch_window_is_pushed_so_close_redelivers_what_was_never_seen(
    sides: list[Side], kind: dict[str, str]
) -> None:
    async def scenario(side: Side) -> tuple[int | None, list[tuple[str, bool, object]]]:
        queue = await side.declare("q", **kind)
        await side.publish(queue, "m1", "m2", "m3", "m4", "m5")
        provider = side.broker.provider(queue, prefetch=3)
        await provider.start()
        await take(provider, 1)  # one seen, two more pushed and buffered
        ready_while_consuming = await eventually(lambda: side.ready(queue), 2)
        await provider.close()
        await eventually(lambda: side.ready(queue), 5)
        again = side.broker.provider(queue, prefetch=10)
        await again.start()
        try:
            messages = await take(again, 5)
            for message in messages:
                await again.ack(message)
        finally:
            await again.close()
        return ready_while_consuming, [
            (m.body.decode(), m.redelivered, m.headers.get("x-delivery-count")) for m in messages
        ]

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    assert rabbit[0] == 2
    if kind:  # a closing consumer's deliveries go back to the head of a quorum queue, counted
        assert rabbit[1] == [
            ("m1", True, 1), ("m2", True, 1), ("m3", True, 1), ("m4", False, None), ("m5", False, None)
        ]  # fmt: skip
    else:
        assert rabbit[1] == [
            ("m1", True, None), ("m2", True, None), ("m3", True, None),
            ("m4", False, None), ("m5", False, None),
        ]  # fmt: skip


async def test_quorum_delivery_count_grows_by_two_per_reject_and_close_round(sides: list[Side]) -> None:
    async def scenario(side: Side) -> list[object]:
        queue = await side.declare("q", x_queue_type="quorum")
        await side.publish(queue, "poison")
        counts = []
        for _ in range(2):
            provider = side.broker.provider(queue, prefetch=5)
            await provider.start()
            (message,) = await take(provider, 1)
            counts.append(message.headers.get("x-delivery-count"))
            await provider.reject(message, requeue=True)
            await take(provider, 1)  # pushed straight back into the window, unseen by the application
            await provider.close()
        provider = side.broker.provider(queue, prefetch=5)
        await provider.start()
        (last,) = await take(provider, 1)
        counts.append(last.headers.get("x-delivery-count"))
        await provider.ack(last)
        await provider.close()
        return counts

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == [None, 2, 4]


@pytest.mark.parametrize("kind", QUEUE_TYPES, ids=TYPE_IDS)
async def test_stop_consuming_still_hands_over_what_was_pushed(
    sides: list[Side], kind: dict[str, str]
) -> None:
    async def scenario(side: Side) -> tuple[list[str], object]:
        queue = await side.declare("q", **kind)
        await side.publish(queue, "a", "b", "c")
        provider = side.broker.provider(queue, prefetch=10)
        await provider.start()
        await eventually(lambda: side.ready(queue), 0)
        await provider.stop_consuming()
        messages = await take(provider, 3)
        after = await provider.receive()
        for message in messages:
            await provider.ack(message)
        await provider.close()
        return bodies(messages), after

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == (["a", "b", "c"], None)


@pytest.mark.parametrize("kind", QUEUE_TYPES, ids=TYPE_IDS)
async def test_ttl_zero_delivers_to_a_waiting_consumer_and_expires_otherwise(
    sides: list[Side], kind: dict[str, str]
) -> None:
    async def scenario(side: Side) -> tuple[list[str], int | None, int | None]:
        dead = await side.declare("dead")
        queue = await side.declare(
            "q", x_message_ttl=0, x_dead_letter_exchange="", x_dead_letter_routing_key=dead, **kind
        )
        provider = side.broker.provider(queue, prefetch=10)
        await provider.start()
        await side.publish(queue, "to-the-consumer")
        received = await take(provider, 1)
        await provider.ack(received[0])
        await provider.close()
        await side.publish(queue, "nobody-waits")
        expired = await eventually(lambda: side.ready(queue), 0)  # a quorum queue expires on its own timer
        return bodies(received), expired, await eventually(lambda: side.ready(dead), 1)

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == (["to-the-consumer"], 0, 1)


async def test_messages_are_shared_round_robin_between_two_consumers(sides: list[Side]) -> None:
    async def scenario(side: Side) -> tuple[list[str], list[str]]:
        queue = await side.declare("q")
        first = side.broker.provider(queue, prefetch=10)
        second = side.broker.provider(queue, prefetch=10)
        await first.start()
        await second.start()
        await eventually(lambda: _consumers(side, queue), 2)
        await side.publish(queue, "1", "2", "3", "4")
        got = await take(first, 2), await take(second, 2)
        for provider, messages in zip((first, second), got, strict=True):
            for message in messages:
                await provider.ack(message)
            await provider.close()
        return bodies(got[0]), bodies(got[1])

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit == (["1", "3"], ["2", "4"])


async def _consumers(side: Side, queue: str) -> int:
    info = await side.broker.inspect_queue(queue)
    return 0 if info is None else info.consumer_count


@pytest.mark.parametrize("kind", QUEUE_TYPES, ids=TYPE_IDS)
async def test_several_rejects_come_back_in_place_classic_or_in_reject_order_quorum(
    sides: list[Side], kind: dict[str, str]
) -> None:
    async def scenario(side: Side) -> list[tuple[str, bool, object]]:
        queue = await side.declare("q", **kind)
        await side.publish(queue, "a", "b", "c", "d")
        provider = side.broker.provider(queue, prefetch=2)
        await provider.start()
        a, b = await take(provider, 2)
        # Not consuming any more, so nothing is pushed back between the two rejects (on RabbitMQ
        # that push races the second reject).
        await provider.stop_consuming()
        await provider.reject(b, requeue=True)
        await provider.reject(a, requeue=True)
        await provider.close()
        await eventually(lambda: side.ready(queue), 4)
        reader = side.broker.provider(queue, prefetch=10)
        await reader.start()
        messages = await take(reader, 4)
        for message in messages:
            await reader.ack(message)
        await reader.close()
        return [(m.body.decode(), m.redelivered, m.headers.get("x-delivery-count")) for m in messages]

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    if kind:
        assert rabbit == [("c", False, None), ("d", False, None), ("b", True, 1), ("a", True, 1)]
    else:
        assert rabbit == [("a", True, None), ("b", True, None), ("c", False, None), ("d", False, None)]


@pytest.mark.parametrize("kind", QUEUE_TYPES, ids=TYPE_IDS)
async def test_two_consumers_closing_return_their_deliveries_in_rabbitmq_order(
    sides: list[Side], kind: dict[str, str]
) -> None:
    """A quorum queue serves what closed consumers returned first, oldest return first; memory:// put
    each closing consumer's deliveries at the very head (the last to close came back first)."""

    async def scenario(side: Side) -> list[tuple[str, bool]]:
        queue = await side.declare("q", **kind)
        first = side.broker.provider(queue, prefetch=2)
        second = side.broker.provider(queue, prefetch=2)
        await first.start()
        await second.start()
        await eventually(lambda: _consumers(side, queue), 2)
        await side.publish(queue, "1", "2", "3", "4", "5", "6")
        assert bodies(await take(first, 2)) == ["1", "3"]
        assert bodies(await take(second, 2)) == ["2", "4"]
        await second.close()
        await first.close()
        await eventually(lambda: side.ready(queue), 6)
        reader = side.broker.provider(queue, prefetch=10)
        await reader.start()
        messages = await take(reader, 6)
        for message in messages:
            await reader.ack(message)
        await reader.close()
        return [(m.body.decode(), m.redelivered) for m in messages]

    memory, rabbit = await on_both(sides, scenario)
    assert memory == rabbit
    order = ["2", "4", "1", "3"] if kind else ["1", "2", "3", "4"]
    assert rabbit == [(b, True) for b in order] + [("5", False), ("6", False)]
