"""In-memory broker specifics beyond the shared contract: quorum counting, limits, exchanges, TTLs."""

from __future__ import annotations

import anyio
import pytest

from swarrow import ConfigurationError, MemoryBroker, Message, PublishError, open_broker

pytestmark = pytest.mark.anyio


async def test_quorum_queue_counts_deliveries_and_dead_letters_past_the_limit() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q.dead")
    broker.declare_queue_nowait(
        "q",
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "q.dead",
        },
    )
    broker.publish_nowait(Message(b"poison", message_id="p"), "q")
    provider = broker.provider("q")
    await provider.start()
    counts = []
    for _ in range(3):
        message = provider.receive_nowait()
        assert message is not None
        counts.append(message.headers.get("x-delivery-count", 0))
        await provider.reject(message, requeue=True)
    assert counts == [0, 1, 2]
    assert provider.receive_nowait() is None
    dead = broker.get_nowait("q.dead")
    assert dead is not None
    assert dead.headers["x-death"][0]["reason"] == "delivery_limit"


async def test_per_message_expiration_dead_letters() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("target")
    broker.declare_queue_nowait(
        "wait", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "target"}
    )
    broker.publish_nowait(Message(b"x", expiration="50"), "wait")
    provider = broker.provider("target")
    await provider.start()
    with anyio.fail_after(5):
        message = await provider.receive()
    assert message is not None
    assert message.headers["x-death"][0]["reason"] == "expired"
    assert message.expiration is None


async def test_repeated_dead_lettering_counts_in_one_x_death_entry() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait(
        "q", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "q"}
    )
    broker.publish_nowait(Message(b"x"), "q")
    provider = broker.provider("q")
    await provider.start()
    for expected in (1, 2, 3):
        message = provider.receive_nowait()
        assert message is not None
        if expected > 1:
            assert message.headers["x-death"][0]["count"] == expected - 1
        await provider.reject(message)
    await provider.close()
    assert broker.message_count("q") == 1


async def test_direct_and_fanout_exchanges_route_to_bound_queues() -> None:
    broker = MemoryBroker()
    for name in ("a", "b"):
        broker.declare_queue_nowait(name)
    broker.declare_exchange_nowait("events", "fanout")
    broker.declare_exchange_nowait("orders", "direct")
    broker.bind_queue_nowait("a", "events")
    broker.bind_queue_nowait("b", "events")
    broker.bind_queue_nowait("a", "orders", "created")
    assert broker.publish_nowait(Message(b"1"), "", "events") == 2
    assert broker.publish_nowait(Message(b"2"), "created", "orders") == 1
    assert broker.publish_nowait(Message(b"3"), "deleted", "orders") == 0
    with pytest.raises(PublishError, match="unroutable"):
        broker.publish_nowait(Message(b"4"), "deleted", "orders", mandatory=True)
    with pytest.raises(PublishError, match="does not exist"):
        broker.publish_nowait(Message(b"5"), "x", "missing-exchange")
    assert (broker.message_count("a"), broker.message_count("b")) == (2, 1)
    with pytest.raises(ConfigurationError):
        broker.declare_exchange_nowait("events", "direct")


async def test_simulated_nack_fails_the_next_publish_only() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    publisher = broker.publisher()
    broker.fail_next_publishes(1)
    with pytest.raises(PublishError, match="nacked"):
        await publisher.publish(Message(b"x"), "q")
    await publisher.publish(Message(b"y"), "q")
    assert broker.message_count("q") == 1


async def test_deleted_queue_drops_settlements_and_consumer_resumes_when_it_returns() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    broker.publish_nowait(Message(b"old"), "q")
    provider = broker.provider("q")
    await provider.start()
    old = provider.receive_nowait()
    assert old is not None
    await broker.delete_queue("q")
    assert not provider.is_consuming
    broker.declare_queue_nowait("q")
    broker.publish_nowait(Message(b"new"), "q")
    assert provider.is_consuming
    with anyio.fail_after(2):
        new = await provider.receive()
    assert new is not None and new.body == b"new"
    await provider.ack(new)
    await provider.close()


def test_memory_urls_name_process_wide_brokers() -> None:
    first = open_broker("memory://shared")
    assert first is open_broker("memory://shared")
    assert first is not open_broker("memory://other")
    assert open_broker("memory://").url == "memory://default"
    with pytest.raises(ConfigurationError, match=r"unsupported scheme .redis."):
        open_broker("redis://localhost")


async def test_settlement_log_stays_bounded_while_counts_keep_going() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    provider = broker.provider("q", prefetch=1)
    await provider.start()
    total = 12_000
    for _ in range(total):
        broker.publish_nowait(Message(b"x"), "q")
        message = provider.receive_nowait()
        assert message is not None
        await provider.ack(message)
    assert provider.acked_count == total
    assert len(provider.acked) <= 10_000
    assert provider.acked[-1] == total


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"x-max-priority": 10}, "x-max-priority"),
        ({"x-max-length-bytes": 1}, "x-max-length-bytes"),
        ({"x-single-active-consumer": True}, "x-single-active-consumer"),
        ({"x-queue-type": "stream"}, "x-queue-type"),
        ({"x-message-ttl": "1000"}, "x-message-ttl"),
        ({"x-delivery-limit": 2}, "x-delivery-limit"),
        ({"x-dead-letter-routing-key": "k"}, "x-dead-letter-routing-key"),
    ],
)
def test_refuses_what_rabbitmq_refuses_or_memory_does_not_model_naming_it(
    arguments: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        MemoryBroker().declare_queue_nowait("q", arguments=arguments)


def test_unknown_arguments_are_ignored_on_re_declare_but_types_are_compared() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q", arguments={"x-message-ttl": 1000, "x-app": 1})
    broker.declare_queue_nowait("q", arguments={"x-message-ttl": 1000, "x-app": 2})
    with pytest.raises(ConfigurationError, match="x-message-ttl"):
        broker.declare_queue_nowait("q", arguments={"x-message-ttl": 1000.0})


def test_the_prefetch_window_is_pushed_and_counts_as_delivered() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    for n in range(5):
        broker.publish_nowait(Message(str(n).encode()), "q")
    provider = broker.provider("q", prefetch=3)
    anyio.run(provider.start)
    assert broker.message_count("q") == 2 and provider.unsettled_count == 3
    anyio.run(provider.close)
    again = broker.provider("q")
    anyio.run(again.start)
    got = [again.receive_nowait() for _ in range(5)]
    assert [(m.body, m.redelivered) for m in got if m is not None] == [
        (b"0", True), (b"1", True), (b"2", True), (b"3", False), (b"4", False)
    ]  # fmt: skip


async def test_overflow_reject_publish_raises_and_drop_head_dead_letters_maxlen() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    broker.publish_nowait(Message(b"1"), "full")
    with pytest.raises(PublishError, match="full"):
        broker.publish_nowait(Message(b"2"), "full")
    broker.declare_queue_nowait("dead")
    broker.declare_queue_nowait(
        "short",
        arguments={"x-max-length": 1, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"},
    )
    broker.publish_nowait(Message(b"old"), "short")
    broker.publish_nowait(Message(b"new"), "short")
    dead = broker.get_nowait("dead")
    assert dead is not None and dead.body == b"old" and dead.headers["x-death"][0]["reason"] == "maxlen"


async def test_an_unused_queue_with_x_expires_is_deleted() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q", arguments={"x-expires": 30})
    with anyio.fail_after(5):
        while "q" in broker.queue_names():
            await anyio.sleep(0.01)
    assert await broker.inspect_queue("q") is None


async def test_a_ttl_cycle_without_a_reject_drops_the_message() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait(
        "loop",
        arguments={"x-message-ttl": 10, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "loop"},
    )
    broker.publish_nowait(Message(b"x"), "loop")
    with anyio.fail_after(5):
        while broker.message_count("loop"):
            await anyio.sleep(0.005)
    await anyio.sleep(0.05)  # it would have come round several times by now
    assert broker.message_count("loop") == 0


def test_amq_exchanges_exist_and_user_id_is_refused() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    assert broker.publish_nowait(Message(b"x"), "q", "amq.topic") == 0
    with pytest.raises(ConfigurationError, match="user_id"):
        broker.publish_nowait(Message(b"x", user_id="guest"), "q")
