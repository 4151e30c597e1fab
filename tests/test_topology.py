from __future__ import annotations

import anyio
import pytest

from swarrow import ConfigurationError, MemoryBroker, Message
from swarrow.topology import (
    ERROR_MESSAGE_HEADER,
    ORIGINAL_EXPIRATION_HEADER,
    RetryTopology,
    dead_letter_headers,
    dead_letter_queue_name,
    exponential_delays,
    header_count,
    qualified_name,
    republish_copy,
    retry_queue_name,
)

pytestmark = pytest.mark.anyio


def test_queue_names() -> None:
    assert retry_queue_name("orders", 2) == "orders.retry.2"
    assert dead_letter_queue_name("orders") == "orders.dead"


def test_exponential_delays_double_and_cap() -> None:
    assert exponential_delays(4) == (1.0, 2.0, 4.0, 8.0)
    assert exponential_delays(12)[-1] == 960.0
    assert exponential_delays(3, initial=0.5, factor=3) == (0.5, 1.5, 4.5)
    with pytest.raises(ValueError):
        exponential_delays(0)
    with pytest.raises(ValueError):
        exponential_delays(2, factor=0.5)


def test_queue_arguments_classic_and_quorum() -> None:
    classic = dict(RetryTopology("q", (0.2, 1.5)).queues())
    assert list(classic) == ["q", "q.retry.1", "q.retry.2", "q.dead"]
    assert classic["q"] == {} and classic["q.dead"] == {}
    assert classic["q.retry.2"] == {
        "x-message-ttl": 1500,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "q",
    }
    quorum = dict(RetryTopology("q", (0.2,), quorum=True).queues())
    assert all(args["x-queue-type"] == "quorum" for args in quorum.values())


def test_at_least_once_dead_lettering_confirms_every_move_back_to_the_queue() -> None:
    topology = RetryTopology("q", (0.2, 1.5), quorum=True, dead_letter_strategy="at-least-once")
    queues = dict(topology.queues())
    for name in ("q.retry.1", "q.retry.2"):
        assert queues[name]["x-dead-letter-strategy"] == "at-least-once"
        assert queues[name]["x-overflow"] == "reject-publish"  # RabbitMQ ignores the strategy without it
        assert queues[name]["x-queue-type"] == "quorum"
    assert queues["q"] == {"x-queue-type": "quorum"}  # Q dead-letters nowhere without a delivery limit
    assert queues["q.dead"] == {"x-queue-type": "quorum"}
    assert "dead_letter_strategy='at-least-once'" in repr(topology)


def test_a_broker_delivery_limit_dead_letters_into_the_dead_queue() -> None:
    queues = dict(RetryTopology("q", (1,), quorum=True, delivery_limit=10).queues())
    assert queues["q"] == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 10,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "q.dead",
    }
    confirmed = dict(
        RetryTopology(
            "q", (1,), quorum=True, delivery_limit=10, dead_letter_strategy="at-least-once"
        ).queues()
    )
    assert confirmed["q"]["x-dead-letter-strategy"] == "at-least-once"
    assert confirmed["q"]["x-overflow"] == "reject-publish"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"dead_letter_strategy": "at-least-once"}, "needs quorum queues"),
        ({"delivery_limit": 5}, "delivery_limit needs quorum queues"),
        ({"quorum": True, "dead_letter_strategy": "exactly-once"}, "'exactly-once'"),
        ({"quorum": True, "delivery_limit": 0}, "delivery_limit"),
        ({"quorum": True, "delivery_limit": True}, "delivery_limit"),
    ],
)
def test_quorum_options_are_checked(options: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RetryTopology("q", (1,), **options)  # type: ignore[arg-type]


async def test_declare_is_idempotent_and_refuses_other_delays() -> None:
    broker = MemoryBroker()
    first = await RetryTopology("q", (0.1, 0.2)).declare(broker)
    assert [info.created for info in first] == [True, True, True, True]
    again = await RetryTopology("q", (0.1, 0.2)).declare(broker)
    assert [info.created for info in again] == [False, False, False, False]
    with pytest.raises(ConfigurationError):
        await RetryTopology("q", (0.1, 0.3)).declare(broker)


async def test_a_retry_queue_delivers_back_after_its_ttl() -> None:
    broker = MemoryBroker()
    await RetryTopology("q", (0.01,)).declare(broker)
    broker.publish_nowait(Message(b"later"), "q.retry.1")
    provider = broker.provider("q")
    await provider.start()
    with anyio.fail_after(1):
        message = await provider.receive()
    assert message is not None and message.body == b"later"


@pytest.mark.parametrize("delays", [(), (0,), (-1,), (0.0001,)])
def test_rejects_bad_delays(delays: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        RetryTopology("q", delays)


def test_header_count_and_names() -> None:
    assert header_count(3) == 3
    assert [header_count(v) for v in ("3", -1, True, 2.0, 10**9)] == [None] * 5
    assert qualified_name(ValueError) == "ValueError"
    assert qualified_name(ConfigurationError("x")) == "swarrow.errors.ConfigurationError"
    headers = dead_letter_headers("T", "m" * 2000, attempts=4, queue="q")
    assert len(headers["x-swarrow-error-message"]) == 1000
    assert headers["x-swarrow-attempts"] == 4 and headers["x-swarrow-original-queue"] == "q"


def test_republish_copy_drops_the_producers_ttl_and_user_id() -> None:
    delivered = Message(
        b"x",
        headers={"a": 1, "x-delivery-count": 3},
        expiration="3000",
        user_id="producer",
        message_id="m",
        delivery_tag=4,
        queue="q",
    )
    copy = republish_copy(delivered, {"b": 2})
    assert copy.expiration is None and copy.user_id is None
    assert copy.headers == {"a": 1, "b": 2, ORIGINAL_EXPIRATION_HEADER: "3000"}
    assert (copy.message_id, copy.delivery_tag, copy.queue) == ("m", None, "")
    # A copy of a copy keeps the first original's TTL in the header.
    again = republish_copy(copy.replace(queue="q"), {})
    assert again.headers[ORIGINAL_EXPIRATION_HEADER] == "3000" and again.expiration is None
    assert republish_copy(Message(b""), {}).headers == {}


def test_a_dead_letters_error_message_is_masked_as_a_log_line_is() -> None:
    # The letter sits on the broker and `swarrow dead show` prints it (attack 3, session 9: the log
    # line was masked, the letter carried the password).
    headers = dead_letter_headers(
        "app.DbError", "cannot reach postgresql://app:DBSECRET99@db/prod?api_key=K3Y", attempts=3, queue="q"
    )
    text = headers[ERROR_MESSAGE_HEADER]
    assert "DBSECRET99" not in text and "K3Y" not in text and text.startswith("cannot reach postgresql://app:")
