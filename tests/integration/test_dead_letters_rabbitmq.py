"""swarrow.dead_letters against a real RabbitMQ: nothing taken that was only looked at, order and bytes kept.

The witness reads queues with plain aio-pika `basic.get`, not with the code under test.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import aio_pika
import anyio
import pytest

import swarrow.dead_letters as dl
from swarrow import ConfigurationError, Message
from swarrow.amqp import AmqpBroker
from swarrow.broker import QueueInfo
from swarrow.topology import dead_letter_headers

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def drain(url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message of `queue`, taken for good, head first."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=False)
        found = []
        while (message := await q.get(no_ack=True, fail=False)) is not None:
            found.append(message)
        return found
    finally:
        await connection.close()


async def ids(url: str, queue: str) -> list[str | None]:
    return [m.message_id for m in await drain(url, queue)]


def letter(i: int, error: str = "ValueError", queue: str = "", body: bytes | None = None) -> Message:
    headers = dead_letter_headers(error, f"failed {i}", attempts=4, queue=queue)
    return Message(
        body if body is not None else b"%d" % i, headers=headers, message_id=f"m{i}", delivery_mode=2
    )


async def fill(broker: AmqpBroker, queue: str, messages: Sequence[Message]) -> None:
    publisher = broker.publisher()
    for message in messages:
        await publisher.publish(message, queue)
    await publisher.close()


@pytest.fixture(params=["classic", "quorum"])
async def topology(request: pytest.FixtureRequest, amqp_broker: AmqpBroker, queue_name: str) -> str:
    """`queue_name` and `queue_name.dead`, classic or quorum."""
    arguments = {"x-queue-type": "quorum"} if request.param == "quorum" else None
    await amqp_broker.declare_queue(queue_name, arguments=arguments)
    await amqp_broker.declare_queue(f"{queue_name}.dead", arguments=arguments)
    return queue_name


async def test_list_counts_groups_and_leaves_every_letter_in_order(
    amqp_broker: AmqpBroker, amqp_url: str, topology: str
) -> None:
    dead = f"{topology}.dead"
    await fill(amqp_broker, dead, [letter(i, "A" if i % 3 else "B", topology) for i in range(60)])
    summary = await dl.list_dead_letters(amqp_broker, dead)
    assert summary.total == 60
    assert [(g.key, g.count) for g in summary.groups] == [("A", 40), ("B", 20)]
    again = await dl.list_dead_letters(amqp_broker, dead)  # the first pass left them all
    assert again.total == 60
    assert await ids(amqp_url, dead) == [f"m{i}" for i in range(60)]


async def test_replay_publishes_selected_then_acks_and_keeps_the_rest_in_order(
    amqp_broker: AmqpBroker, amqp_url: str, topology: str
) -> None:
    dead = f"{topology}.dead"
    await fill(amqp_broker, dead, [letter(i, "A" if i % 2 else "B", topology) for i in range(40)])
    result = await dl.replay_dead_letters(
        amqp_broker, dead, selection=dl.Selection(error_types=["A"]), batch_size=7
    )
    assert (result.replayed, result.kept, result.failed) == (20, 20, 0)
    replayed = await drain(amqp_url, topology)
    assert [m.message_id for m in replayed] == [f"m{i}" for i in range(1, 40, 2)]
    headers = replayed[0].headers
    assert headers[dl.REPLAY_COUNT_HEADER] == 1 and dl.REPLAYED_AT_HEADER in headers
    assert not any(k.startswith("x-swarrow-error") or k == "x-death" for k in headers)
    assert replayed[0].delivery_mode == 2
    assert await ids(amqp_url, dead) == [f"m{i}" for i in range(0, 40, 2)]


async def test_non_utf8_and_10_mb_bodies_go_through_byte_for_byte(
    amqp_broker: AmqpBroker, amqp_url: str, queue_name: str
) -> None:
    await amqp_broker.declare_queue(queue_name)
    await amqp_broker.declare_queue(f"{queue_name}.dead")
    big = os.urandom(10 * 2**20)
    odd = bytes(range(256)) * 3 + b"\xff\xfe\x00"
    await fill(
        amqp_broker,
        f"{queue_name}.dead",
        [letter(1, queue=queue_name, body=big), letter(2, queue=queue_name, body=odd)],
    )
    shown = await dl.show_dead_letters(amqp_broker, f"{queue_name}.dead")
    assert [x.message.body for x in shown] == [big, odd]
    result = await dl.replay_dead_letters(amqp_broker, f"{queue_name}.dead")
    assert result.replayed == 2
    assert [m.body for m in await drain(amqp_url, queue_name)] == [big, odd]


async def test_broker_dead_letters_are_listed_by_reason_and_replayed_to_their_queue(
    amqp_broker: AmqpBroker, amqp_url: str, queue_name: str
) -> None:
    dead = f"{queue_name}.dead"
    await amqp_broker.declare_queue(dead)
    await amqp_broker.declare_queue(
        queue_name, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    )
    await fill(amqp_broker, queue_name, [Message(b"plain %d" % i, message_id=f"p{i}") for i in range(3)])
    provider = amqp_broker.provider(queue_name, prefetch=10)
    await provider.start()
    for _ in range(3):
        message = await provider.receive()
        assert message is not None
        await provider.reject(message, requeue=False)  # the queue's own DLX takes it to `dead`
    await provider.close()
    summary = await dl.list_dead_letters(amqp_broker, dead)
    assert [(g.key, g.count) for g in summary.groups] == [("x-death:rejected", 3)]
    assert summary.groups[0].first_failed_at is not None
    result = await dl.replay_dead_letters(
        amqp_broker, dead, selection=dl.Selection(error_types=["x-death:rejected"])
    )
    assert (result.replayed, result.targets) == (3, {queue_name: 3})
    back = await drain(amqp_url, queue_name)
    assert [m.body for m in back] == [b"plain 0", b"plain 1", b"plain 2"]
    assert all("x-death" not in m.headers for m in back)


async def test_replay_into_a_missing_queue_fails_and_keeps_the_letter(
    amqp_broker: AmqpBroker, amqp_url: str, queue_name: str
) -> None:
    dead = f"{queue_name}.dead"
    await amqp_broker.declare_queue(dead)
    await fill(amqp_broker, dead, [letter(1, queue=f"{queue_name}.missing"), letter(2, queue="")])
    result = await dl.replay_dead_letters(amqp_broker, dead)
    assert (result.replayed, result.failed) == (0, 2)
    assert await ids(amqp_url, dead) == ["m1", "m2"]


async def test_an_original_queue_name_the_client_cannot_check_fails_that_letter_only(
    amqp_broker: AmqpBroker, amqp_url: str, queue_name: str
) -> None:
    # pamqp refuses queue names outside [a-zA-Z0-9-_.:@#,/+ ] in a declare (RabbitMQ allows any
    # UTF-8): one such header (another client's queue, or a producer's garbage) aborted the whole
    # replay with `ValueError: Invalid value for queue`.
    dead = f"{queue_name}.dead"
    await amqp_broker.declare_queue(queue_name)
    await amqp_broker.declare_queue(dead)
    await fill(amqp_broker, dead, [letter(1, queue=queue_name), letter(2, queue="jobs!\x1b[31m"),
                                   letter(3, queue="émails"), letter(4, queue=queue_name)])  # fmt: skip
    result = await dl.replay_dead_letters(amqp_broker, dead)
    assert (result.replayed, result.kept, result.failed) == (2, 0, 2)
    assert any("not a queue name" in reason for reason in result.failures)
    assert await ids(amqp_url, queue_name) == ["m1", "m4"]
    assert await ids(amqp_url, dead) == ["m2", "m3"]
    with pytest.raises(ConfigurationError, match="not a queue name"):
        await dl.replay_dead_letters(amqp_broker, dead, to="jobs!")
    with pytest.raises(ConfigurationError, match="not a queue name"):
        await dl.list_dead_letters(amqp_broker, "dead!")


async def test_a_replay_to_another_connections_exclusive_queue_goes_through(
    amqp_broker: AmqpBroker, amqp_url: str, queue_name: str
) -> None:
    # Its passive declare is refused (RESOURCE_LOCKED): that crashed the replay (exit 1).
    dead = f"{queue_name}.dead"
    await amqp_broker.declare_queue(dead)
    await fill(amqp_broker, dead, [letter(1, queue=queue_name), letter(2, queue=queue_name)])
    owner = await aio_pika.connect(amqp_url)
    try:
        channel = await owner.channel()
        reply = await channel.declare_queue(queue_name, exclusive=True)
        result = await dl.replay_dead_letters(amqp_broker, dead)
        assert (result.replayed, result.failed) == (2, 0)
        assert [(await reply.get(no_ack=True)).message_id for _ in range(2)] == ["m1", "m2"]
    finally:
        await owner.close()
    assert await ids(amqp_url, dead) == []


async def test_purge_with_a_filter_only_takes_the_selected(
    amqp_broker: AmqpBroker, amqp_url: str, topology: str
) -> None:
    dead = f"{topology}.dead"
    await fill(amqp_broker, dead, [letter(i, "A" if i % 2 else "B", topology) for i in range(10)])
    result = await dl.purge_dead_letters(amqp_broker, dead, selection=dl.Selection(error_types=["B"]))
    assert (result.purged, result.kept) == (5, 5)
    assert await ids(amqp_url, dead) == [f"m{i}" for i in range(1, 10, 2)]


async def test_a_missing_dead_letter_queue_is_a_configuration_error(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        await dl.list_dead_letters(amqp_broker, f"{queue_name}.dead")


async def test_the_scan_uses_its_inline_delivery_and_batch_publisher(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    # Both take over aiormq internals; without them memory would grow or replay slow down, silently.
    from swarrow.scan import open_scan

    await amqp_broker.declare_queue(f"{queue_name}.dead")
    async with open_scan(amqp_broker, f"{queue_name}.dead") as scan:
        assert getattr(scan, "inline_delivery", False) is True
        assert getattr(scan, "_batch", None) is not None


async def test_a_quorum_delivery_limit_dead_letter_is_listed_and_replayed(
    amqp_broker: AmqpBroker, amqp_url: str, queue_name: str
) -> None:
    dead = f"{queue_name}.dead"
    await amqp_broker.declare_queue(dead)
    limit = {"x-queue-type": "quorum", "x-delivery-limit": 1}
    await amqp_broker.declare_queue(
        queue_name, arguments={**limit, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    )
    await fill(amqp_broker, queue_name, [Message(b"poison", message_id="p1")])
    provider = amqp_broker.provider(queue_name, prefetch=1)
    await provider.start()
    with anyio.fail_after(30):
        while (await amqp_broker.inspect_queue(dead) or QueueInfo(dead, False, 0)).message_count == 0:
            message = None
            with anyio.move_on_after(0.2):  # once dead-lettered, nothing more comes: look at `dead` again
                message = await provider.receive()
            if message is not None:
                await provider.reject(message, requeue=True)  # past the limit the broker dead-letters it
    await provider.close()
    summary = await dl.list_dead_letters(amqp_broker, dead)
    assert [(g.key, g.count) for g in summary.groups] == [("x-death:delivery_limit", 1)]
    result = await dl.replay_dead_letters(amqp_broker, dead)
    assert (result.replayed, result.targets) == (1, {queue_name: 1})
    back = await drain(amqp_url, queue_name)
    assert [m.body for m in back] == [b"poison"] and "x-death" not in back[0].headers


async def test_a_dead_letter_queue_held_by_a_single_active_consumer_is_an_error_not_a_hang(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    from swarrow.amqp.scan import AmqpQueueScan

    dead = f"{queue_name}.dead"
    await amqp_broker.declare_queue(dead, arguments={"x-single-active-consumer": True})
    await fill(amqp_broker, dead, [letter(i) for i in range(3)])
    holder = amqp_broker.provider(dead, prefetch=1)  # the active consumer: it holds one, two stay ready
    await holder.start()
    try:
        scan = AmqpQueueScan(amqp_broker.node_url, dead, idle_check=0.1, stall_timeout=0.5)

        async def read_all() -> None:
            async with scan:
                async for _ in scan.messages():
                    pass

        with anyio.fail_after(20), pytest.raises(ConfigurationError, match="single active consumer"):
            await read_all()
    finally:
        await holder.close()
