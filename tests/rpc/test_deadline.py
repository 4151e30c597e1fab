"""When a request's caller stops waiting, as the reply layer reads it from the request."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from swarrow import Message
from swarrow.rpc.deadline import DEADLINE_HEADER, request_deadline
from swarrow.topology import RETRY_ATTEMPT_HEADER, republish_copy


def test_the_header_is_milliseconds_since_the_epoch() -> None:
    assert request_deadline(Message(b"", headers={DEADLINE_HEADER: 1_700_000_000_500})) == 1_700_000_000.5


@pytest.mark.parametrize("value", ["1700000000000", True, None, [1], {"a": 1}])
def test_a_header_that_is_not_a_number_is_no_deadline(value: object) -> None:
    assert request_deadline(Message(b"", headers={DEADLINE_HEADER: value})) is None


def test_expiration_without_a_timestamp_is_no_deadline() -> None:
    assert request_deadline(Message(b"", expiration="500")) is None


def test_a_timestamp_to_the_second_never_expires_a_request_early() -> None:
    # Published at 12:00:00.900 with a 500 ms expiration: AMQP carries the timestamp truncated to
    # 12:00:00, so timestamp + expiration (12:00:00.500) is before the publish itself.
    sent = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    deadline = request_deadline(Message(b"", timestamp=sent, expiration="500"))
    assert deadline is not None
    assert deadline >= sent.timestamp() + 0.9 + 0.5


def test_a_bad_expiration_is_no_deadline() -> None:
    sent = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert request_deadline(Message(b"", timestamp=sent, expiration="soon")) is None


def test_a_retry_copy_keeps_its_callers_deadline_through_the_original_expiration() -> None:
    # Retry copies drop `expiration` (issue 12, item 1) and keep it in a header; before this, a retried
    # request from a client that sets only timestamp + expiration had no deadline: its retry ran after
    # the caller had stopped waiting.
    sent = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    original = Message(b"", timestamp=sent, expiration="500", queue="rpc", delivery_tag=1)
    copy = republish_copy(original, {RETRY_ATTEMPT_HEADER: 1})
    assert copy.expiration is None
    assert request_deadline(copy) == request_deadline(original) == sent.timestamp() + 1.5
