"""One contract, two providers: every test runs against the in-memory broker and against RabbitMQ."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import pytest

from swarrow import Broker, ConfigurationError, Message, MessageProvider, PublishError

pytestmark = pytest.mark.anyio


async def _publish(broker: Broker, queue: str, count: int, **fields: object) -> list[str]:
    publisher = broker.publisher()
    ids = [f"m{i}" for i in range(count)]
    for message_id in ids:
        await publisher.publish(
            Message(b"body " + message_id.encode(), message_id=message_id, **fields), queue
        )  # type: ignore[arg-type]
    await publisher.close()
    return ids


async def _take(provider: MessageProvider, count: int, timeout: float = 10.0) -> list[Message]:
    taken: list[Message] = []
    with anyio.fail_after(timeout):
        while len(taken) < count:
            message = await provider.receive()
            assert message is not None, "provider stopped before delivering everything"
            taken.append(message)
    return taken


async def _ready_count(broker: Broker, queue: str, expected: int, timeout: float = 10.0) -> int:
    """Wait (bounded) until the queue reports `expected` ready messages; return the last count seen."""
    count = -1
    with anyio.move_on_after(timeout):
        while True:
            info = await broker.inspect_queue(queue)
            count = -1 if info is None else info.message_count
            if count == expected:
                break
            await anyio.sleep(0.05)
    return count


async def test_delivers_every_message_once_and_ack_removes_them(broker: Broker, queue_name: str) -> None:
    await broker.declare_queue(queue_name)
    ids = await _publish(broker, queue_name, 20)
    provider = broker.provider(queue_name, prefetch=50)
    await provider.start()
    messages = await _take(provider, 20)
    assert sorted(m.message_id or "" for m in messages) == sorted(ids)
    assert all(m.queue == queue_name and not m.redelivered and m.delivery_tag for m in messages)
    for message in messages:
        await provider.ack(message)
    await provider.close()
    assert await _ready_count(broker, queue_name, 0) == 0


async def test_requeued_message_comes_back_flagged_redelivered(broker: Broker, queue_name: str) -> None:
    await broker.declare_queue(queue_name)
    await _publish(broker, queue_name, 1)
    provider = broker.provider(queue_name)
    await provider.start()
    (first,) = await _take(provider, 1)
    await provider.reject(first, requeue=True)
    (again,) = await _take(provider, 1)
    assert again.message_id == first.message_id
    assert again.redelivered
    await provider.ack(again)
    await provider.close()


async def test_close_returns_unsettled_deliveries_to_the_queue(broker: Broker, queue_name: str) -> None:
    await broker.declare_queue(queue_name)
    await _publish(broker, queue_name, 5)
    provider = broker.provider(queue_name, prefetch=10)
    await provider.start()
    taken = await _take(provider, 5)
    await provider.ack(taken[0])
    await provider.close()
    assert await _ready_count(broker, queue_name, 4) == 4
    second = broker.provider(queue_name)
    await second.start()
    back = await _take(second, 4)
    assert {m.message_id for m in back} == {m.message_id for m in taken[1:]}
    assert all(m.redelivered for m in back)
    for message in back:
        await second.ack(message)
    await second.close()


async def test_prefetch_bounds_unsettled_deliveries(broker: Broker, queue_name: str) -> None:
    await broker.declare_queue(queue_name)
    await _publish(broker, queue_name, 10)
    provider = broker.provider(queue_name, prefetch=3)
    await provider.start()
    taken = await _take(provider, 3)
    with anyio.move_on_after(0.5) as waited:
        extra = await provider.receive()
        taken.append(extra)  # type: ignore[arg-type]
    assert waited.cancelled_caught, "a 4th delivery arrived with prefetch=3 and nothing settled"
    await provider.ack(taken[0])
    (fourth,) = await _take(provider, 1)
    assert fourth.message_id not in {m.message_id for m in taken[:3]}
    await provider.close()


async def test_rejected_message_is_dead_lettered_with_x_death(broker: Broker, queue_name: str) -> None:
    dead = f"{queue_name}.dead"
    await broker.declare_queue(dead)
    await broker.declare_queue(
        queue_name, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    )
    await _publish(broker, queue_name, 1)
    provider = broker.provider(queue_name)
    await provider.start()
    (message,) = await _take(provider, 1)
    await provider.reject(message, requeue=False)
    await provider.close()
    dead_provider = broker.provider(dead)
    await dead_provider.start()
    (lettered,) = await _take(dead_provider, 1)
    assert lettered.message_id == message.message_id
    (death,) = lettered.headers["x-death"]
    assert death["reason"] == "rejected"
    assert death["queue"] == queue_name
    assert death["count"] == 1
    await dead_provider.ack(lettered)
    await dead_provider.close()


async def test_queue_ttl_dead_letters_back_to_the_target_queue(broker: Broker, queue_name: str) -> None:
    waiting = f"{queue_name}.retry.1"
    await broker.declare_queue(queue_name)
    await broker.declare_queue(
        waiting,
        arguments={
            "x-message-ttl": 100,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue_name,
        },
    )
    provider = broker.provider(queue_name)
    await provider.start()
    started = anyio.current_time()
    await _publish(broker, waiting, 1)
    (message,) = await _take(provider, 1, timeout=10)
    assert anyio.current_time() - started >= 0.09
    assert message.headers["x-death"][0]["reason"] == "expired"
    assert message.headers["x-death"][0]["queue"] == waiting
    await provider.ack(message)
    await provider.close()


async def test_properties_and_headers_survive_the_round_trip(broker: Broker, queue_name: str) -> None:
    await broker.declare_queue(queue_name)
    sent = Message(
        b"\x00\xffbinary",
        headers={"x-tenant": "acme", "x-count": 3},
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
        priority=5,
        correlation_id="corr-1",
        reply_to="replies",
        message_id="id-1",
        timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        type="order.created",
        app_id="tests",
    )
    publisher = broker.publisher()
    await publisher.publish(sent, queue_name)
    provider = broker.provider(queue_name)
    await provider.start()
    (got,) = await _take(provider, 1)
    assert got.body == sent.body
    assert dict(got.headers) == {"x-tenant": "acme", "x-count": 3}
    for name in (
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "message_id",
        "type",
        "app_id",
    ):
        assert getattr(got, name) == getattr(sent, name), name
    assert got.timestamp is not None and got.timestamp.replace(tzinfo=UTC) == sent.timestamp
    assert got.routing_key == queue_name and got.exchange == ""
    await provider.ack(got)
    await provider.close()
    await publisher.close()


async def test_mandatory_publish_to_a_missing_queue_raises(broker: Broker, queue_name: str) -> None:
    publisher = broker.publisher()
    with pytest.raises(PublishError, match="unroutable"):
        await publisher.publish(Message(b"x"), f"{queue_name}.missing")
    await publisher.close()


async def test_declare_is_idempotent_and_conflicts_are_clear(broker: Broker, queue_name: str) -> None:
    first = await broker.declare_queue(queue_name, arguments={"x-message-ttl": 1000})
    again = await broker.declare_queue(queue_name, arguments={"x-message-ttl": 1000})
    assert (first.created, again.created) == (True, False)
    with pytest.raises(ConfigurationError, match=queue_name):
        await broker.declare_queue(queue_name, arguments={"x-message-ttl": 2000})
    info = await broker.inspect_queue(queue_name)
    assert info is not None and info.message_count == 0
    assert await broker.inspect_queue(f"{queue_name}.nope") is None


async def test_starting_on_a_missing_queue_names_it(broker: Broker, queue_name: str) -> None:
    provider = broker.provider(f"{queue_name}.absent")
    with pytest.raises(ConfigurationError, match=r"\.absent"):
        await provider.start()
    await provider.close()


async def test_stop_consuming_ends_receive_and_messages(broker: Broker, queue_name: str) -> None:
    await broker.declare_queue(queue_name)
    provider = broker.provider(queue_name)
    await provider.start()
    assert provider.is_consuming
    results: list[Message | None] = []

    async def wait_one() -> None:
        results.append(await provider.receive())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_one)
            await anyio.lowlevel.checkpoint()
            await provider.stop_consuming()
    assert results == [None]
    assert not provider.is_consuming
    await provider.close()


async def test_settling_twice_or_after_close_never_raises(broker: Broker, queue_name: str) -> None:
    await broker.declare_queue(queue_name)
    await _publish(broker, queue_name, 1)
    provider = broker.provider(queue_name)
    await provider.start()
    (message,) = await _take(provider, 1)
    await provider.close()
    await provider.ack(message)  # its channel is gone: logged and dropped, redelivered by the broker
    assert await _ready_count(broker, queue_name, 1) == 1


async def test_messages_iterator_yields_until_stopped(broker: Broker, queue_name: str) -> None:
    await broker.declare_queue(queue_name)
    ids = await _publish(broker, queue_name, 3)
    provider = broker.provider(queue_name)
    seen: list[str] = []
    with anyio.fail_after(10):
        async for message in provider.messages():
            seen.append(message.message_id or "")
            await provider.ack(message)
            if len(seen) == 3:
                await provider.stop_consuming()
    assert seen == ids
    await provider.close()


async def test_bodies_of_any_size_arrive_byte_for_byte(broker: Broker, queue_name: str) -> None:
    # 300 kB spans three AMQP body frames (frame_max 128 kB); an empty body has none.
    bodies = [b"", b"x", bytes(range(256)) * 1200, b"tail"]
    await broker.declare_queue(queue_name)
    publisher = broker.publisher()
    for index, body in enumerate(bodies):
        await publisher.publish(Message(body, message_id=f"b{index}"), queue_name)
    await publisher.close()
    provider = broker.provider(queue_name, prefetch=10)
    await provider.start()
    taken = await _take(provider, len(bodies))
    assert [m.message_id for m in taken] == [f"b{i}" for i in range(len(bodies))]
    assert [m.body for m in taken] == bodies
    for message in taken:
        await provider.ack(message)
    await provider.close()
    assert await _ready_count(broker, queue_name, 0) == 0
