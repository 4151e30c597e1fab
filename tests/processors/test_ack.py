from __future__ import annotations

import contextlib

import pytest

from processors._republish import RepublishInterrupted
from processors.ack import AckProcessor
from processors.retry import RepublishFailed
from swarrow import MemoryBroker, MemoryMessageProvider, Message, UndecodableMessage
from swarrow.outcome import get_outcome, record_outcome, reset_outcome

pytestmark = pytest.mark.anyio


class Boom(Exception):
    pass


async def _deliver(broker: MemoryBroker, body: bytes = b"x") -> tuple[MemoryMessageProvider, Message]:
    broker.declare_queue_nowait("q")
    broker.publish_nowait(Message(body), "q")
    provider = broker.provider("q")
    await provider.start()
    message = provider.receive_nowait()
    assert message is not None
    return provider, message


async def _ok(message: Message) -> bool:
    return True


async def _stop(message: Message) -> bool:
    return False


async def _fail(message: Message) -> bool:
    raise Boom("nope")


async def test_acks_when_inner_returns_true(memory_broker: MemoryBroker) -> None:
    provider, message = await _deliver(memory_broker)
    reset_outcome()
    assert await AckProcessor(_ok, provider=provider)(message) is True
    assert provider.acked == [message.delivery_tag]
    assert provider.rejected == []
    assert get_outcome() == "acked"


async def test_acks_when_inner_returns_false_and_passes_false_on(memory_broker: MemoryBroker) -> None:
    provider, message = await _deliver(memory_broker)
    assert await AckProcessor(_stop, provider=provider)(message) is False
    assert provider.acked == [message.delivery_tag]
    assert provider.unsettled_count == 0


async def test_rejects_and_reraises_when_inner_raises(memory_broker: MemoryBroker) -> None:
    provider, message = await _deliver(memory_broker)
    reset_outcome()
    with pytest.raises(Boom):
        await AckProcessor(_fail, provider=provider)(message)
    assert provider.rejected == [(message.delivery_tag, False)]
    assert provider.acked == []
    assert memory_broker.message_count("q") == 0  # no DLX: dropped, as RabbitMQ does
    assert get_outcome() == "rejected"


async def test_requeue_on_error_requeues_and_redelivery_is_flagged(memory_broker: MemoryBroker) -> None:
    provider, message = await _deliver(memory_broker)
    reset_outcome()
    with pytest.raises(Boom):
        await AckProcessor(_fail, provider=provider, requeue_on_error=True)(message)
    assert provider.rejected == [(message.delivery_tag, True)]
    assert get_outcome() == "requeued"
    again = provider.receive_nowait()
    assert again is not None
    assert again.redelivered is True
    assert again.body == message.body


async def test_exception_with_truthy_requeue_attribute_requeues(memory_broker: MemoryBroker) -> None:
    provider, message = await _deliver(memory_broker)

    async def republish_failed(message: Message) -> bool:
        raise RepublishFailed("copy not confirmed")

    with pytest.raises(RepublishFailed):
        await AckProcessor(republish_failed, provider=provider)(message)
    assert provider.rejected == [(message.delivery_tag, True)]
    again = provider.receive_nowait()
    assert again is not None and again.redelivered


async def test_an_undecodable_message_is_never_requeued_even_with_requeue_on_error(
    memory_broker: MemoryBroker,
) -> None:
    # Requeued it came back forever, and a quorum delivery limit could not count it (attack 3, session 9).
    provider, message = await _deliver(memory_broker)

    async def undecodable(message: Message) -> bool:
        raise UndecodableMessage("its properties do not decode")

    with pytest.raises(UndecodableMessage):
        await AckProcessor(undecodable, provider=provider, requeue_on_error=True)(message)
    assert provider.rejected == [(message.delivery_tag, False)]
    assert provider.receive_nowait() is None


async def test_a_stop_during_a_held_copy_leaves_the_message_unsettled_and_says_requeued(
    memory_broker: MemoryBroker,
) -> None:
    # Settled by nobody: the broker redelivers it when the channel closes. Before the outcome was
    # recorded, a job tracker outside wrote the job as succeeded (no outcome after a caught error).
    provider, message = await _deliver(memory_broker)

    async def interrupted(message: Message) -> bool:
        raise RepublishInterrupted("copy not confirmed before the stop")

    reset_outcome()
    with pytest.raises(RepublishInterrupted):
        await AckProcessor(interrupted, provider=provider)(message)
    assert provider.rejected == [] and provider.acked == []
    assert get_outcome() == "requeued"


async def test_keeps_an_outcome_recorded_by_inner_layers(memory_broker: MemoryBroker) -> None:
    provider, message = await _deliver(memory_broker)

    async def retried(message: Message) -> bool:
        record_outcome("retried")
        return True

    reset_outcome()
    await AckProcessor(retried, provider=provider)(message)
    assert get_outcome() == "retried"
    assert provider.acked == [message.delivery_tag]


class _AckFails(MemoryMessageProvider):
    async def ack(self, message: Message) -> None:
        raise ConnectionError("ack lost")


async def test_a_failing_ack_is_not_followed_by_a_reject(memory_broker: MemoryBroker) -> None:
    memory_broker.declare_queue_nowait("q")
    memory_broker.publish_nowait(Message(b"x"), "q")
    provider = _AckFails(memory_broker, "q")
    await provider.start()
    message = provider.receive_nowait()
    assert message is not None
    with pytest.raises(ConnectionError):
        await AckProcessor(_ok, provider=provider)(message)
    assert provider.rejected == []
    assert provider.unknown_settlements == 0
    assert provider.unsettled_count == 1  # left for the broker to redeliver, settled zero times


async def test_never_settles_twice_over_many_messages(memory_broker: MemoryBroker) -> None:
    memory_broker.declare_queue_nowait("q")
    for i in range(10):
        memory_broker.publish_nowait(Message(str(i).encode()), "q")
    provider = memory_broker.provider("q")
    await provider.start()

    async def odd_fails(message: Message) -> bool:
        if int(message.body) % 2:
            raise Boom()
        return True

    ack = AckProcessor(odd_fails, provider=provider)
    while (message := provider.receive_nowait()) is not None:
        with contextlib.suppress(Boom):
            await ack(message)
    assert len(provider.acked) == 5
    assert len(provider.rejected) == 5
    assert provider.unknown_settlements == 0
    assert provider.unsettled_count == 0


def test_rejects_a_non_bool_requeue_option(memory_broker: MemoryBroker) -> None:
    with pytest.raises(ValueError, match="requeue_on_error"):
        AckProcessor(_ok, provider=memory_broker.provider("q"), requeue_on_error="yes")  # type: ignore[arg-type]
