"""The quarantined aiormq fast path: the only code that touches aiormq's private channel internals."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiormq
import aiormq.abc
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

__all__ = ["install_fast_delivery", "let_reader_run_ahead"]

logger = logging.getLogger(__name__)


def let_reader_run_ahead(channel: aiormq.abc.AbstractChannel) -> bool:
    """Unbound the channel's frame queue so the connection reader never waits for our channel.

    aiormq caps each channel's queue at 10 frames (three deliveries): the connection's reader then
    hands over to the channel's reader every few frames, and that back-and-forth was a quarter of
    a busy consumer's CPU. The broker already bounds what it sends a consumer channel (`prefetch`
    deliveries, three frames each, plus rare control frames), so the cap adds no memory bound here;
    lifting it also stops a busy consumer channel from holding up the connection's other channels.
    Uses asyncio.Queue's `_maxsize`, so it is applied only where that attribute is there.
    """
    frames = getattr(channel, "frames", None)
    if not isinstance(frames, asyncio.Queue) or not isinstance(getattr(frames, "_maxsize", None), int):
        return False
    frames._maxsize = 0  # type: ignore[attr-defined]
    return True


# What the provider does with one delivery: (basic.deliver frame, properties, body, channel).
Take = Callable[[Any, Any, bytes, aiormq.abc.AbstractChannel], None]


def install_fast_delivery(underlay: aiormq.abc.AbstractChannel, take: Take, queue_name: str) -> bool:
    """Take deliveries in aiormq's channel reader instead of a task per message (~8% of CPU).

    aiormq runs each consumer callback in a new task and wraps each delivery in a
    `DeliveredMessage` read through a `BytesIO`; the buffer only needs the three frames and a
    synchronous append. Relies on aiormq 7's channel internals (its frame queue and
    `_on_deliver_frame`), so it is used only when they are there.
    """
    frames = getattr(underlay, "frames", None)
    if not isinstance(frames, asyncio.Queue) or not hasattr(underlay, "_on_deliver_frame"):
        return False

    async def next_frame() -> Any:
        item = frames.get_nowait() if frames.qsize() else await frames.get()
        frames.task_done()
        return item[1]

    async def on_deliver_frame(frame: Any) -> None:
        header = await next_frame()
        if not isinstance(header, ContentHeader):
            raise ValueError(f"unexpected frame {header!r} instead of a content header")
        size = header.body_size or 0
        body = b""
        if size:
            content = await next_frame()
            if not isinstance(content, ContentBody):
                raise ValueError(f"unexpected frame {content!r} instead of a content body")
            body = content.value
            if len(body) < size:  # larger than one frame (frame_max): gather the rest
                parts = [body]
                received = len(body)
                while received < size:
                    content = await next_frame()
                    if not isinstance(content, ContentBody):
                        raise ValueError(f"unexpected frame {content!r} instead of a content body")
                    parts.append(content.value)
                    received += len(content.value)
                body = b"".join(parts)
        try:
            take(frame, header.properties, body, underlay)
        except Exception:  # never let a bad delivery kill the channel's reader
            logger.exception("could not take a delivery from %s", queue_name)

    underlay._on_deliver_frame = on_deliver_frame
    return True
