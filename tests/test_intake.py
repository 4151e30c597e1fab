"""The bulk intake's frame receiver on a real asyncio stream: whole deliveries taken in order, everything
else handed to aiormq in order, and a malformed delivery closing only its channel.

The connection and channel here are stand-ins holding the three attributes the receiver reads;
tests/integration/test_fastpath_rabbitmq.py runs the same receiver on aiormq and RabbitMQ.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import struct
import types
from typing import Any

import pamqp.frame
import pytest
from aiormq.connection import FrameReceiver
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from swarrow.amqp._errors import EMPTY_HEADERS
from swarrow.amqp.frame_tuples import PROPERTY_NAMES as MESSAGE_PROPERTY_NAMES
from swarrow.amqp.frames import Deliver, RefusedProperties
from swarrow.amqp.intake import BulkFrameReceiver, Route, become_bulk
from swarrow.topology import UNDECODABLE_HEADER, UNDECODABLE_PROPERTIES_HEADER

pytestmark = pytest.mark.anyio

FRAME_MAX_BODY = 1000  # body frames cut at this size, as a broker does at frame_max


class Channel:
    def __init__(self, number: int) -> None:
        self.number = number
        self.frames: asyncio.Queue[Any] = asyncio.Queue()


class Connection:
    def __init__(self, *channels: Channel) -> None:
        self.channels = {c.number: c for c in channels}
        self._Connection__last_frame_time = 0.0


def delivery(channel: int, tag: int, body: bytes, **properties: Any) -> bytes:
    frames = pamqp.frame.marshal(
        commands.Basic.Deliver(f"ctag{channel}", tag, tag % 2 == 0, "ex", "rk"), channel
    )
    frames += pamqp.frame.marshal(
        ContentHeader(0, len(body), commands.Basic.Properties(**properties)), channel
    )
    for start in range(0, len(body), FRAME_MAX_BODY):
        frames += pamqp.frame.marshal(ContentBody(body[start : start + FRAME_MAX_BODY]), channel)
    return frames


class Harness:
    def __init__(self) -> None:
        self.reader = asyncio.StreamReader()
        self.one, self.two = Channel(1), Channel(2)
        self.connection = Connection(self.one, self.two)
        receiver = become_bulk(FrameReceiver(self.reader), self.connection)
        assert isinstance(receiver, BulkFrameReceiver)
        self.receiver = receiver
        self.taken: list[tuple[Any, Any, bytes]] = []
        self.closed: list[str] = []
        self.route = Route(self.one, self.take, "q", self.close)  # type: ignore[arg-type]
        receiver._swarrow_routes[1] = self.route

    def take(self, deliver: Any, properties: Any, body: bytes, channel: Any) -> None:
        """What the provider gets, read back by pamqp's names (absent headers: the shared empty dict)."""
        assert channel is self.one
        assert len(deliver) == 5 and len(properties) == len(MESSAGE_PROPERTY_NAMES)
        named = types.SimpleNamespace(**dict(zip(MESSAGE_PROPERTY_NAMES, properties, strict=True)))
        if named.headers is EMPTY_HEADERS:
            named.headers = None
        self.taken.append((Deliver(*deliver), named, body))

    def close(self, channel: Any, queue: str, why: str) -> None:
        self.closed.append(why)

    async def frames_until_eof(self) -> list[Any]:
        returned = []
        while True:
            try:
                _, number, frame = await self.receiver.get_frame()
            except StopAsyncIteration:
                return returned
            returned.append((number, type(frame).__name__))


async def test_deliveries_cut_anywhere_are_taken_whole_and_in_order() -> None:
    h = Harness()
    rng = random.Random(21)
    expected = []
    stream = b""
    for tag in range(1, 41):
        body = rng.randbytes(rng.choice([0, 1, 100, 999, 1000, 1001, 3500]))
        headers = {"n": tag, "nested": {"list": [tag, "x"]}} if tag % 3 else None
        stream += delivery(1, tag, body, message_id=f"m{tag}", headers=headers, delivery_mode=2)
        expected.append((tag, body, f"m{tag}", headers))
        if tag % 10 == 0:  # other traffic between deliveries: handed to aiormq, in order
            stream += pamqp.frame.marshal(Heartbeat(), 0) + pamqp.frame.marshal(commands.Basic.QosOk(), 2)
    reading = asyncio.get_running_loop().create_task(h.frames_until_eof())
    position = 0
    while position < len(stream):
        size = rng.randint(1, 700)
        h.reader.feed_data(stream[position : position + size])
        position += size
        await asyncio.sleep(0)
    h.reader.feed_eof()
    returned = await asyncio.wait_for(reading, 10)
    assert returned == [(0, "Heartbeat"), (2, "QosOk")] * 4
    got = [(d.delivery_tag, body, p.message_id, p.headers) for d, p, body in h.taken]
    assert got == expected
    assert all(d.redelivered == (d.delivery_tag % 2 == 0) for d, _, _ in h.taken)
    assert h.route.taken == 40 and not h.closed
    assert h.connection._Connection__last_frame_time > 0  # aiormq's heartbeat watchdog is fed


@pytest.mark.parametrize("why", ["busy", "queued"])
async def test_a_channel_whose_reader_is_behind_gets_its_delivery_the_aiormq_way(why: str) -> None:
    h = Harness()
    if why == "busy":
        h.route.busy = True  # the inline handler is between a delivery's frames
    else:
        h.one.frames.put_nowait((0, commands.Basic.ConsumeOk("ctag1")))  # not yet read by the channel
    h.reader.feed_data(delivery(1, 1, b"x" * 1500))
    h.reader.feed_eof()
    assert await h.frames_until_eof() == [
        (1, "Deliver"),
        (1, "ContentHeader"),
        (1, "ContentBody"),
        (1, "ContentBody"),
    ]
    assert h.taken == []


async def test_a_delivery_interleaved_with_another_channel_goes_the_aiormq_way_in_order() -> None:
    h = Harness()
    frames = delivery(1, 1, b"body")
    deliver_end = 7 + int.from_bytes(frames[3:7], "big") + 1
    h.reader.feed_data(
        frames[:deliver_end] + pamqp.frame.marshal(commands.Basic.QosOk(), 2) + frames[deliver_end:]
    )
    h.reader.feed_data(delivery(2, 5, b"other channel, no route"))
    h.reader.feed_eof()
    assert await h.frames_until_eof() == [
        (1, "Deliver"),
        (2, "QosOk"),
        (1, "ContentHeader"),
        (1, "ContentBody"),
        (2, "Deliver"),
        (2, "ContentHeader"),
        (2, "ContentBody"),
    ]
    assert h.taken == []


async def test_two_consumer_channels_alternating_in_one_read_are_each_taken_once_in_order() -> None:
    # The "may this route take now" check runs once per read per route: alternating routes must each be
    # checked, and a route found behind (channel 2 here) must send every one of its deliveries aiormq's way.
    h = Harness()
    second: list[int] = []

    def take_second(deliver: Any, properties: Any, body: bytes, channel: Any) -> None:
        assert channel is h.two
        second.append(deliver[1])

    route_two = Route(h.two, take_second, "q2", h.close)  # type: ignore[arg-type]
    h.receiver._swarrow_routes[2] = route_two
    h.two.frames.put_nowait((0, commands.Basic.ConsumeOk("ctag2")))  # channel 2's reader is behind
    stream = b"".join(delivery(1 + tag % 2, tag, b"b%d" % tag) for tag in range(1, 9))
    h.reader.feed_data(stream)  # one read holds all eight
    h.reader.feed_eof()
    returned = await h.frames_until_eof()
    assert [d.delivery_tag for d, _, _ in h.taken] == [2, 4, 6, 8]  # channel 1: taken, in order
    assert second == []
    assert returned == [(2, name) for _ in range(4) for name in ("Deliver", "ContentHeader", "ContentBody")]
    h.two.frames.get_nowait()  # channel 2 caught up: its next delivery is taken again
    reader = h.reader = h.receiver.reader = asyncio.StreamReader()
    reader.feed_data(delivery(2, 9, b"b9") + delivery(1, 10, b"b10"))
    reader.feed_eof()
    assert await h.frames_until_eof() == []
    assert second == [9] and [d.delivery_tag for d, _, _ in h.taken][-1] == 10


async def test_a_delivery_for_a_channel_aiormq_no_longer_has_is_not_taken() -> None:
    h = Harness()
    del h.connection.channels[1]
    h.reader.feed_data(delivery(1, 1, b"late"))
    h.reader.feed_eof()
    assert [name for _, name in await h.frames_until_eof()] == ["Deliver", "ContentHeader", "ContentBody"]
    assert h.taken == []


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (
            pamqp.frame.marshal(commands.Basic.Deliver("ctag1", 1, False, "", "q"), 1)
            + pamqp.frame.marshal(ContentBody(b"no header"), 1),
            "a frame of type 3 instead of a content header",
        ),
        (
            pamqp.frame.marshal(commands.Basic.Deliver("ctag1", 1, False, "", "q"), 1)
            + pamqp.frame.marshal(ContentHeader(0, 10, commands.Basic.Properties()), 1)
            + pamqp.frame.marshal(ContentBody(b"12345"), 1)
            + pamqp.frame.marshal(commands.Basic.Deliver("ctag1", 2, False, "", "q"), 1),
            "a frame of type 1 after 5 of 10 body bytes",
        ),
        (
            pamqp.frame.marshal(commands.Basic.Deliver("ctag1", 1, False, "", "q"), 1)
            + pamqp.frame.marshal(ContentHeader(0, 3, commands.Basic.Properties()), 1)
            + pamqp.frame.marshal(ContentBody(b"12345"), 1),
            "5 body bytes where the header announced 3",
        ),
        (
            pamqp.frame.marshal(commands.Basic.Deliver("ctag1", 1, False, "", "q"), 1)[:-1]
            + b"\x00"
            + pamqp.frame.marshal(ContentHeader(0, 0, commands.Basic.Properties()), 1),
            "does not end with 0xCE",
        ),
    ],
)
async def test_a_malformed_delivery_closes_its_channel_only_and_drops_the_rest_of_its_content(
    bad: bytes, why: str
) -> None:
    h = Harness()
    h.reader.feed_data(delivery(1, 1, b"good before"))
    h.reader.feed_data(bad)
    h.reader.feed_data(delivery(1, 3, b"after: the channel is closing, the broker redelivers it"))
    h.reader.feed_data(pamqp.frame.marshal(commands.Channel.CloseOk(), 1))
    h.reader.feed_data(pamqp.frame.marshal(commands.Basic.QosOk(), 2))
    h.reader.feed_eof()
    returned = await h.frames_until_eof()
    assert [body for _, _, body in h.taken] == [b"good before"]
    assert len(h.closed) == 1 and why in h.closed[0]
    assert returned == [(1, "CloseOk"), (2, "QosOk")]  # nothing of the broken channel's content


async def test_a_bad_frame_end_outside_a_delivery_is_a_connection_error_as_in_aiormq() -> None:
    h = Harness()
    h.reader.feed_data(pamqp.frame.marshal(commands.Basic.QosOk(), 2)[:-1] + b"\x00")
    with pytest.raises(InvalidFrameError, match="does not end with 0xCE"):
        await h.receiver.get_frame()


async def test_a_connection_closed_mid_frame_is_a_connection_error() -> None:
    h = Harness()
    h.reader.feed_data(delivery(1, 1, b"whole") + delivery(1, 2, b"cut")[:20])
    h.reader.feed_eof()
    with pytest.raises(AMQPConnectionError, match="unexpectedly closed"):
        await h.receiver.get_frame()
    assert len(h.taken) == 1


async def test_a_take_that_raises_is_logged_and_the_reader_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    calls = []

    def failing_take(deliver: Any, properties: Any, body: bytes, channel: Any) -> None:
        calls.append(body)
        if body == b"first":
            raise RuntimeError("boom")

    h.route.take = failing_take
    caplog.set_level(logging.ERROR)
    h.reader.feed_data(delivery(1, 1, b"first") + delivery(1, 2, b"second"))
    h.reader.feed_eof()
    assert await h.frames_until_eof() == []
    assert calls == [b"first", b"second"]
    assert "could not take a delivery from q" in caplog.text


def _deep_properties() -> bytes:
    """Property flags (headers only) and a header table nested 1,500 deep: not Python's to decode."""
    table = struct.pack(">I", 0)
    for _ in range(1500):
        entry = b"\x01aF" + table
        table = struct.pack(">I", len(entry)) + entry
    return struct.pack(">H", 0x2000) + table


_DEEP_PROPERTIES = _deep_properties()


def _deep_delivery(channel: int, tag: int) -> bytes:
    """A whole delivery with `_DEEP_PROPERTIES`: framed fine."""
    payload = struct.pack(">HHQ", 60, 0, 4) + _DEEP_PROPERTIES
    frames = pamqp.frame.marshal(commands.Basic.Deliver(f"ctag{channel}", tag, False, "ex", "rk"), channel)
    frames += struct.pack(">BHI", 2, channel, len(payload)) + payload + b"\xce"
    return frames + pamqp.frame.marshal(ContentBody(b"deep"), channel)


async def test_a_delivery_whose_properties_do_not_decode_is_taken_marked_and_the_rest_as_usual() -> None:
    # Its frames are whole: it reaches the provider with two headers only (why, and the properties'
    # raw bytes), which the callback layer turns into a dead letter; nothing closes.
    h = Harness()
    deep = _deep_delivery(1, 2)
    h.reader.feed_data(delivery(1, 1, b"before") + deep + delivery(1, 3, b"after"))
    h.reader.feed_eof()
    assert await h.frames_until_eof() == []
    assert [body for _, _, body in h.taken] == [b"before", b"deep", b"after"]
    headers = h.taken[1][1].headers
    assert set(headers) == {UNDECODABLE_HEADER, UNDECODABLE_PROPERTIES_HEADER}
    assert "nested too deeply" in headers[UNDECODABLE_HEADER]
    assert base64.b64decode(headers[UNDECODABLE_PROPERTIES_HEADER]) == _DEEP_PROPERTIES  # every byte
    assert h.taken[1][1].message_id is None and not h.closed


async def test_aiormqs_path_gets_refused_properties_instead_of_a_connection_error() -> None:
    # Channel 2 has no route: its frames go aiormq's way, and pamqp's RecursionError used to kill the
    # connection's reader.
    h = Harness()
    h.reader.feed_data(_deep_delivery(2, 7))
    h.reader.feed_eof()
    frames = []
    while True:
        try:
            frames.append((await h.receiver.get_frame())[2])
        except StopAsyncIteration:
            break
    header = frames[1]
    assert isinstance(header, ContentHeader) and header.body_size == 4
    assert (
        isinstance(header.properties, RefusedProperties) and "nested too deeply" in header.properties.reason
    )
    assert header.properties.headers is None and header.properties.message_id is None
