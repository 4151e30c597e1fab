"""The bulk intake's decoders: one delivery's `basic.deliver` and content header read into tuples.

Why: the consumer's hot path. `swarrow.amqp.frames` decodes into pamqp-named objects, fourteen
attribute writes the provider then reads back, and a function call per short string; here the
fields stay in locals and become the tuples the provider builds a `Message` from. Both decoders are
optimistic: they read as if the frame were well formed, with one bounds check at the end (every
position only grows), and hand anything odd to the careful decoders in `frames`, whose result or
refusal (`FrameError`, same text) is then theirs. `tests/test_frames.py` compares them.
"""

from __future__ import annotations

import base64
import datetime
import struct
from typing import Any

from pamqp import decode

from swarrow.amqp.frames import (
    Buffer,
    careful_deliver_fields,
    decode_content_header,
    timestamp_or,
)
from swarrow.topology import UNDECODABLE_HEADER, UNDECODABLE_PROPERTIES_HEADER

__all__ = [
    "PROPERTY_NAMES",
    "DeliverFields",
    "PropertyValues",
    "deliver_fields",
    "property_values",
    "undecodable_values",
    "values_of",
]

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_HEADER = struct.Struct(">HHQH")  # class id, weight, body size, first property-flags word

#: (consumer_tag, delivery_tag, redelivered, exchange, routing_key)
DeliverFields = tuple[str, int, bool, str, str]


def deliver_fields(data: Buffer, start: int, end: int) -> DeliverFields:
    """`decode_deliver`'s fields as a tuple, for the bulk intake: no object, no call per string.

    Optimistic: reads as if the frame were well formed (each position only grows, so one check at
    the end finds a string that ran past the frame); anything odd — a truncated frame, bytes that
    are not UTF-8 — is decoded again by the careful decoder, which raises `FrameError` or decodes
    leniently, exactly as `decode_deliver`.
    """
    try:
        at = start + 4
        stop = at + 1 + data[at]
        consumer_tag = data[at + 1 : stop].decode()
        (delivery_tag,) = _U64.unpack_from(data, stop)
        redelivered = bool(data[stop + 8] & 1)
        at = stop + 9
        stop = at + 1 + data[at]
        exchange = data[at + 1 : stop].decode()
        at = stop
        stop = at + 1 + data[at]
        routing_key = data[at + 1 : stop].decode()
    except (UnicodeDecodeError, IndexError, struct.error):
        return careful_deliver_fields(data, start, end)
    if stop > end:
        return careful_deliver_fields(data, start, end)
    return consumer_tag, delivery_tag, redelivered, exchange, routing_key


#: A message's properties in `Message`'s field order: headers, content_type, content_encoding,
#: delivery_mode, priority, correlation_id, reply_to, expiration, message_id, timestamp, type,
#: user_id, app_id (cluster_id, which `Message` does not carry, left out).
PropertyValues = tuple[Any, ...]


def property_values(data: Buffer, start: int, end: int, no_headers: Any = None) -> tuple[int, PropertyValues]:
    """`decode_content_header` as (body size, the properties in `Message` order), for the bulk intake.

    Locals instead of fourteen attribute writes and reads, short strings decoded in place; `headers`
    is `no_headers` when the message has none. Optimistic as `deliver_fields`: anything odd is
    decoded again by `decode_content_header`, which raises `FrameError` or decodes leniently.
    """
    try:
        _class_id, _weight, body_size, flags = _HEADER.unpack_from(data, start)
        at = start + 14
        if flags & 1:
            raise IndexError  # continuation flag words: the careful decoder skips them
        headers: Any = no_headers
        content_type = content_encoding = correlation_id = reply_to = expiration = None
        message_id = message_type = user_id = app_id = None
        delivery_mode = priority = None
        timestamp: datetime.datetime | None = None
        if flags & 0x8000:
            stop = at + 1 + data[at]
            content_type = data[at + 1 : stop].decode()
            at = stop
        if flags & 0x4000:
            stop = at + 1 + data[at]
            content_encoding = data[at + 1 : stop].decode()
            at = stop
        if flags & 0x2000:
            stop = at + 4 + _U32.unpack_from(data, at)[0]
            if stop > end:
                raise IndexError
            consumed, headers = decode.field_table(bytes(data[at:stop]))
            if consumed != stop - at:
                raise IndexError
            at = stop
        if flags & 0x1000:
            delivery_mode = data[at]
            at += 1
        if flags & 0x0800:
            priority = data[at]
            at += 1
        if flags & 0x0400:
            stop = at + 1 + data[at]
            correlation_id = data[at + 1 : stop].decode()
            at = stop
        if flags & 0x0200:
            stop = at + 1 + data[at]
            reply_to = data[at + 1 : stop].decode()
            at = stop
        if flags & 0x0100:
            stop = at + 1 + data[at]
            expiration = data[at + 1 : stop].decode()
            at = stop
        if flags & 0x0080:
            stop = at + 1 + data[at]
            message_id = data[at + 1 : stop].decode()
            at = stop
        if flags & 0x0040:
            if at + 8 > end:
                raise IndexError
            timestamp = timestamp_or(bytes(data[at : at + 8]), None)
            at += 8
        if flags & 0x0020:
            stop = at + 1 + data[at]
            message_type = data[at + 1 : stop].decode()
            at = stop
        if flags & 0x0010:
            stop = at + 1 + data[at]
            user_id = data[at + 1 : stop].decode()
            at = stop
        if flags & 0x0008:
            stop = at + 1 + data[at]
            app_id = data[at + 1 : stop].decode()
            at = stop
        if flags & 0x0004:
            stop = at + 1 + data[at]
            data[at + 1 : stop].decode()  # cluster_id: checked as the careful decoder checks it
            at = stop
    except (
        ValueError,
        OverflowError,
        IndexError,
        struct.error,
        RecursionError,
    ):  # UnicodeDecodeError: ValueError
        at = end + 1
    if at > end:
        body_size, p = decode_content_header(data, start, end)
        return body_size, values_of(p, no_headers)
    return body_size, (
        headers,
        content_type,
        content_encoding,
        delivery_mode,
        priority,
        correlation_id,
        reply_to,
        expiration,
        message_id,
        timestamp,
        message_type,
        user_id,
        app_id,
    )


def undecodable_values(reason: str, raw: bytes) -> PropertyValues:
    """The properties a delivery gets when its own do not decode: none but two headers, why and the
    raw bytes (from the property flags on, base64: a header cannot carry bytes). The callback layer
    raises `UndecodableMessage` on them, so the retry layer dead-letters the message at once with
    both: nothing of it is lost."""
    headers = {UNDECODABLE_HEADER: reason, UNDECODABLE_PROPERTIES_HEADER: base64.b64encode(raw).decode()}
    # Persistent (delivery_mode 2): its dead-letter copy must survive a broker restart whatever the
    # original said (that is in the raw bytes).
    return (headers, None, None, 2, None, None, None, None, None, None, None, None, None)


#: `PropertyValues`' order: `Message`'s fields, by pamqp's (and `frames.Properties`') names.
PROPERTY_NAMES = (
    "headers",
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "message_type",
    "user_id",
    "app_id",
)


def values_of(p: Any, no_headers: Any = None) -> PropertyValues:
    """pamqp-named properties `p` (pamqp's or `frames.Properties`) as `PropertyValues`; headers
    `no_headers` when absent. For the slow paths: aiormq's deliveries, the dead-letter scan."""
    headers = p.headers if p.headers is not None else no_headers
    return (
        headers,
        p.content_type,
        p.content_encoding,
        p.delivery_mode,
        p.priority,
        p.correlation_id,
        p.reply_to,
        p.expiration,
        p.message_id,
        p.timestamp,
        p.message_type,
        p.user_id,
        p.app_id,
    )
