"""AmqpBroker.declare_queue's 406: a new queue names the refused argument, an existing one the conflict."""

from __future__ import annotations

import pytest

from swarrow.amqp.connection import _declare_error

REPLIES = [
    ("PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q': {unacceptable_type,longstr}",
     "x-message-ttl"),
    ("PRECONDITION_FAILED - invalid property 'non-durable' for queue 'q' in vhost '/'", "non-durable"),
    ("PRECONDITION_FAILED - invalid type 'byte' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'",
     "x-dead-letter-exchange"),
]  # fmt: skip


@pytest.mark.parametrize(("reply", "argument"), REPLIES)
def test_a_new_queue_names_the_argument_rabbitmq_refused(reply: str, argument: str) -> None:
    error = _declare_error("q", True, {"a": 1}, False, Exception(reply))
    assert f"RabbitMQ refused argument {argument!r} of queue 'q'" in str(error)
    assert "already exists" not in str(error)


def test_an_existing_queue_with_other_arguments_says_so_and_names_the_argument() -> None:
    reply = "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/'"
    error = str(_declare_error("q", True, {"x-message-ttl": 5}, True, Exception(reply)))
    assert error.startswith("queue 'q' already exists with different arguments") and "x-message-ttl" in error
