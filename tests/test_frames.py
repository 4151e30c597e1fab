"""swarrow's delivery decoder against pamqp's: generated frames decode to the same fields, bad ones raise.

The bulk intake (swarrow.amqp.intake) decodes `basic.deliver` and content headers itself; pamqp is
the reference. Each generated delivery is marshalled by pamqp, decoded by both, compared field by
field: every property-flag combination, header tables with nested tables, arrays, decimals, floats,
timestamps, long strings, and empty to multi-frame bodies (tests/test_intake.py covers the bodies).
"""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

import pamqp.frame
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp.header import ContentHeader

from swarrow.amqp.frame_tuples import PROPERTY_NAMES as PROPERTY_NAMES_IN_ORDER
from swarrow.amqp.frame_tuples import deliver_fields, property_values
from swarrow.amqp.frames import (
    DELIVER_PREFIX,
    FRAME_HEAD,
    Deliver,
    FrameError,
    Properties,
    decode_content_header,
    decode_deliver,
)

PROPERTY_NAMES = list(commands.Basic.Properties.__slots__)
# The same examples on every run (CI included), and no .hypothesis/ directory left behind.
REPEATABLE: dict[str, Any] = {"derandomize": True, "database": None}

shortstr = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
exchange_names = st.from_regex(r"[a-zA-Z0-9_.:-]{0,127}", fullmatch=True)
# What RabbitMQ hands a consumer in a table: pamqp's field types (ints by width, floats, decimals,
# strings, bools, timestamps, nested tables and arrays, void).
scalar = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.text(max_size=300),
    st.floats(allow_nan=False, allow_infinity=False, width=32),  # pamqp writes floats as 32-bit
    st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-(10**6), max_value=10**6),
    st.datetimes(min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)).map(
        lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC)
    ),
    st.none(),
)
table_value = st.recursive(
    scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(shortstr, inner, max_size=4)),
    max_leaves=12,
)
tables = st.dictionaries(shortstr, table_value, max_size=6)
timestamps = st.datetimes(
    min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)
).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC))


@st.composite
def properties(draw: st.DrawFn) -> commands.Basic.Properties:
    present = draw(st.sets(st.sampled_from(PROPERTY_NAMES[:-1])))  # cluster_id must stay empty
    values: dict[str, Any] = {}
    for name in present:
        if name == "headers":
            values[name] = draw(tables)
        elif name == "delivery_mode":
            values[name] = draw(st.sampled_from([1, 2]))
        elif name == "priority":
            values[name] = draw(st.integers(0, 255))
        elif name == "timestamp":
            values[name] = draw(timestamps)
        else:
            values[name] = draw(shortstr)
    return commands.Basic.Properties(**values)


def _payload(frame: bytes) -> tuple[bytes, int, int]:
    frame_type, _, size = FRAME_HEAD.unpack_from(frame, 0)
    return frame, 7, 7 + size


def _normalise(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return ("decimal", str(value))
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return (type(value).__name__, value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], **REPEATABLE)
@given(props=properties(), body_size=st.integers(0, 2**40))
def test_content_headers_decode_as_pamqp_decodes_them(
    props: commands.Basic.Properties, body_size: int
) -> None:
    frame = pamqp.frame.marshal(ContentHeader(0, body_size, props), 1)
    _, _, reference = pamqp.frame.unmarshal(frame)
    assert isinstance(reference, ContentHeader)
    data, start, end = _payload(frame)
    size, ours = decode_content_header(data, start, end)
    assert size == reference.body_size == body_size
    for name in PROPERTY_NAMES:
        assert _normalise(getattr(ours, name)) == _normalise(getattr(reference.properties, name)), name
    # The same from a bytearray (the bulk intake's buffer), at an offset.
    size, again = decode_content_header(bytearray(b"xyz" + data), start + 3, end + 3)
    assert [_normalise(getattr(again, n)) for n in PROPERTY_NAMES] == [
        _normalise(getattr(ours, n)) for n in PROPERTY_NAMES
    ]


@settings(max_examples=300, deadline=None, **REPEATABLE)
@given(
    consumer_tag=shortstr,
    delivery_tag=st.integers(0, 2**63 - 1),  # pamqp writes it signed; a channel never counts that far
    redelivered=st.booleans(),
    exchange=exchange_names,
    routing_key=shortstr,
)
def test_basic_deliver_decodes_as_pamqp_decodes_it(
    consumer_tag: str, delivery_tag: int, redelivered: bool, exchange: str, routing_key: str
) -> None:
    method = commands.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key)
    frame = pamqp.frame.marshal(method, 3)
    _, _, reference = pamqp.frame.unmarshal(frame)
    data, start, end = _payload(frame)
    assert data[start : start + 4] == DELIVER_PREFIX
    ours = decode_deliver(data, start, end)
    for name in Deliver.__slots__:
        assert getattr(ours, name) == getattr(reference, name), name


def test_every_single_property_flag_alone() -> None:
    samples: dict[str, Any] = {
        "content_type": "application/json",
        "content_encoding": "gzip",
        "headers": {"a": 1, "nested": {"b": [1, "x", {"c": decimal.Decimal("1.5")}]}},
        "delivery_mode": 2,
        "priority": 9,
        "correlation_id": "c" * 255,
        "reply_to": "amq.rabbitmq.reply-to",
        "expiration": "60000",
        "message_id": "é" * 100,
        "timestamp": datetime.datetime(2026, 11, 28, tzinfo=datetime.UTC),
        "message_type": "t",
        "user_id": "guest",
        "app_id": "php",
    }
    for name, value in samples.items():
        frame = pamqp.frame.marshal(ContentHeader(0, 5, commands.Basic.Properties(**{name: value})), 1)
        _, ours = decode_content_header(*_payload(frame))
        assert _normalise(getattr(ours, name)) == _normalise(value)
        assert all(getattr(ours, other) is None for other in samples if other != name)
        assert ours.cluster_id == ""


def test_a_millisecond_timestamp_is_read_as_pamqp_reads_it() -> None:
    header = struct.pack(">HHQH", 60, 0, 0, 0x0040) + struct.pack(">Q", 1_700_000_000_123)
    _, ours = decode_content_header(header, 0, len(header))
    assert ours.timestamp == datetime.datetime.fromtimestamp(1_700_000_000.123, tz=datetime.UTC)


def _header(flags: int, rest: bytes) -> bytes:
    return struct.pack(">HHQH", 60, 0, 10, flags) + rest


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\x00\x3c\x00\x3c", "short string runs past"),  # no consumer tag
        (b"\x00\x3c\x00\x3c\x03abc\x00\x00", "truncated"),  # delivery tag cut
        (b"\x00\x3c\x00\x3c\x01a" + b"\x00" * 8 + b"\x00\x05ab", "short string runs past"),
    ],
)
def test_a_malformed_deliver_raises_frame_error(payload: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        decode_deliver(payload, 0, len(payload))


def test_a_timestamp_past_year_9999_is_delivered_not_refused() -> None:
    # A client that counts nanoseconds: pamqp raises "year ... is out of range" on it.
    table = b"\x01tT" + struct.pack(">Q", 2**63)
    header = _header(0x2040, struct.pack(">I", len(table)) + table + struct.pack(">Q", 2**64 - 1))
    _, p = decode_content_header(header, 0, len(header))
    assert (p.timestamp, p.headers) == (None, {"t": 2**63})


def test_bytes_that_are_not_utf8_decode_with_replacement_characters() -> None:
    # Other clients publish them and RabbitMQ passes them through: a delivery, not a broken frame.
    deliver = b"\x00\x3c\x00\x3c\x01t" + struct.pack(">Q", 5) + b"\x01\x00\x03rk\xff"
    d = decode_deliver(deliver, 0, len(deliver))
    assert (d.consumer_tag, d.delivery_tag, d.redelivered, d.routing_key) == ("t", 5, True, "rk\ufffd")
    inner = b"\x02n\xffS\x00\x00\x00\x01v"  # {"n\xff": "v"}
    array = (
        b"A"
        + struct.pack(">I", 1 + 4 + len(inner) + 2)
        + b"F"
        + struct.pack(">I", len(inner))
        + inner
        + b"b\x07"
    )
    table = b"\x02k\xfe" + array + b"\x02ok" + b"t\x01"
    header = _header(0x2080, struct.pack(">I", len(table)) + table + b"\x02m\xc3")
    _, p = decode_content_header(header, 0, len(header))
    assert p.headers == {"k\ufffd": [{"n\ufffd": "v"}, 7], "ok": True}
    assert p.message_id == "m\ufffd"


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\x00\x3c\x00\x00", "truncated"),
        (_header(0x8000, b"\x09abc"), "short string runs past"),
        (_header(0x2000, b"\x00\x00\x00\x09ab"), "headers table"),
        (_header(0x1000, b""), "delivery_mode is truncated"),
        (_header(0x0040, b"\x00\x01"), "timestamp is truncated"),
        (_header(0x0001, b""), "flags are truncated"),
    ],
)
def test_a_malformed_content_header_raises_frame_error(payload: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        decode_content_header(payload, 0, len(payload))


def test_properties_carry_pamqps_names() -> None:
    assert set(Properties.__slots__) == set(commands.Basic.Properties.__slots__)


# -- the bulk intake's tuple decoders: the careful ones' results, whatever follows the frame -----------

NO_HEADERS: dict[str, Any] = {}


def _careful_values(data: bytes | bytearray, start: int, end: int) -> tuple[int, list[Any]]:
    size, p = decode_content_header(data, start, end)
    values = [getattr(p, name) for name in PROPERTY_NAMES_IN_ORDER]
    return size, [NO_HEADERS if values[0] is None else values[0], *values[1:]]


def _same_outcome(fast: Any, careful: Any) -> None:
    """Both raise FrameError with the same text, or both return the same body size and fields."""
    try:
        size, values = careful()
    except FrameError as exc:
        refusal = str(exc)
    else:
        got_size, got = fast()
        assert (got_size, _normalise(list(got))) == (size, _normalise(values))
        return
    with pytest.raises(FrameError) as raised:
        fast()
    assert str(raised.value) == refusal


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], **REPEATABLE)
@given(props=properties(), body_size=st.integers(0, 2**40), after=st.binary(max_size=40))
def test_property_values_are_the_content_header_in_message_order(
    props: commands.Basic.Properties, body_size: int, after: bytes
) -> None:
    frame = pamqp.frame.marshal(ContentHeader(0, body_size, props), 1)
    data, start, end = _payload(frame)
    buffer = bytearray(b"xy" + data[:end] + after)  # what follows a frame in the intake's buffer
    size, values = property_values(buffer, start + 2, end + 2, NO_HEADERS)
    assert size == body_size
    assert _normalise(list(values)) == _normalise(_careful_values(data, start, end)[1])
    assert (values[0] is NO_HEADERS) == (props.headers is None)


@settings(max_examples=200, deadline=None, **REPEATABLE)
@given(
    consumer_tag=shortstr,
    delivery_tag=st.integers(0, 2**63 - 1),
    redelivered=st.booleans(),
    exchange=exchange_names,
    routing_key=shortstr,
    after=st.binary(max_size=40),
)
def test_deliver_fields_are_basic_deliver_as_a_tuple(
    consumer_tag: str, delivery_tag: int, redelivered: bool, exchange: str, routing_key: str, after: bytes
) -> None:
    frame = pamqp.frame.marshal(
        commands.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key), 3
    )
    data, start, end = _payload(frame)
    buffer = bytearray(data[:end] + after)
    assert deliver_fields(buffer, start, end) == (
        consumer_tag,
        delivery_tag,
        redelivered,
        exchange,
        routing_key,
    )


def _rich_header() -> bytes:
    props = commands.Basic.Properties(
        content_type="application/json",
        content_encoding="gzip",
        headers={"a": 1, "nested": {"b": [1, "x"]}},
        delivery_mode=2,
        priority=3,
        correlation_id="corr",
        reply_to="amq.rabbitmq.reply-to",
        expiration="60000",
        message_id="m-1",
        timestamp=datetime.datetime(2026, 11, 28, tzinfo=datetime.UTC),
        message_type="t",
        user_id="guest",
        app_id="php",
    )
    frame = pamqp.frame.marshal(ContentHeader(0, 5, props), 1)
    data, start, end = _payload(frame)
    return data[start:end]


def test_a_content_header_cut_anywhere_is_refused_as_the_careful_decoder_refuses_it() -> None:
    # The optimistic decoder reads on past `end`: here the bytes there are the rest of a real header,
    # the likeliest thing to make a wrong read look right. Every cut must give the careful outcome.
    payload = _rich_header()
    for cut in range(len(payload)):
        buffer = bytearray(payload)
        _same_outcome(
            lambda b=buffer, c=cut: property_values(b, 0, c, NO_HEADERS),  # type: ignore[misc]
            lambda b=buffer, c=cut: _careful_values(b, 0, c),  # type: ignore[misc]
        )


def test_a_deliver_cut_anywhere_is_refused_as_the_careful_decoder_refuses_it() -> None:
    frame = pamqp.frame.marshal(commands.Basic.Deliver("swarrow.q.tag", 77, True, "ex", "rk"), 1)
    data, start, end = _payload(frame)
    payload = data[start:end]
    for cut in range(4, len(payload)):
        buffer = bytearray(payload)
        try:
            expected: Any = decode_deliver(buffer, 0, cut)
        except FrameError as exc:
            refusal = str(exc)
        else:
            assert deliver_fields(buffer, 0, cut) == tuple(getattr(expected, n) for n in Deliver.__slots__)
            continue
        with pytest.raises(FrameError) as raised:
            deliver_fields(buffer, 0, cut)
        assert str(raised.value) == refusal


@pytest.mark.parametrize(
    "payload",
    [
        _header(0x0080, b"\x02m\xc3"),  # message_id not UTF-8
        _header(0x0004, b"\x02c\xff"),  # cluster_id not UTF-8
        _header(0x8001, b"\x00\x00\x03abc"),  # a continuation flag word
        _header(0x2040, b"\x00\x00\x00\x0b\x01tT" + struct.pack(">Q", 2**63) + struct.pack(">Q", 2**64 - 1)),
        _header(0x2000, b"\x00\x00\x00\x04\x01k\xfft"),  # a header name not UTF-8 (a broken value)
    ],
)
def test_odd_content_headers_decode_as_the_careful_decoder_decodes_them(payload: bytes) -> None:
    _same_outcome(
        lambda: property_values(payload, 0, len(payload), NO_HEADERS),
        lambda: _careful_values(payload, 0, len(payload)),
    )


def test_odd_delivers_decode_as_the_careful_decoder_decodes_them() -> None:
    deliver = b"\x00\x3c\x00\x3c\x01t" + struct.pack(">Q", 5) + b"\x01\x00\x03rk\xff"
    assert deliver_fields(deliver, 0, len(deliver)) == ("t", 5, True, "", "rk\ufffd")


def _deeply_nested_header(depth: int) -> bytes:
    table = struct.pack(">I", 0)
    for _ in range(depth):
        entry = b"\x01aF" + table
        table = struct.pack(">I", len(entry)) + entry
    return _header(0x2000, table)


def test_a_header_table_nested_too_deeply_for_python_is_a_frame_error_not_a_recursion_error() -> None:
    # RabbitMQ carries it; pamqp recurses once per level. A RecursionError escaping here killed the
    # connection's reader, and the redelivery killed it again, forever (attack, session 9).
    payload = _deeply_nested_header(2000)
    with pytest.raises(FrameError, match="nested too deeply"):
        decode_content_header(payload, 0, len(payload))
    with pytest.raises(FrameError, match="nested too deeply"):
        property_values(payload, 0, len(payload), NO_HEADERS)
    shallow = _deeply_nested_header(20)
    assert property_values(shallow, 0, len(shallow), NO_HEADERS)[1][0]["a"]["a"] is not None
