"""How Python values become reply and request bodies, and back: one encoding for both sides."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["JSON", "TEXT", "ReplyBody", "UnencodableValue", "encode_value"]

JSON: Final = "application/json"
TEXT: Final = "text/plain; charset=utf-8"

_NO_HEADERS: Mapping[str, Any] = {}


class UnencodableValue(TypeError):
    """Raised when a value is neither bytes, str, `ReplyBody` nor JSON-encodable (the text names its type)."""


@dataclass(frozen=True, slots=True)
class ReplyBody:
    """An exact body to send: return one from a callback to choose the bytes, content type and headers.

    `ReplyBody.json(False)` is how a callback replies the JSON value `false`: a bare `False` keeps its
    meaning of "stop the consumer after this message" and replies with an empty body.
    """

    body: bytes
    content_type: str | None = None
    headers: Mapping[str, Any] = field(default_factory=lambda: _NO_HEADERS)

    @classmethod
    def json(cls, value: Any, *, headers: Mapping[str, Any] | None = None) -> ReplyBody:
        """The JSON encoding of `value` (`application/json`); `UnencodableValue` if it has none."""
        return cls(_dumps(value), JSON, headers or _NO_HEADERS)

    @classmethod
    def text(cls, value: str, *, headers: Mapping[str, Any] | None = None) -> ReplyBody:
        """`value` as UTF-8 (`text/plain; charset=utf-8`)."""
        return cls(value.encode(), TEXT, headers or _NO_HEADERS)


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:  # too deep: RecursionError
        raise UnencodableValue(
            f"a value of type {type(value).__qualname__!r} cannot be sent: it is not bytes, str or "
            f"JSON-encodable ({exc})"
        ) from None


def encode_value(value: Any) -> ReplyBody:
    """`bytes` as is, `str` as UTF-8 text, `None` as an empty body, a `ReplyBody` unchanged, else JSON."""
    if isinstance(value, ReplyBody):
        return value
    if value is None:
        return ReplyBody(b"")
    if isinstance(value, bytes | bytearray | memoryview):
        return ReplyBody(bytes(value))
    if isinstance(value, str):
        return ReplyBody(value.encode(), TEXT)
    return ReplyBody(_dumps(value), JSON)
