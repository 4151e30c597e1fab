"""The message as swarrow sees it: pure data, never able to ack itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

__all__ = ["Headers", "Message"]

Headers = Mapping[str, Any]

_EMPTY_HEADERS: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True)
class Message:
    """One AMQP message with its basic properties and, once delivered, its delivery fields.

    Processors and tests build and compare these freely: settlement goes through the provider,
    keyed by `delivery_tag` and `consumer_tag`, so a `Message` never needs a broker.
    """

    body: bytes = b""
    headers: Headers = field(default_factory=lambda: _EMPTY_HEADERS)
    content_type: str | None = None
    content_encoding: str | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: datetime | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    # Delivery fields: set by a provider, absent on a message built for publishing.
    delivery_tag: int | None = None
    consumer_tag: str | None = None
    redelivered: bool = False
    exchange: str = ""
    routing_key: str = ""
    queue: str = ""

    @property
    def persistent(self) -> bool:
        """True when the message asks the broker to store it on disk (delivery mode 2)."""
        return self.delivery_mode == 2

    def replace(self, **changes: Any) -> Message:
        """Return a copy with some fields changed (`dataclasses.replace`, spelled shorter)."""
        return dataclasses.replace(self, **changes)

    def for_publishing(self, **headers: Any) -> Message:
        """Return a copy without delivery fields, with `headers` merged in: what a republish sends."""
        own = self.headers or {}  # None from a caller who ignored the type: no headers, as over AMQP
        merged = {**own, **headers} if headers else dict(own)
        return dataclasses.replace(
            self,
            headers=merged,
            delivery_tag=None,
            consumer_tag=None,
            redelivered=False,
            exchange="",
            routing_key="",
            queue="",
        )


class _WritableMessage:
    """`Message`'s slots, writable: a delivery is built here in one go, then becomes a `Message`.

    Why: a frozen dataclass's `__init__` sets each of its 20 fields with `object.__setattr__`
    (~1.9 µs a message); plain attribute stores take a tenth of that, and assigning `__class__`
    between two classes with the same slots is an ordinary, documented CPython operation. The
    result is an ordinary `Message` (frozen, equal, hashable as any other).
    """

    __slots__ = tuple(f.name for f in dataclasses.fields(Message))

    def __init__(
        self,
        body: bytes,
        headers: Headers,
        content_type: str | None,
        content_encoding: str | None,
        delivery_mode: int | None,
        priority: int | None,
        correlation_id: str | None,
        reply_to: str | None,
        expiration: str | None,
        message_id: str | None,
        timestamp: datetime | None,
        type: str | None,  # the field's name
        user_id: str | None,
        app_id: str | None,
        delivery_tag: int | None,
        consumer_tag: str | None,
        redelivered: bool,
        exchange: str,
        routing_key: str,
        queue: str,
    ) -> None:
        self.body = body
        self.headers = headers
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.delivery_mode = delivery_mode
        self.priority = priority
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.expiration = expiration
        self.message_id = message_id
        self.timestamp = timestamp
        self.type = type
        self.user_id = user_id
        self.app_id = app_id
        self.delivery_tag = delivery_tag
        self.consumer_tag = consumer_tag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routing_key = routing_key
        self.queue = queue
        self.__class__ = Message  # type: ignore[assignment]


def _writable_layout_matches() -> bool:
    """True when a `_WritableMessage` can become a `Message` (same slots, same order, same base)."""
    if Message.__slots__ != _WritableMessage.__slots__:
        return False
    fields: list[Any] = [b"", {}, *[None] * 14, False, "", "", ""]
    try:
        probe: object = _WritableMessage(*fields)
    except TypeError:  # "object layout differs": another interpreter or dataclass version
        return False
    return type(probe) is Message and probe == Message(*fields)


def _frozen_message(*fields: Any) -> Message:
    return Message(*fields)


# `delivered_message(body, headers, content_type, …, routing_key, queue)`: every field, in
# `Message`'s order, positionally. What providers call for each delivery.
delivered_message: Callable[..., Message] = (
    cast(Callable[..., Message], _WritableMessage) if _writable_layout_matches() else _frozen_message
)
