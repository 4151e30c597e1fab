"""Bulk intake: read the consumer connection's socket in large chunks and take whole deliveries there.

Why: aiormq's connection reader reads each frame with three `readexactly` calls, decodes it with
pamqp, logs it and queues it for the channel's reader, which swarrow's inline handler then pulls the
header and body from: three frames, three decodes, three queue hops per message — most of a fast
consumer's CPU. Here the reader's `FrameReceiver` gets a subclass (its `__class__` is swapped once
the connection is open) whose `get_frame` reads up to 64 KiB at a time, and, when a registered
consumer channel's `basic.deliver`, content header and body frames all sit in the buffer, decodes
them with `swarrow.amqp.frames` and hands the delivery to the provider at once. Every other frame —
channel 0, other channels, RPC replies, confirms, cancels — is decoded by pamqp and returned to
aiormq exactly as before, in order.

Order is kept: a delivery is taken here only while the channel's own frame queue is empty and its
reader is not in the middle of a delivery (`Route.busy`); otherwise its frames go aiormq's way and
the inline handler in `fastpath.py` takes them, so deliveries always reach the provider in the
order the broker sent them. A delivery whose frames are interleaved with another channel's also
goes aiormq's way.

Private internals relied on (aiormq 7.2.1 to 7.x, the `fastpath.SUPPORTED` gate): the receiver is
the `frame_receiver` local of the connection's `_reader_task` coroutine; the connection's
`_Connection__last_frame_time` (its heartbeat watchdog: updated here on every read, since the frames
taken here never reach aiormq's loop); `Connection.channels`; `Channel.frames` and `Channel.number`.
Each is checked before anything changes; when one is missing nothing is swapped, the inline path
carries on and `apply_fast_path` logs it once. A malformed delivery closes its channel (the broker
redelivers its unacked messages); nothing is raised into aiormq's reader but the errors aiormq's
own receiver raises for a broken connection.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import Any, Final, cast

import aiormq
import aiormq.abc
import pamqp.frame
from aiormq.connection import FrameReceiver
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

from swarrow.amqp._errors import EMPTY_HEADERS
from swarrow.amqp.frame_tuples import (
    DeliverFields,
    PropertyValues,
    deliver_fields,
    property_values,
    undecodable_values,
)
from swarrow.amqp.frames import (
    DELIVER_PREFIX,
    FRAME_END,
    FRAME_HEAD,
    FrameError,
    RefusedProperties,
    decode_content_header,
    decode_deliver,
)

__all__ = [
    "BulkFrameReceiver",
    "Route",
    "TakeDecoded",
    "become_bulk",
    "install_bulk_intake",
    "tolerate_odd_frames",
]

logger = logging.getLogger(__name__)

_CHUNK: Final = 65536
_BODY_SIZE: Final = struct.Struct(">Q")  # a content header's body size, after its class id and weight
_WEIGHT: Final = struct.Struct(">H")  # a content header's weight, after its class id
_LAST_FRAME_TIME: Final = "_Connection__last_frame_time"
_NEED_MORE: Final = 0  # the delivery is not all in the buffer yet
_PASS: Final = -1  # let aiormq take this delivery

#: What a route hands a delivery to: `basic.deliver`'s fields, the properties in `Message` order
#: (headers `EMPTY_HEADERS` when absent), the body, the channel.
TakeDecoded = Callable[[DeliverFields, PropertyValues, bytes, aiormq.abc.AbstractChannel], None]
CloseChannel = Callable[[aiormq.abc.AbstractChannel, str, str], None]


class Route:
    """One consumer channel whose deliveries the bulk intake takes."""

    __slots__ = ("broken", "busy", "channel", "close", "queue_name", "take", "taken")

    def __init__(
        self, channel: aiormq.abc.AbstractChannel, take: TakeDecoded, queue_name: str, close: CloseChannel
    ) -> None:
        self.channel = channel
        self.take = take
        self.queue_name = queue_name
        self.close = close
        self.busy = False  # aiormq's channel reader is between a delivery's frames (fastpath.py sets it)
        self.broken = False  # a malformed delivery closed the channel: drop its remaining content frames
        self.taken = 0  # deliveries taken here (tests and the fast-path check read it)


class BulkFrameReceiver(FrameReceiver):
    """aiormq's frame receiver, reading in chunks and taking registered channels' deliveries itself."""

    _swarrow_buf: bytearray
    _swarrow_routes: dict[int, Route]
    _swarrow_connection: Any
    _swarrow_loop: asyncio.AbstractEventLoop

    async def get_frame(self) -> Any:
        buf = self._swarrow_buf
        while True:
            frame = self._swarrow_next(buf)
            if frame is not None:
                return frame
            try:
                chunk = await self.reader.read(_CHUNK)
            except ConnectionError as exc:
                raise AMQPConnectionError(f"Server connection error: {exc!r}") from exc
            except OSError as exc:
                raise AMQPConnectionError(f"Server communication error: {exc!r}") from exc
            if not chunk:
                if buf:
                    raise AMQPConnectionError(
                        f"Server connection unexpectedly closed. {len(buf)} bytes of a frame were read"
                    )
                raise StopAsyncIteration
            buf += chunk
            setattr(self._swarrow_connection, _LAST_FRAME_TIME, self._swarrow_loop.time())

    def _swarrow_next(self, buf: bytearray) -> Any:
        """The next frame for aiormq, taking the deliveries before it; None when more bytes are needed."""
        routes = self._swarrow_routes
        channels = self._swarrow_connection.channels
        ready: Route | None = None  # the route found free to take from, in this call (nothing else runs)
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 8:
                frame_type, channel, size = FRAME_HEAD.unpack_from(buf, pos)
                stop = pos + 7 + size  # where FRAME_END must be
                if stop >= end:
                    return None
                route = routes.get(channel) if routes else None
                if route is not None:
                    if route.broken and (frame_type != 1 or buf[pos + 7 : pos + 11] == DELIVER_PREFIX):
                        if frame_type in (1, 2, 3):
                            pos = stop + 1  # the rest of a closed channel's deliveries
                            continue
                    elif (
                        frame_type == 1
                        and buf.startswith(DELIVER_PREFIX, pos + 7)
                        and (route is ready or _free(route, channels.get(channel)))
                    ):
                        ready = route
                        after = self._swarrow_take(route, channel, buf, pos, stop, end)
                        if after == _NEED_MORE:
                            return None
                        if after > 0:
                            pos = after
                            continue
                if buf[stop] != FRAME_END:
                    raise InvalidFrameError(f"frame on channel {channel} does not end with 0xCE")
                data = bytes(buf[pos : stop + 1])
                pos = stop + 1
                try:
                    return pamqp.frame.unmarshal(data)
                except (PAMQPException, RecursionError) as exc:
                    lenient = _lenient_frame(frame_type, channel, data)
                    if lenient is None:
                        raise InvalidFrameError(str(exc)) from exc
                    return lenient
            return None
        finally:
            if pos:
                del buf[:pos]

    def _swarrow_take(self, route: Route, channel: int, buf: bytearray, pos: int, stop: int, end: int) -> int:
        """Take the delivery at `pos`, its route `_free`: the position after it, _NEED_MORE or _PASS."""
        ch = route.channel
        header_at = stop + 1
        if end - header_at < 8:
            return _NEED_MORE
        header_type, header_channel, header_size = FRAME_HEAD.unpack_from(buf, header_at)
        if header_channel != channel:
            return _PASS  # interleaved with another channel's frame: aiormq assembles it
        header_stop = header_at + 7 + header_size
        if header_stop >= end:
            return _NEED_MORE
        try:
            if buf[stop] != FRAME_END or buf[header_stop] != FRAME_END:
                raise FrameError("a frame does not end with 0xCE")
            if header_type != 2:
                raise FrameError(f"a frame of type {header_type} instead of a content header")
            if header_size < 12:
                raise FrameError("a content header is truncated")
            (body_size,) = _BODY_SIZE.unpack_from(buf, header_at + 11)
            # Find every body frame first, copying nothing: a large body arrives over many reads, and
            # it is copied once, when all of it is here.
            after: int = header_stop + 1
            first = -1  # where the first body frame's payload starts, ...
            first_stop = -1  # ... and ends
            spans: list[tuple[int, int]] | None = None  # every one of them, past the first
            received = 0
            while received < body_size:
                if end - after < 8:
                    return _NEED_MORE
                body_type, body_channel, body_len = FRAME_HEAD.unpack_from(buf, after)
                if body_channel != channel:
                    return _PASS
                body_stop = after + 7 + body_len
                if body_stop >= end:
                    return _NEED_MORE
                if body_type != 3:
                    raise FrameError(
                        f"a frame of type {body_type} after {received} of {body_size} body bytes"
                    )
                if buf[body_stop] != FRAME_END:
                    raise FrameError("a body frame does not end with 0xCE")
                if first < 0:
                    first, first_stop = after + 7, body_stop
                else:
                    if spans is None:
                        spans = [(first, first_stop)]
                    spans.append((after + 7, body_stop))
                received += body_len
                after = body_stop + 1
            if received != body_size:
                raise FrameError(f"{received} body bytes where the header announced {body_size}")
            try:
                _, properties = property_values(buf, header_at + 7, header_stop, EMPTY_HEADERS)
            except FrameError as exc:  # the frames are whole, only the properties do not decode
                properties = undecodable_values(str(exc), bytes(buf[header_at + 19 : header_stop]))
            if spans is not None:
                body = b"".join([buf[a:b] for a, b in spans])
            elif first >= 0:
                body = bytes(buf[first:first_stop])
            else:
                body = b""
            deliver = deliver_fields(buf, pos + 7, stop)
        except (ValueError, OverflowError, IndexError, struct.error) as exc:  # FrameError is a ValueError
            route.broken = True
            route.close(ch, route.queue_name, f"a malformed delivery ({exc})")
            return stop + 1
        route.taken += 1
        try:
            route.take(deliver, properties, body, ch)
        except Exception:  # never let one delivery kill the connection's reader
            logger.exception(
                "could not take a delivery from %s", route.queue_name, extra={"queue": route.queue_name}
            )
        return after


def _free(route: Route, open_channel: Any) -> bool:
    """Whether the intake may take `route`'s next delivery: its channel is the connection's open one
    and aiormq's reader holds none of its frames (taking one now would reorder them). Nothing of this
    changes until aiormq's code runs again: `_swarrow_next` asks once a call per route."""
    channel = route.channel
    return open_channel is channel and not channel.frames.qsize() and not route.busy


def _lenient_frame(frame_type: int, channel: int, data: bytes) -> Any:
    """A delivery's frame pamqp refused, decoded by swarrow's decoder; None when that fails too.

    pamqp refuses bytes that are not UTF-8 in a short string (a routing key, a `message_id`, a
    header name: RabbitMQ passes them through from other clients) and timestamps past year 9999;
    raised into aiormq's reader they failed the connection, and the redelivery failed it again,
    forever. swarrow's decoder reads those leniently (`swarrow.amqp.frames`). A content header whose
    properties still do not decode (tables nested deeper than Python recurses) becomes a header with
    `RefusedProperties`: the consumer dead-letters it without calling the callback (see
    `frame_tuples.undecodable_values`), the dead-letter tools leave it in place; anything else
    refused stays the connection error aiormq's own receiver raises.
    """
    frame: Any
    try:
        if frame_type == 1 and data.startswith(DELIVER_PREFIX, 7):
            d = decode_deliver(data, 7, len(data) - 1)
            frame = Basic.Deliver.__new__(Basic.Deliver)  # its validate() refuses such an exchange name
            frame.consumer_tag, frame.delivery_tag, frame.redelivered = (
                d.consumer_tag,
                d.delivery_tag,
                d.redelivered,
            )
            frame.exchange, frame.routing_key = d.exchange, d.routing_key
        elif frame_type == 2 and len(data) >= 22:  # head, class, weight, body size, flags, frame end
            try:
                body_size, properties = decode_content_header(data, 7, len(data) - 1)
            except FrameError as exc:  # the delivery is whole, its properties are not Python's to read
                body_size = _BODY_SIZE.unpack_from(data, 11)[0]
                properties = RefusedProperties(str(exc), bytes(data[19:-1]))
            frame = ContentHeader(_WEIGHT.unpack_from(data, 9)[0], body_size)
            frame.properties = properties  # pamqp's attribute names: what the inline handler reads
        else:
            return None
    except (ValueError, OverflowError, IndexError, struct.error):  # FrameError is a ValueError
        return None
    return len(data), channel, frame


def _reader_frame_receiver(connection: Any) -> Any:
    """The running `FrameReceiver` of an aiormq connection, or None where it cannot be found."""
    task = getattr(connection, "_reader_task", None)
    task = getattr(task, "task", task)  # aiormq wraps it in a TaskWrapper
    if not isinstance(task, asyncio.Task) or task.done():
        return None
    coroutine = task.get_coro()
    frame = getattr(coroutine, "cr_frame", None)
    if frame is None:
        return None
    receiver = frame.f_locals.get("frame_receiver")
    return receiver if isinstance(receiver, FrameReceiver) else None


def become_bulk(receiver: FrameReceiver, connection: Any) -> BulkFrameReceiver | None:
    """Turn aiormq's receiver into a bulk one (once); None if it is some other subclass."""
    if type(receiver) is FrameReceiver:
        receiver.__class__ = BulkFrameReceiver  # no await until its state is set below
        bulk = cast(BulkFrameReceiver, receiver)
        bulk._swarrow_buf = bytearray()
        bulk._swarrow_routes = {}
        bulk._swarrow_connection = connection
        bulk._swarrow_loop = asyncio.get_running_loop()
        return bulk
    return receiver if isinstance(receiver, BulkFrameReceiver) else None


def install_bulk_intake(
    underlay: aiormq.abc.AbstractChannel,
    take: TakeDecoded,
    queue_name: str,
    close: CloseChannel,
) -> Route | None:
    """Route `underlay`'s deliveries through its connection's bulk reader; None when that cannot be."""
    connection = getattr(underlay, "connection", None)
    number = getattr(underlay, "number", None)
    if (
        connection is None
        or not isinstance(number, int)
        or not isinstance(getattr(connection, "channels", None), dict)
        or not isinstance(getattr(connection, _LAST_FRAME_TIME, None), float)
        or not isinstance(getattr(underlay, "frames", None), asyncio.Queue)
    ):
        return None
    receiver = _reader_frame_receiver(connection)
    if receiver is None:
        return None
    bulk = become_bulk(receiver, connection)
    if bulk is None:
        return None
    route = Route(underlay, take, queue_name, close)
    routes = bulk._swarrow_routes
    routes[number] = route

    def forget(_: object) -> None:
        if routes.get(number) is route:
            del routes[number]

    closing = getattr(underlay, "closing", None)
    if isinstance(closing, asyncio.Future):
        closing.add_done_callback(forget)
    return route


def tolerate_odd_frames(connection: Any) -> bool:
    """Give an aiormq connection the bulk receiver without any route: every frame still goes
    aiormq's way, one at a time (its back-pressure kept), but a delivery pamqp refuses only for text
    that is not UTF-8 or a timestamp past year 9999 is decoded by swarrow's decoder instead of
    failing the connection (`_lenient_frame`). For the dead-letter scan, which must read such letters.
    """
    if not isinstance(getattr(connection, _LAST_FRAME_TIME, None), float):
        return False
    receiver = _reader_frame_receiver(connection)
    return receiver is not None and become_bulk(receiver, connection) is not None
