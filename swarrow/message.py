"""The message as swarrow sees it: pure data, never able to ack itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
