from __future__ import annotations

import contextlib
from typing import Any

import pytest

from processors._republish import RepublishFailed
from processors.ack import AckProcessor
from processors.delivery_limit import DeliveryLimitProcessor, count_deliveries
from swarrow import MemoryBroker, Message
from swarrow.outcome import get_outcome, reset_outcome

pytestmark = pytest.mark.anyio

Q = "jobs"


def _death(queue: str, count: Any, reason: str = "rejected") -> dict[str, Any]:
    return {"queue": queue, "count": count, "reason": reason}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, 1),
        ({"redelivered": True}, 2),
        ({"headers": {"x-delivery-count": 4}}, 5),
        ({"headers": {"x-swarrow-attempt": 3}}, 4),
        ({"headers": {"x-death": [_death(Q, 2), _death(Q, 3, "expired"), _death("other", 50)]}}, 6),
        ({"headers": {"x-death": [_death(f"{Q}.retry.1", 9)]}}, 1),
        ({"headers": {"x-delivery-count": "9", "x-swarrow-attempt": -2, "x-death": "junk"}}, 1),
        ({"headers": {"x-delivery-count": 10**12, "x-death": [_death(Q, None), 7, _death(Q, True)]}}, 1),
        ({"redelivered": True, "headers": {"x-delivery-count": 1, "x-swarrow-attempt": 2}}, 3),
    ],
)
def test_counts_deliveries_from_every_clue(fields: dict[str, Any], expected: int) -> None:
    assert count_deliveries(Message(queue=Q, **fields)) == expected


async def test_under_the_limit_calls_the_inner_layer(memory_broker: MemoryBroker) -> None:
    memory_broker.declare_queue_nowait(f"{Q}.dead")
    seen: list[Message] = []

    async def callback(message: Message) -> bool:
        seen.append(message)
        return False

    guard = DeliveryLimitProcessor(callback, publisher=memory_broker.publisher(), max_deliveries=3)
    assert await guard(Message(queue=Q, headers={"x-delivery-count": 2})) is False
    assert len(seen) == 1 and memory_broker.message_count(f"{Q}.dead") == 0


async def test_past_the_limit_dead_letters_without_calling_inner(memory_broker: MemoryBroker) -> None:
    memory_broker.declare_queue_nowait(f"{Q}.dead")

    async def callback(message: Message) -> bool:
        raise AssertionError("a poison message must not reach the callback")

    guard = DeliveryLimitProcessor(callback, publisher=memory_broker.publisher(), max_deliveries=3)
    reset_outcome()
    assert await guard(Message(b"poison", queue=Q, headers={"x-delivery-count": 3})) is True
    assert get_outcome() == "dead_lettered"
    dead = memory_broker.get_nowait(f"{Q}.dead")
    assert dead is not None and dead.body == b"poison"
    assert dead.headers["x-swarrow-error-type"] == "swarrow.DeliveryLimitExceeded"
    assert "delivered 4 times" in dead.headers["x-swarrow-error-message"]
    assert "x-delivery-count=3" in dead.headers["x-swarrow-error-message"]
    assert dead.headers["x-swarrow-original-queue"] == Q
    assert "x-delivery-count" not in dead.headers


async def test_quorum_requeue_loop_ends_in_dead_letter_queue(memory_broker: MemoryBroker) -> None:
    memory_broker.declare_queue_nowait(Q, arguments={"x-queue-type": "quorum"})
    memory_broker.declare_queue_nowait(f"{Q}.dead")
    memory_broker.publish_nowait(Message(b"poison"), Q)
    provider = memory_broker.provider(Q)
    await provider.start()
    calls = 0

    async def callback(message: Message) -> bool:
        nonlocal calls
        calls += 1
        raise RuntimeError("crash")

    stack = AckProcessor(
        DeliveryLimitProcessor(callback, publisher=memory_broker.publisher(), max_deliveries=3),
        provider=provider,
        requeue_on_error=True,
    )
    for _ in range(4):
        message = provider.receive_nowait()
        assert message is not None
        with contextlib.suppress(RuntimeError):
            await stack(message)
    assert calls == 3
    assert provider.receive_nowait() is None
    assert memory_broker.message_count(f"{Q}.dead") == 1
    assert provider.unsettled_count == 0


async def test_a_failed_dead_letter_publish_requeues_once_the_hold_is_over(
    memory_broker: MemoryBroker,
) -> None:
    async def callback(message: Message) -> bool:
        return True

    guard = DeliveryLimitProcessor(
        callback, publisher=memory_broker.publisher(), max_deliveries=1, republish_hold=0
    )
    with pytest.raises(RepublishFailed):  # no Q.dead: the mandatory publish is unroutable
        await guard(Message(queue=Q, redelivered=True))


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_rejects_bad_limits(limit: Any, memory_broker: MemoryBroker) -> None:
    with pytest.raises(ValueError, match="max_deliveries"):
        DeliveryLimitProcessor(_never, publisher=memory_broker.publisher(), max_deliveries=limit)


async def _never(message: Message) -> bool:
    raise AssertionError("not called")
