"""One in-memory queue's state: its ready messages in order, its consumers, its declared shape."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from swarrow.memory._arguments import QueueSpec
from swarrow.message import Message

__all__ = ["Entry", "Queue", "Subscriber"]


@dataclass(slots=True)
class Entry:
    """A message in a queue, with what RabbitMQ keeps beside it (its place, expiry, deliveries)."""

    message: Message
    seq: int
    expires_at: float | None = None
    delivery_count: int = 0
    redelivered: bool = False
    returned: bool = False  # back at a quorum queue's head because its consumer went away
    bcc: tuple[str, ...] = ()  # BCC routing keys: gone from the headers, still used to dead-letter it


class Subscriber(Protocol):
    """What the broker needs of a consumer (the provider): room in its prefetch window, and a push."""

    def _has_room(self) -> bool: ...

    def _push(self, entry: Entry, quorum: bool) -> None: ...


@dataclass(slots=True)
class Queue:
    """A declared queue: ready entries in delivery order and the consumers it pushes to, round robin."""

    name: str
    spec: QueueSpec
    last_used: float
    ready: deque[Entry] = field(default_factory=deque)
    subscribers: list[Subscriber] = field(default_factory=list)
    turn: int = 0
