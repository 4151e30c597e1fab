"""What a message may carry to a broker: checked on publish by both brokers, before the wire.

AMQP 0-9-1 (as aiormq encodes it and RabbitMQ 3.10 accepts it) cannot carry every Python value: without
these checks a bad header is a raw `TypeError` from the encoder, an oversized one closes the whole
connection, and a bad `expiration` or `user_id` closes the publishing channel. Here each is one
`InvalidMessageError` naming the field, raised while nothing has been sent. `as_delivered` gives the
in-memory broker the message RabbitMQ would hand back (timestamps to the second, in UTC).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from swarrow.errors import InvalidMessageError
from swarrow.message import Message

__all__ = ["HEADERS_MAX_BYTES", "as_delivered", "check_publishable", "check_table", "route_headers"]

# A content header must fit in one frame (RabbitMQ's default frame_max is 131072 bytes, minus the
# frame envelope and the other properties): past this the broker closes the connection.
HEADERS_MAX_BYTES = 128_000
_KEY_MAX_BYTES = 128  # RabbitMQ truncates longer table keys silently
_SHORTSTR_MAX_BYTES = 255
_INT64 = (-(2**63), 2**63 - 1)
_FLOAT32 = struct.Struct(">f")
_INT32 = (-(2**31), 2**31 - 1)
_FLOAT32_MAX = 3.4028234663852886e38  # aiormq packs a float header in 32 bits
_EXPIRATION = re.compile(r"[+-]?[0-9]+", re.ASCII)
_MAX_EXPIRATION = (
    315_360_000_000  # ten years in ms: RabbitMQ refuses more (value_too_large) and closes the channel
)
# pamqp sends a datetime as whole seconds and reads any value past 2**32 - 1 back as milliseconds.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIME_MAX = datetime(2106, 2, 7, 6, 28, 15, tzinfo=UTC)
_ROUTE_HEADERS = ("CC", "BCC")  # sender-selected distribution: RabbitMQ closes the channel unless a list
_SHORT_STRINGS = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "type",
    "user_id",
    "app_id",
)


def check_publishable(message: Message, *, user: str | None = None) -> None:
    """Raise `InvalidMessageError` naming the first property or header RabbitMQ cannot take.

    `user` is the connection's user name: a `user_id` property must equal it (RabbitMQ refuses
    anything else and closes the channel). None skips that check.
    """
    for name in _SHORT_STRINGS:
        value = getattr(message, name)
        if value is not None:
            _check_short_string(name, value)
    if message.expiration is not None:
        _check_expiration(message.expiration)
    if message.priority is not None:
        _check_octet("priority", message.priority, 0, 255)
    if message.delivery_mode is not None:
        _check_octet("delivery_mode", message.delivery_mode, 1, 2)
    if message.timestamp is not None:
        if not isinstance(message.timestamp, datetime):
            raise InvalidMessageError(f"timestamp must be a datetime, got {type(message.timestamp).__name__}")
        _check_time("timestamp", message.timestamp)
    if user is not None and message.user_id is not None and message.user_id != user:
        raise InvalidMessageError(
            f"user_id {message.user_id!r} is not the connection's user {user!r}: RabbitMQ refuses it"
        )
    if not isinstance(message.body, bytes | bytearray | memoryview):
        raise InvalidMessageError(f"body must be bytes, got {type(message.body).__name__}")
    if message.headers:
        for name in _ROUTE_HEADERS:
            routes = message.headers.get(name)
            if routes is not None and not isinstance(routes, list):
                raise InvalidMessageError(
                    f"headers[{name!r}] must be a list of routing keys, got {type(routes).__name__}:"
                    " RabbitMQ refuses anything else (and closes the channel)"
                )
        size = _table_size("headers", message.headers)
        if size > HEADERS_MAX_BYTES:
            raise InvalidMessageError(
                f"headers encode to {size} bytes, over the {HEADERS_MAX_BYTES}-byte limit of one AMQP frame:"
                " put large data in the body"
            )


def as_delivered(message: Message) -> Message:
    """`message` as RabbitMQ would deliver it, decoded by aiormq.

    The body a `bytes` copy; datetimes to the second in UTC; header floats in 32 bits; tables with
    their keys sorted (pamqp sorts them on the wire); enum and other subclasses as their base type;
    `BCC` gone (RabbitMQ strips it).
    """
    timestamp = message.timestamp
    headers = message.headers
    changes: dict[str, Any] = {}
    if type(message.body) is not bytes:
        changes["body"] = bytes(message.body)
    if timestamp is not None:
        changes["timestamp"] = _to_wire_time(timestamp)
    if headers and ("BCC" in headers or not _as_on_the_wire(headers)):
        changes["headers"] = _delivered_value({k: v for k, v in headers.items() if k != "BCC"})
    return message.replace(**changes) if changes else message


def check_table(path: str, table: Mapping[Any, Any]) -> None:
    """`InvalidMessageError` naming the first key or value of `table` AMQP cannot carry (as for headers)."""
    _table_size(path, table)


def route_headers(headers: Mapping[str, Any], name: str) -> list[str]:
    """The extra routing keys of a `CC` or `BCC` header (RabbitMQ skips items that are not strings)."""
    routes = headers.get(name)
    return [key for key in routes if isinstance(key, str)] if isinstance(routes, list) else []


def _check_short_string(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidMessageError(f"{name} must be a str, got {type(value).__name__}")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise InvalidMessageError(f"{name} is not encodable as UTF-8") from None
    if size > _SHORTSTR_MAX_BYTES:
        raise InvalidMessageError(
            f"{name} is {size} bytes long, over AMQP's {_SHORTSTR_MAX_BYTES}-byte limit"
        )


def _check_expiration(value: str) -> None:
    if not _EXPIRATION.fullmatch(value) or not 0 <= int(value) <= _MAX_EXPIRATION:
        raise InvalidMessageError(
            f"expiration must be a whole number of milliseconds from 0 to {_MAX_EXPIRATION} (ten years)"
            f" as a string, got {value!r}"
        )


def _check_time(path: str, value: datetime) -> None:
    aware = value if value.tzinfo is not None and value.utcoffset() is not None else value.replace(tzinfo=UTC)
    if not _EPOCH <= aware <= _TIME_MAX:
        raise InvalidMessageError(
            f"{path} = {value.isoformat()} cannot be sent: AMQP carries times from 1970-01-01 to"
            " 2106-02-07T06:28:15Z (whole seconds since 1970, read back as milliseconds past 2**32)"
        )


def _check_octet(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidMessageError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def headers_size(headers: Mapping[str, Any]) -> int:
    """Bytes `headers` take on the wire (see HEADERS_MAX_BYTES); `InvalidMessageError` if unencodable."""
    return _table_size("headers", headers)


def _table_size(path: str, table: Mapping[Any, Any]) -> int:
    size = 4
    for key, value in table.items():
        if not isinstance(key, str):
            raise InvalidMessageError(f"{path} keys must be str, got {key!r}")
        try:
            key_size = len(key.encode())
        except UnicodeEncodeError:
            raise InvalidMessageError(f"{path} key {key!r} is not encodable as UTF-8") from None
        if key_size > _KEY_MAX_BYTES:
            raise InvalidMessageError(
                f"{path} key {key[:40]!r}... is {key_size} bytes, over RabbitMQ's {_KEY_MAX_BYTES}-byte limit"
            )
        size += 1 + key_size + 1 + _value_size(f"{path}[{key!r}]", value)
    return size


def _value_size(path: str, value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise InvalidMessageError(f"{path} = {value} does not fit in a signed 64-bit integer")
        return 8
    if isinstance(value, float):
        # RabbitMQ 3.10 closes the whole connection (541 INTERNAL_ERROR) on a NaN or infinite float.
        if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
            raise InvalidMessageError(
                f"{path} = {value!r} cannot be sent: a header float must be finite and fit in 32 bits"
            )
        return 8
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidMessageError(f"{path} = {value!r} cannot be sent: a header Decimal must be finite")
        exponent = value.as_tuple().exponent
        scale = -exponent if isinstance(exponent, int) and exponent < 0 else 0
        if scale > 255 or not _INT32[0] <= int(value.scaleb(scale)) <= _INT32[1]:
            raise InvalidMessageError(
                f"{path} = {value!r} cannot be sent: an AMQP decimal has a 32-bit mantissa, <= 255 places"
            )
        return 8
    if isinstance(value, str):
        try:
            return 4 + len(value.encode())
        except UnicodeEncodeError:
            raise InvalidMessageError(f"{path} is not encodable as UTF-8") from None
    if isinstance(value, datetime):
        _check_time(path, value)
        return 8
    if isinstance(value, list):
        return 4 + sum(1 + _value_size(f"{path}[{i}]", item) for i, item in enumerate(value))
    if isinstance(value, dict):
        return _table_size(path, value)
    raise InvalidMessageError(
        f"{path} is a {type(value).__name__}, which AMQP headers cannot carry: use str, int, float, bool,"
        " None, Decimal, datetime, list or dict (bytes, tuples, sets and UUIDs must be converted)"
    )


def _to_wire_time(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0)


_EXACT = (str, int, bool, type(None))


def _as_on_the_wire(value: Any) -> bool:
    """True when aiormq would decode `value` back as it is (the common case: nothing to copy)."""
    kind = type(value)
    if kind in _EXACT:
        return True
    if kind is dict:
        keys = list(value)
        return keys == sorted(keys) and all(_as_on_the_wire(item) for item in value.values())
    if kind is list:
        return all(_as_on_the_wire(item) for item in value)
    if kind is Decimal:
        exponent = value.as_tuple().exponent
        return isinstance(exponent, int) and exponent <= 0
    return False


def _delivered_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, datetime):
        return _to_wire_time(value)
    if isinstance(value, float):  # aiormq packs a float header in 32 bits: 0.1 comes back 0.10000000149011612
        return _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    if isinstance(value, int):
        return int(value)  # an IntEnum comes back a plain int
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        return Decimal(int(value)) if isinstance(exponent, int) and exponent > 0 else Decimal(value)
    if isinstance(value, list):
        return [_delivered_value(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _delivered_value(value[key]) for key in sorted(value)}
    return value
