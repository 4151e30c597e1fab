"""`open_broker(url)`: the URL's scheme picks the broker (RabbitMQ or in memory)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from swarrow.broker import Broker
from swarrow.errors import ConfigurationError
from swarrow.urls import parse_url

__all__ = ["open_broker"]


def open_broker(url: str | Sequence[str], **options: Any) -> Broker:
    """Return a broker for `url`: `amqp://` / `amqps://` for RabbitMQ, `memory://[name]` in process.

    The URL is parsed and checked first (`swarrow.urls.parse_url`): a bad one raises `InvalidURLError`
    naming the scheme, host or port, password masked. A RabbitMQ URL may name several nodes of a
    cluster (`amqp://u:p@h1:5672,h2:5672/vhost`, or a list of URLs): the broker fails over between
    them. Options are passed to the broker's constructor (for AMQP: `reconnect_interval`,
    `node_timeout`, `ssl_context` ... see `AmqpBroker`). Nothing connects until `connect()` or first use.
    """
    parsed = parse_url(url)  # InvalidURLError (a ConfigurationError) naming what is wrong, masked
    if parsed.is_memory:
        from swarrow.memory import MemoryBroker

        if options:
            raise ConfigurationError(f"memory:// takes no connection options, got {sorted(options)}")
        return MemoryBroker.named(parsed.name or "default")
    from swarrow.amqp import AmqpBroker

    return AmqpBroker(parsed, **options)
