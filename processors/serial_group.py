"""Run the messages of one serial group one after another, in arrival order, never at the same time."""

from __future__ import annotations

from collections import deque

from swarrow.control import current_control
from swarrow.message import Message
from swarrow.ordering import SERIAL_HEADER
from swarrow.processor import Processor

__all__ = ["SerialGroupProcessor"]


class SerialGroupProcessor:
    """Messages sharing a group (the `header`, `x-serial-group` by default) never run at once in this worker.

    The first message of a group runs; those of the same group that arrive meanwhile wait in a
    per-group line, in arrival order, and the task running the group takes them one by one when it
    is done. A waiting message holds no worker slot: its own call returns at once, so the other
    groups run concurrently up to the consumer's concurrency (no head-of-line blocking). Waiting
    messages are unacked: they count against the prefetch (give it room), and a stop leaves those
    not started unsettled, so the broker redelivers them, in order. Messages without the header run
    as usual. Place it outside every layer that settles or counts a message (the default stack puts
    it right inside the signal handler), so each message goes through them in turn.
    Across workers, one group needs one consumer: see `swarrow declare --single-active-consumer` and
    `--shards`.
    """

    def __init__(self, inner: Processor, /, *, header: str = SERIAL_HEADER) -> None:
        if not header:
            raise ValueError(f"header must be a non-empty header name, got {header!r}")
        self.inner = inner
        self.header = header
        self._waiting: dict[str, deque[Message]] = {}

    @property
    def groups_running(self) -> int:
        """Groups with a message in progress right now."""
        return len(self._waiting)

    async def __call__(self, message: Message, /) -> bool:
        headers = message.headers
        group = headers.get(self.header) if headers else None
        if group is None:
            return await self.inner(message)
        key = group.decode(errors="replace") if isinstance(group, bytes) else str(group)
        line = self._waiting.get(key)
        if line is not None:
            line.append(message)  # its group is running: it waits, and its slot is free at once
            return True
        line = self._waiting[key] = deque()
        keep_going = True
        try:
            keep_going = await self.inner(message)
            control = current_control()
            while line:
                if control is not None and control.is_stopping():
                    break  # the rest stay unsettled: redelivered, in order, once the consumer closes
                keep_going = await self.inner(line.popleft()) and keep_going
        finally:
            del self._waiting[key]
        return keep_going
