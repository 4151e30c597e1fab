"""Ordering work beyond one FIFO queue: serial groups and sharded queues (names the CLI and layers share)."""

from __future__ import annotations

from typing import Final

__all__ = ["HASH_EXCHANGE_TYPE", "SERIAL_HEADER", "shard_exchange_name", "shard_queue_name"]

SERIAL_HEADER: Final = "x-serial-group"
"""The header naming a message's serial group (`SerialGroupProcessor`, `swarrow publish --serial-group`)."""
HASH_EXCHANGE_TYPE: Final = "x-consistent-hash"
"""RabbitMQ's consistent-hash exchange (the `rabbitmq_consistent_hash_exchange` plugin, shipped with it)."""


def shard_exchange_name(queue: str) -> str:
    """The consistent-hash exchange spreading `queue`'s groups over its shards: `Q.shards`."""
    return f"{queue}.shards"


def shard_queue_name(queue: str, shard: int) -> str:
    """Shard number `shard` (1-based) of `queue`: `Q.shard.k`, a work queue of its own."""
    return f"{queue}.shard.{shard}"
