"""`open_broker(url)`: the URL's scheme picks the broker (RabbitMQ or in memory)."""

from __future__ import annotations

from typing import Any

from swarrow.broker import Broker
from swarrow.errors import ConfigurationError
from swarrow.urls import parse_url

__all__ = ["open_broker"]


def open_broker(url: str, **options: Any) -> Broker:
    """Return a broker for `url`: `amqp://` / `amqps://` for RabbitMQ, `memory://[name]` in process.

    The URL is parsed and checked first (`swarrow.urls.parse_url`): a bad one raises `InvalidURLError`
    naming the scheme, host or port, password masked. Options are passed to the broker's constructor
    (for AMQP: `reconnect_interval`, `ssl_context`, `heartbeat` ... see `AmqpBroker`). Nothing
    connects until `connect()` or first use.
    """
    parsed = parse_url(url)  # InvalidURLError (a ConfigurationError) naming what is wrong, masked
    if parsed.is_memory:
        from swarrow.memory import MemoryBroker

        if options:
            raise ConfigurationError(f"memory:// takes no connection options, got {sorted(options)}")
        return MemoryBroker.named(parsed.name or "default")
    from swarrow.amqp import AmqpBroker

    # Rebuilt: a password holding `/ ? # @` reaches the client library percent-encoded, as it expects.
    return AmqpBroker(parsed.secret_url(), **options)
