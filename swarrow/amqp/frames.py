"""Decode one delivery's `basic.deliver` and content header straight from the wire bytes.

Why not pamqp: its generic decoder walks each class's slots, looks every field's type up by name and
copies the remaining bytes at every step; for the two frames every consumed message carries that is
most of the consumer's CPU (README "Performance"). These two decoders know the fixed layouts, read
with `struct.unpack_from` at offsets, and build objects with pamqp's attribute names, so the provider
takes them exactly as it takes pamqp's. The rare parts stay pamqp's: header tables
(`pamqp.decode.field_table`) and timestamps (`pamqp.decode.timestamp`), so their values are pamqp's by
construction. `tests/test_frames.py` decodes generated frames with both and compares every field.

Malformed input raises `FrameError` (a `ValueError`): the caller closes the channel, never guesses.
Bytes that are not UTF-8 in a short string or a header name are not malformed: RabbitMQ passes them
through from other clients (a routing key, a `message_id`, a header name), and pamqp's decoder raises
on them, which failed the whole connection on every redelivery. They decode with U+FFFD in place of
each bad sequence, so the message reaches the stack (and its retry/dead-letter path) like any other.
Likewise a timestamp `datetime` cannot hold (past year 9999): the `timestamp` property reads as None,
a header's timestamp as the integer that was sent.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any, Final

from pamqp import decode

__all__ = [
    "DELIVER_PREFIX",
    "FRAME_END",
    "FRAME_HEAD",
    "Deliver",
    "FrameError",
    "Properties",
    "RefusedProperties",
    "careful_deliver_fields",
    "decode_content_header",
    "decode_deliver",
    "timestamp_or",
]

#: type (1 method, 2 header, 3 body, 8 heartbeat), channel, payload size; the payload; then FRAME_END.
FRAME_HEAD: Final = struct.Struct(">BHI")
FRAME_END: Final = 0xCE
#: The first four payload bytes of a `basic.deliver` method frame: class 60, method 60.
DELIVER_PREFIX: Final = b"\x00\x3c\x00\x3c"

_U64: Final = struct.Struct(">Q")
_HEADER: Final = struct.Struct(">HHQH")  # class id, weight, body size, first property-flags word
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")

#: What the decoders read from: a frame's bytes, or the bulk intake's buffer.
Buffer = bytes | bytearray


class FrameError(ValueError):
    """A delivery's frames do not decode: the channel carrying them must be closed."""


class Deliver:
    """The fields of `basic.deliver` the provider reads (pamqp's `Basic.Deliver` names)."""

    __slots__ = ("consumer_tag", "delivery_tag", "exchange", "redelivered", "routing_key")

    def __init__(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, exchange: str, routing_key: str
    ) -> None:
        self.consumer_tag = consumer_tag
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routing_key = routing_key


class Properties:
    """A message's basic properties (pamqp's `Basic.Properties` names; absent ones are None)."""

    __slots__ = (
        "app_id",
        "cluster_id",
        "content_encoding",
        "content_type",
        "correlation_id",
        "delivery_mode",
        "expiration",
        "headers",
        "message_id",
        "message_type",
        "priority",
        "reply_to",
        "timestamp",
        "user_id",
    )

    content_type: str | None
    content_encoding: str | None
    headers: dict[str, Any] | None
    delivery_mode: int | None
    priority: int | None
    correlation_id: str | None
    reply_to: str | None
    expiration: str | None
    message_id: str | None
    timestamp: datetime.datetime | None
    message_type: str | None
    user_id: str | None
    app_id: str | None
    cluster_id: str


class RefusedProperties(Properties):
    """The properties of a delivery whose content header does not decode (every property None).

    What aiormq's path gets instead of a connection error (`swarrow.amqp.intake._lenient_frame`):
    `reason` and the properties' `raw` bytes (from the flags on). The consumer dead-letters such a
    delivery without calling the callback; the dead-letter tools leave it where it is.
    """

    __slots__ = ("raw", "reason")

    def __init__(self, reason: str, raw: bytes) -> None:
        self.reason = reason
        self.raw = raw
        for name in Properties.__slots__:
            setattr(self, name, None)
        self.cluster_id = ""


def _shortstr(data: Buffer, offset: int, end: int) -> tuple[str, int]:
    if offset >= end:
        raise FrameError("a short string runs past the end of its frame")
    stop = offset + 1 + data[offset]
    if stop > end:
        raise FrameError("a short string runs past the end of its frame")
    try:
        return data[offset + 1 : stop].decode("utf-8"), stop
    except UnicodeDecodeError:
        return data[offset + 1 : stop].decode("utf-8", "replace"), stop


def _lenient_table(value: bytes) -> tuple[int, dict[str, Any]]:
    """pamqp's `field_table`, but a name that is not UTF-8 decodes with U+FFFD instead of raising."""
    (length,) = _U32.unpack_from(value, 0)
    end = 4 + length
    if end > len(value):
        raise ValueError("field table length exceeds available data")
    table: dict[str, Any] = {}
    offset = 4
    while offset < end:
        key_end = offset + 1 + value[offset]
        if key_end > end:
            raise ValueError("field table key length exceeds data")
        key = value[offset + 1 : key_end].decode("utf-8", "replace")
        consumed, table[key] = _lenient_value(value[key_end:])
        offset = key_end + consumed
    return end, table


def _lenient_value(value: bytes) -> tuple[int, Any]:
    kind = value[0:1]
    if kind == b"F":
        consumed, result = _lenient_table(value[1:])
    elif kind == b"A":
        (length,) = _U32.unpack_from(value, 1)
        end, offset, items = 5 + length, 5, []
        if end > len(value):
            raise ValueError("field array length exceeds available data")
        while offset < end:
            used, item = _lenient_value(value[offset:])
            items.append(item)
            offset += used
        return offset, items
    elif kind == b"T":
        if len(value) < 9:
            raise ValueError("a timestamp is truncated")
        return 9, timestamp_or(value[1:9], _U64.unpack_from(value, 1)[0])
    else:
        return decode.embedded_value(value)
    return consumed + 1, result


def timestamp_or(value: bytes, beyond: Any) -> Any:
    """pamqp's timestamp, or `beyond` where datetime cannot hold it (a client that sent micro- or
    nanoseconds: past year 9999), so the message is still delivered."""
    try:
        return decode.timestamp(value)[1]
    except (ValueError, OverflowError):
        return beyond


def decode_deliver(data: Buffer, start: int, end: int) -> Deliver:
    """Decode the `basic.deliver` payload in `data[start:end]` (its first 4 bytes are DELIVER_PREFIX)."""
    return Deliver(*careful_deliver_fields(data, start, end))


def careful_deliver_fields(data: Buffer, start: int, end: int) -> tuple[str, int, bool, str, str]:
    """`decode_deliver`'s fields (consumer_tag, delivery_tag, redelivered, exchange, routing_key)."""
    consumer_tag, offset = _shortstr(data, start + 4, end)
    if offset + 9 > end:
        raise FrameError("basic.deliver is truncated")
    (delivery_tag,) = _U64.unpack_from(data, offset)
    redelivered = bool(data[offset + 8] & 1)
    exchange, offset = _shortstr(data, offset + 9, end)
    routing_key, offset = _shortstr(data, offset, end)
    return consumer_tag, delivery_tag, redelivered, exchange, routing_key


def decode_content_header(data: Buffer, start: int, end: int) -> tuple[int, Properties]:
    """Decode a content header payload in `data[start:end]`: (body size, properties)."""
    if start + 14 > end:
        raise FrameError("a content header is truncated")
    _class_id, _weight, body_size, flags = _HEADER.unpack_from(data, start)
    offset = start + 14
    more = flags & 1
    while more:  # continuation flag words: no basic property lives there, but skip them as pamqp does
        if offset + 2 > end:
            raise FrameError("content header flags are truncated")
        (more,) = _U16.unpack_from(data, offset)
        more &= 1
        offset += 2
    p = Properties()
    if flags & 0x8000:
        p.content_type, offset = _shortstr(data, offset, end)
    else:
        p.content_type = None
    if flags & 0x4000:
        p.content_encoding, offset = _shortstr(data, offset, end)
    else:
        p.content_encoding = None
    if flags & 0x2000:
        if offset + 4 > end:
            raise FrameError("the headers table does not decode: its length is truncated")
        (length,) = _U32.unpack_from(data, offset)
        stop = offset + 4 + length
        if stop > end:  # checked here: pamqp 4.0.0 reads past a short table without a word
            raise FrameError(
                f"the headers table does not decode: {length} bytes announced, {end - offset - 4} left"
            )
        try:
            try:
                consumed, table = decode.field_table(bytes(data[offset:stop]))
            except (ValueError, OverflowError):  # a name not UTF-8, a timestamp past year 9999, or broken
                consumed, table = _lenient_table(bytes(data[offset:stop]))
        except RecursionError:  # tables in tables hundreds deep: RabbitMQ carries them, Python cannot
            raise FrameError("the headers table does not decode: its tables are nested too deeply") from None
        except (ValueError, OverflowError, IndexError, struct.error) as exc:
            raise FrameError(f"the headers table does not decode: {exc}") from None
        if consumed != stop - offset:
            raise FrameError("the headers table does not decode: its entries overrun its length")
        p.headers = table
        offset = stop
    else:
        p.headers = None
    if flags & 0x1000:
        if offset >= end:
            raise FrameError("delivery_mode is truncated")
        p.delivery_mode = data[offset]
        offset += 1
    else:
        p.delivery_mode = None
    if flags & 0x0800:
        if offset >= end:
            raise FrameError("priority is truncated")
        p.priority = data[offset]
        offset += 1
    else:
        p.priority = None
    if flags & 0x0400:
        p.correlation_id, offset = _shortstr(data, offset, end)
    else:
        p.correlation_id = None
    if flags & 0x0200:
        p.reply_to, offset = _shortstr(data, offset, end)
    else:
        p.reply_to = None
    if flags & 0x0100:
        p.expiration, offset = _shortstr(data, offset, end)
    else:
        p.expiration = None
    if flags & 0x0080:
        p.message_id, offset = _shortstr(data, offset, end)
    else:
        p.message_id = None
    if flags & 0x0040:
        if offset + 8 > end:
            raise FrameError("timestamp is truncated")
        p.timestamp = timestamp_or(bytes(data[offset : offset + 8]), None)
        offset += 8
    else:
        p.timestamp = None
    if flags & 0x0020:
        p.message_type, offset = _shortstr(data, offset, end)
    else:
        p.message_type = None
    if flags & 0x0010:
        p.user_id, offset = _shortstr(data, offset, end)
    else:
        p.user_id = None
    if flags & 0x0008:
        p.app_id, offset = _shortstr(data, offset, end)
    else:
        p.app_id = None
    if flags & 0x0004:
        p.cluster_id, offset = _shortstr(data, offset, end)
    else:
        p.cluster_id = ""
    if offset > end:
        raise FrameError("the content header's properties run past its frame")
    return body_size, p
