"""One publish at a time per message id on a channel: aiormq matches a `basic.return` to its publish by id.

aiormq maps the `message_id` of every confirmed publish to its delivery tag, the last one winning: a
second publish of an id sent while the first awaits its return would take that return, so an
unroutable publish would be reported confirmed and a delivered one unroutable. Publishes of different
ids are not held up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["OnePerMessageId"]


class OnePerMessageId:
    """`async with gate.turn(message_id):` around a publish; None (aiormq picks a fresh id) never waits."""

    def __init__(self) -> None:
        self._in_flight: dict[str, asyncio.Event] = {}

    @asynccontextmanager
    async def turn(self, message_id: str | None) -> AsyncIterator[None]:
        """Wait until no publish of `message_id` is in flight on this channel, then hold it."""
        if message_id is None:
            yield
            return
        in_flight = self._in_flight
        while (other := in_flight.get(message_id)) is not None:
            await other.wait()
        done = in_flight[message_id] = asyncio.Event()
        try:
            yield
        finally:
            del in_flight[message_id]
            done.set()
