"""A request's deadline: when its caller stops waiting (shared by the client and the reply layer)."""

from __future__ import annotations

from typing import Final

from swarrow.message import Message
from swarrow.topology import ORIGINAL_EXPIRATION_HEADER

__all__ = ["DEADLINE_HEADER", "request_deadline"]

DEADLINE_HEADER: Final = "x-swarrow-deadline"
"""Milliseconds since the Unix epoch after which the caller no longer waits (set by `RpcClient`)."""


def request_deadline(message: Message) -> float | None:
    """The wall-clock second after which nobody waits for the reply, or None when the request has none.

    `x-swarrow-deadline` (ms since the epoch) wins; otherwise a request that carries both a
    `timestamp` and an `expiration` (on a retry copy, `x-swarrow-original-expiration`) expires at
    their sum, as RabbitMQ would have expired it in the queue, plus one second: AMQP carries the
    timestamp truncated to the second, so without it a request with a sub-second expiration would
    count as expired before it was even published.
    """
    raw = message.headers.get(DEADLINE_HEADER) if message.headers else None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw) / 1000.0
    # A retry copy carries no expiration (it would expire in the retry queue): its original's is here.
    expiration = message.expiration
    if expiration is None and message.headers:
        kept = message.headers.get(ORIGINAL_EXPIRATION_HEADER)
        expiration = kept if isinstance(kept, str) else None
    if message.timestamp is not None and expiration is not None:
        try:
            return message.timestamp.timestamp() + 1.0 + int(expiration) / 1000.0
        except ValueError:
            return None
    return None
