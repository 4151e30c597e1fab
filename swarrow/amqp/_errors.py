"""What counts as a dead channel, and scrubbing passwords out of library error texts."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import unquote, urlsplit

import aiormq
import aiormq.abc

from swarrow.errors import InvalidURLError
from swarrow.urls import mask_text, parse_url

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
    """Remove the password of `url` (or its user, when it has no password: a token) from an error text."""
    try:
        return parse_url(url).scrub(text)
    except InvalidURLError:  # not one swarrow built: mask what any URL would show
        return mask_text(text)


def describe_connect_error(exc: BaseException, url: str) -> str:
    """Why the first connection failed, in words: a refused login or an unknown vhost, password scrubbed."""
    parts = urlsplit(url)
    user = unquote(parts.username or "guest")
    if parts.username and parts.password is None:  # how token-authenticated services are addressed
        user = "***"
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    text = str(exc)
    # RabbitMQ answers Connection.Open for a vhost that does not exist, or one the user may not use,
    # with Connection.Close; aiormq reports only "Expected one of ['Connection.OpenOk'], got <...>".
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in text:
        return f"vhost {vhost!r} not found or access refused for user {user!r}"
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError) or "ACCESS_REFUSED" in text:
        return f"login refused for user {user!r}: wrong user name or password ({scrub(text, url)})"
    return scrub(text or type(exc).__name__, url)


class QuietFirstConnect(logging.Filter):
    """Drops aiormq's and aio-pika's own records about a first connection that fails.

    swarrow reports that failure itself, in one line and with its exit code; their "error when
    creating transport" and "Reconnecting after 2 seconds" would say otherwise (no reconnection
    follows a failed first connect). Kept at DEBUG.
    """

    LOGGERS = ("aiormq.connection", "aio_pika.robust_connection", "aio_pika.connection")

    def filter(self, record: logging.LogRecord) -> bool:
        return logging.getLogger("swarrow").isEnabledFor(logging.DEBUG)

    def __enter__(self) -> QuietFirstConnect:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)
