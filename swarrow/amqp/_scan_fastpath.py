"""The scan's use of aiormq internals: deliveries read with back-pressure, batches published in one write.

`install_inline_delivery` reads a channel's deliveries in its reader task (see its docstring).
`BatchPublisher` publishes a batch of messages in one socket write and tracks its confirms itself:

aiormq's `basic_publish` costs a lock, a timeout scope, a future and a socket write per message,
and each multiple confirm walks every pending confirmation: at a replay's thousands of messages per
second that was most of the CPU. Here a batch is one marshalled write; confirms are counted per
batch as they arrive (multiple or single, ack or nack); a `basic.return` (mandatory, unroutable)
always precedes the confirm of its message, so a batch knows its returns when its last confirm is in.
Relies on aiormq 7's channel internals (`write_queue`, `frames`, `_on_confirm_frame`,
`_on_return_frame`): `install` says whether they are there, and changes nothing when not.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

import aiormq.abc
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

__all__ = ["BatchPublisher", "Outcome", "install_inline_delivery"]

Outcome = str | None  # None: confirmed; else why not (nacked, returned as unroutable)


def install_inline_delivery(channel: aiormq.abc.AbstractChannel, take: Any) -> bool:
    """Read deliveries in the channel's reader and `await take(frame, properties, body)` there.

    aiormq runs each consumer callback in a task of its own, so a slow consumer makes tasks (and
    bodies) pile up without bound; awaiting in the reader instead lets its bounded frame queue fill
    and the connection stop reading. Relies on aiormq 7's channel internals (`frames`,
    `_on_deliver_frame`): returns False, changing nothing, where they are not there.
    """
    frames = getattr(channel, "frames", None)
    if not isinstance(frames, asyncio.Queue) or not hasattr(channel, "_on_deliver_frame"):
        return False

    async def next_frame() -> Any:
        item = await frames.get()
        frames.task_done()
        return item[1]

    async def on_deliver_frame(frame: Any) -> None:
        header = await next_frame()
        if not isinstance(header, ContentHeader):
            raise ValueError(f"unexpected frame {header!r} instead of a content header")
        size = header.body_size or 0
        parts: list[bytes] = []
        received = 0
        while received < size:
            content = await next_frame()
            if not isinstance(content, ContentBody):
                raise ValueError(f"unexpected frame {content!r} instead of a content body")
            parts.append(content.value)
            received += len(content.value)
        await take(frame, header.properties, parts[0] if len(parts) == 1 else b"".join(parts))

    channel._on_deliver_frame = on_deliver_frame
    return True


class _Pending:
    """One batch's delivery tags [first, last] and which of them were confirmed, nacked."""

    __slots__ = ("done", "first", "keys", "last", "nacked", "settled", "upto")

    def __init__(self, first: int, keys: list[str], done: asyncio.Future[None]) -> None:
        self.first = first
        self.last = first + len(keys) - 1
        self.keys = keys
        self.settled = bytearray(len(keys))
        self.upto = 0  # settled[:upto] are all set (multiple confirms advance it)
        self.nacked: set[int] = set()
        self.done = done

    def settle(self, tag: int, *, multiple: bool, nack: bool) -> None:
        hi = min(tag, self.last) - self.first
        lo = self.upto if multiple else hi
        for i in range(lo, hi + 1):
            if not self.settled[i]:
                self.settled[i] = 1
                if nack:
                    self.nacked.add(i)
        if multiple:
            self.upto = max(self.upto, hi + 1)
        while self.upto < len(self.settled) and self.settled[self.upto]:
            self.upto += 1
        if self.upto == len(self.settled) and not self.done.done():
            self.done.set_result(None)


class BatchPublisher:
    """Publishes batches to the default exchange (mandatory) on a confirm channel it alone writes to."""

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self._tag = 0
        self._pending: deque[_Pending] = deque()
        self._returned: set[str] = set()
        self._failure: BaseException | None = None
        channel.closing.add_done_callback(self._on_closed)

    @staticmethod
    def supported(channel: aiormq.abc.AbstractChannel) -> bool:
        """True when the channel has the internals this publisher takes over."""
        return all(
            hasattr(channel, name)
            for name in ("write_queue", "frames", "_on_confirm_frame", "_on_return_frame")
        ) and isinstance(getattr(channel, "frames", None), asyncio.Queue)

    def install(self) -> bool:
        """Take over the channel's confirm and return handling; False (nothing changed) if unsupported."""
        if not self.supported(self.channel):
            return False
        self.channel._on_confirm_frame = self._on_confirm  # type: ignore[attr-defined]
        self.channel._on_return_frame = self._on_return  # type: ignore[attr-defined]
        return True

    async def publish(self, batch: Sequence[tuple[bytes, Any, str]]) -> list[Outcome]:
        """Send `(body, properties, queue)` items in one write; wait for every confirm."""
        if not batch:
            return []
        if self._failure is not None:
            raise self._failure
        channel = self.channel
        size = max(1, int(getattr(channel, "max_content_size", 131_064)))
        frames: list[Any] = []
        for body, properties, queue in batch:
            frames.append(spec.Basic.Publish(exchange="", routing_key=queue, mandatory=True))
            frames.append(ContentHeader(properties=properties, body_size=len(body)))
            frames.extend(ContentBody(body[i : i + size]) for i in range(0, len(body), size))
        pending = _Pending(
            self._tag + 1, [queue for _, _, queue in batch], asyncio.get_running_loop().create_future()
        )
        self._tag = pending.last
        self._pending.append(pending)
        channel.write_queue.put_nowait(  # type: ignore[attr-defined]
            ChannelFrame.marshall(channel_number=channel.number, frames=frames)
        )
        await pending.done
        return [
            "the broker nacked it"
            if i in pending.nacked
            else (f"returned as unroutable: no queue {key!r}" if key in self._returned else None)
            for i, key in enumerate(pending.keys)
        ]

    async def _on_confirm(self, frame: spec.Basic.Ack | spec.Basic.Nack) -> None:
        tag = int(frame.delivery_tag or 0)
        multiple = bool(getattr(frame, "multiple", False))
        nack = isinstance(frame, spec.Basic.Nack)
        for pending in self._pending:
            if pending.first > tag:
                break
            if multiple or pending.last >= tag:
                pending.settle(tag, multiple=multiple, nack=nack)
        while self._pending and self._pending[0].done.done():
            self._pending.popleft()

    async def _on_return(self, frame: spec.Basic.Return) -> None:
        frames = self.channel.frames
        header = (await frames.get())[1]
        frames.task_done()
        received = 0
        while received < (getattr(header, "body_size", 0) or 0):
            received += len((await frames.get())[1].value)
            frames.task_done()
        # Conservative: every copy to this queue from now on counts as not delivered (it stays
        # in the dead-letter queue), since a return does not say which publish it was.
        self._returned.add(str(frame.routing_key))

    def _on_closed(self, future: asyncio.Future[Any]) -> None:
        exc = None if future.cancelled() else future.exception()
        self._failure = exc or ConnectionError("the publishing channel closed")
        for pending in self._pending:
            if not pending.done.done():
                pending.done.set_exception(self._failure)
        self._pending.clear()
