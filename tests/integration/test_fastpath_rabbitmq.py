"""The aiormq fast path on the real aiormq and RabbitMQ: every trick ACTIVE; a bad frame only redelivers.

If a dependency change turns a trick off, these fail instead of the consumer silently getting ~40% slower.
"""

from __future__ import annotations

import logging

import anyio
import pamqp.frame
import pytest
from pamqp.body import ContentBody
from pamqp.commands import Basic

from swarrow.amqp import AmqpBroker, AmqpMessageProvider
from swarrow.amqp.acks import write_queue_of
from swarrow.amqp.fastpath import SUPPORTED, is_inline
from swarrow.amqp.intake import BulkFrameReceiver, _reader_frame_receiver
from swarrow.message import Message

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def _receive(provider: AmqpMessageProvider, timeout: float = 10.0) -> Message:
    with anyio.fail_after(timeout):
        message = await provider.receive()
    assert message is not None
    return message


async def test_both_tricks_are_active_on_the_installed_aiormq(
    amqp_broker: AmqpBroker, queue_name: str
) -> None:
    assert SUPPORTED, "the installed aiormq is not the major version the fast path was written for"
    await amqp_broker.declare_queue(queue_name)
    big = b"x" * 300_000  # several body frames (frame_max 128 KiB)
    huge = bytes(range(256)) * (10 * 2**20 // 256)  # 10 MiB: 80 body frames over ~160 reads
    publisher = amqp_broker.publisher()
    provider = amqp_broker.provider(queue_name, prefetch=10)
    try:
        await provider.start()
        # Published once consuming: deliveries that arrive behind basic.consume-ok (still in the channel's
        # queue) go the inline handler's way to keep their order; these come one by one.
        for body in (b"", b"small", big, huge):
            await publisher.publish(Message(body), queue_name)
        state = provider.fast_path
        assert state is not None and state.reader_unbounded and state.inline_delivery and state.bulk_intake
        underlay = provider._underlay
        assert underlay is not None
        assert underlay.frames.maxsize == 0  # type: ignore[attr-defined]
        assert is_inline(underlay)
        # Settlement writes are guarded against a dead connection's full write queue (acks.written).
        write_queue = write_queue_of(underlay)
        assert write_queue is not None and write_queue.maxsize > 0
        bodies = [(await _receive(provider)).body for _ in range(4)]
        assert bodies == [b"", b"small", big, huge]
        assert provider.slow_deliveries == 0  # each came through the reader-side handler, none the slow way
        assert state.bulk_route is not None and state.bulk_route.taken == 4  # all four taken in bulk
    finally:
        await provider.close()
        await publisher.close()


async def test_an_unexpected_frame_closes_the_channel_and_the_broker_redelivers(
    amqp_broker: AmqpBroker, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await amqp_broker.declare_queue(queue_name)
    publisher = amqp_broker.publisher()
    await publisher.publish(Message(b"kept", message_id="m1"), queue_name)
    provider = amqp_broker.provider(queue_name, prefetch=10, ack_batch_size=1)
    try:
        await provider.start()
        first = await _receive(provider)
        assert (first.message_id, first.redelivered) == ("m1", False)
        underlay = provider._underlay
        assert underlay is not None
        # A delivery whose content header never comes: what a broken peer or a reader bug would look like.
        deliver = Basic.Deliver(first.consumer_tag, 99, False, "", queue_name)
        underlay.frames.put_nowait((0, deliver))  # type: ignore[attr-defined]
        underlay.frames.put_nowait((0, Basic.QosOk()))  # type: ignore[attr-defined]
        again = await _receive(provider, timeout=20.0)  # the robust channel reopens, we consume again
        assert (again.message_id, again.redelivered, again.body) == ("m1", True, b"kept")
        assert provider._underlay is not underlay
        state = provider.fast_path
        assert state is not None and state.reader_unbounded and state.inline_delivery and state.bulk_intake
        await provider.ack(again)
        await provider.ack(first)  # its channel is gone: dropped with a log line, never raised
        with anyio.fail_after(10):
            while (info := await amqp_broker.inspect_queue(queue_name)) is None or info.message_count:
                await anyio.sleep(0.05)
    finally:
        await provider.close()
        await publisher.close()
    assert "closing the channel consuming" in caplog.text
    assert "instead of a content header" in caplog.text


async def test_a_malformed_delivery_in_the_bulk_reader_closes_the_channel_and_the_broker_redelivers(
    amqp_broker: AmqpBroker, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await amqp_broker.declare_queue(queue_name)
    publisher = amqp_broker.publisher()
    await publisher.publish(Message(b"kept", message_id="m1"), queue_name)
    provider = amqp_broker.provider(queue_name, prefetch=10, ack_batch_size=1)
    try:
        await provider.start()
        first = await _receive(provider)
        underlay = provider._underlay
        assert underlay is not None
        receiver = _reader_frame_receiver(underlay.connection)  # type: ignore[attr-defined]
        assert isinstance(receiver, BulkFrameReceiver)
        # On the wire, as from a broken peer: a delivery followed by a body frame where its header belongs.
        deliver = Basic.Deliver(first.consumer_tag, 99, False, "", queue_name)
        number = underlay.number  # type: ignore[attr-defined]
        receiver.reader.feed_data(
            pamqp.frame.marshal(deliver, number) + pamqp.frame.marshal(ContentBody(b"junk"), number)
        )
        again = await _receive(provider, timeout=20.0)  # the robust channel reopens, we consume again
        assert (again.message_id, again.redelivered, again.body) == ("m1", True, b"kept")
        assert provider._underlay is not underlay
        await provider.ack(again)
        with anyio.fail_after(10):
            while (info := await amqp_broker.inspect_queue(queue_name)) is None or info.message_count:
                await anyio.sleep(0.05)
    finally:
        await provider.close()
        await publisher.close()
    assert "a malformed delivery (a frame of type 3 instead of a content header)" in caplog.text
