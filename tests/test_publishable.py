"""Publish-time checks: every value AMQP cannot carry is one InvalidMessageError naming the field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from swarrow import InvalidMessageError, MemoryBroker, Message, PublishError
from swarrow.publishable import HEADERS_MAX_BYTES, as_delivered, check_publishable


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"headers": {"h": b"x"}}, "headers['h'] is a bytes"),
        ({"headers": {"h": (1,)}}, "headers['h'] is a tuple"),
        ({"headers": {"h": {1}}}, "headers['h'] is a set"),
        ({"headers": {"h": uuid.UUID(int=1)}}, "headers['h'] is a UUID"),
        ({"headers": {"h": 2**63}}, "signed 64-bit"),
        ({"headers": {"h": -(2**63) - 1}}, "signed 64-bit"),
        ({"headers": {"a": {"b": [0, object()]}}}, "headers['a']['b'][1] is a object"),
        ({"headers": {"é" * 65: 1}}, "130 bytes"),
        ({"headers": {1: 1}}, "keys must be str"),
        ({"headers": {"h": "x" * HEADERS_MAX_BYTES}}, "over the 128000-byte limit"),
        ({"message_id": "m" * 256}, "message_id is 256 bytes"),
        ({"correlation_id": 5}, "correlation_id must be a str"),
        ({"priority": 256}, "priority must be an integer from 0 to 255"),
        ({"priority": True}, "priority"),
        ({"delivery_mode": 0}, "delivery_mode must be an integer from 1 to 2"),
        ({"expiration": "abc"}, "expiration"),
        ({"expiration": "-1"}, "expiration"),
        ({"expiration": "1.5"}, "expiration"),
        ({"expiration": " 200"}, "expiration"),
        ({"expiration": ""}, "expiration"),
        ({"expiration": "١٢"}, "expiration"),
        ({"timestamp": 1700000000}, "timestamp must be a datetime"),
        ({"body": "text"}, "body must be bytes"),
    ],
)
def test_names_the_field_amqp_cannot_carry(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        check_publishable(Message(**fields))
    assert named in str(caught.value)
    assert isinstance(caught.value, PublishError) and isinstance(caught.value, ValueError)


def test_accepts_every_value_that_round_trips() -> None:
    headers = {
        "s": "é", "i": -(2**63), "f": 1.5, "d": Decimal("1.25"), "b": False, "n": None,
        "l": [1, [2], {"k": datetime(2024, 1, 1)}], "t": {"x": {"y": 1}}, "k" * 128: 1,
    }  # fmt: skip
    check_publishable(
        Message(b"x", headers=headers, priority=0, delivery_mode=2, expiration="+5", message_id="m" * 255)
    )


def test_user_id_must_be_the_connection_user_when_one_is_given() -> None:
    check_publishable(Message(user_id="guest"), user="guest")
    with pytest.raises(InvalidMessageError, match="user_id 'Guest' is not the connection's user 'guest'"):
        check_publishable(Message(user_id="Guest"), user="guest")


def test_as_delivered_gives_datetimes_as_rabbitmq_returns_them() -> None:
    message = Message(
        headers={"at": [datetime(2024, 1, 2, 3, 4, 5, 999)], "plain": 1},
        timestamp=datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-1))),
    )
    delivered = as_delivered(message)
    assert delivered.headers == {"at": [datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)], "plain": 1}
    assert delivered.timestamp == datetime(2024, 1, 2, 4, 4, 5, tzinfo=UTC)
    plain = Message(headers={"a": 1})
    assert as_delivered(plain) is plain


def test_the_memory_broker_refuses_before_routing_anything() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    with pytest.raises(InvalidMessageError, match="expiration"):
        broker.publish_nowait(Message(b"x", expiration="soon"), "q")
    assert broker.message_count("q") == 0 and broker.published_count == 0


def test_the_amqp_broker_checks_user_id_against_the_url_user_unless_a_certificate_names_it() -> None:
    from swarrow.amqp import AmqpBroker

    assert AmqpBroker("amqp://worker%40eu:secret@127.0.0.1/").username == "worker@eu"
    assert AmqpBroker("amqp://127.0.0.1/").username == "guest"
    assert AmqpBroker("amqps://127.0.0.1/?auth=EXTERNAL").username is None
