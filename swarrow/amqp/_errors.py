"""What counts as a dead channel, and scrubbing passwords out of library error texts."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import aiormq
import aiormq.abc

EMPTY_HEADERS: dict[str, Any] = {}
# Errors meaning "the channel or connection is gone": settlements for it are dropped, not raised.
CHANNEL_GONE = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    asyncio.TimeoutError,
    RuntimeError,
)


def scrub(text: str, url: str) -> str:
    """Remove the password of `url` from an error text some libraries build from the URL."""
    password = aio_pika.connection.make_url(url).password
    return text.replace(password, "***") if password else text
