"""`open_broker(url)`: the URL's scheme picks the broker (RabbitMQ or in memory)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from swarrow.broker import Broker
from swarrow.errors import ConfigurationError
from swarrow.urls import mask_url

__all__ = ["open_broker"]


def open_broker(url: str, **options: Any) -> Broker:
    """Return a broker for `url`: `amqp://` / `amqps://` for RabbitMQ, `memory://[name]` in process.

    Options are passed to the broker's constructor (for AMQP: `reconnect_interval`, `ssl_context`,
    `heartbeat` ... see `AmqpBroker`). Nothing connects until `connect()` or first use.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from swarrow.memory import MemoryBroker

        if options:
            raise ConfigurationError(f"memory:// takes no connection options, got {sorted(options)}")
        return MemoryBroker.named(urlsplit(url).netloc or "default")
    if scheme in ("amqp", "amqps"):
        from swarrow.amqp import AmqpBroker

        return AmqpBroker(url, **options)
    raise ConfigurationError(
        f"unsupported broker URL {mask_url(url)!r}: expected amqp://, amqps:// or memory://"
    )
