"""The quarantined aiormq fast path: the only code that touches aiormq's private channel internals.

Two tricks on the consumer channel, each measured (DESIGN.md, README "Performance"):

- **the reader runs ahead**: aiormq caps each channel's frame queue at 10 frames, so its connection
  reader hands over to the channel reader every three deliveries (a quarter of a busy consumer's CPU).
  aiormq's public `Connection.channel(frame_buffer_size=0)` would open an unbounded channel, but the
  consumer channel is opened by aio-pika's robust channel (it owns the reconnect), which does not pass
  that argument through: so the cap is lifted after the fact through `asyncio.Queue._maxsize`.
- **deliveries taken in the channel reader**: aiormq runs each consumer callback in a new task and wraps
  each delivery in a `DeliveredMessage` read through a `BytesIO`; replacing the channel's
  `_on_deliver_frame` reads the header and body frames straight into swarrow's buffer (~8% of CPU).

Both rely on aiormq 7's `Channel.frames` (an `asyncio.Queue` of `(weight, frame)`) and
`Channel._on_deliver_frame`, and on pamqp 4's frame classes: they are applied only on aiormq >= 7.2.1, < 8
(`SUPPORTED`), and each checks the attribute it changes. When either is off, the consumer still works
through aiormq's public consumer callback, ~40% slower: logged once per process, and
`tests/integration/test_fastpath_rabbitmq.py` fails so a dependency change cannot turn them off silently.

A frame the fast path does not expect (a header or body missing or out of place, a body longer or
shorter than announced) closes the channel: the broker redelivers its unacked deliveries and aio-pika's
robust channel reopens it. No exception is ever raised into aiormq's reader.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Final

import aiormq
import aiormq.abc
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from swarrow.amqp.intake import Route, TakeDecoded, install_bulk_intake

__all__ = [
    "AIORMQ_VERSION",
    "SUPPORTED",
    "FastPath",
    "Route",
    "Take",
    "apply_fast_path",
    "is_inline",
    "let_reader_run_ahead",
]

logger = logging.getLogger(__name__)

AIORMQ_VERSION: Final = version("aiormq")
# aiormq 7.2.1 is the first whose channel reader looks `_on_deliver_frame` up per frame (7.0 to 7.2.0
# bound it once in a dict, so replacing it there does nothing); 8 may move any of it.
_SUPPORTED_RANGE: Final = ((7, 2, 1), (8, 0, 0))


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


#: True when the installed aiormq is one whose private channel internals the tricks were written against.
SUPPORTED: Final = _SUPPORTED_RANGE[0] <= _release(AIORMQ_VERSION) < _SUPPORTED_RANGE[1]

# What the provider does with one delivery: (basic.deliver frame, properties, body, channel).
Take = Callable[[Any, Any, bytes, aiormq.abc.AbstractChannel], None]

_reported_off: set[str] = set()
# Channel closes started from inside aiormq's reader: kept referenced until they finish.
_closing: set[asyncio.Task[None]] = set()


@dataclass(frozen=True, slots=True)
class FastPath:
    """Which of the two tricks is active on one consumer channel."""

    reader_unbounded: bool
    inline_delivery: bool
    bulk_route: Route | None = None  # the bulk intake's route for this channel (swarrow.amqp.intake)

    @property
    def bulk_intake(self) -> bool:
        """True when the connection's reader takes this channel's deliveries in bulk."""
        return self.bulk_route is not None


def apply_fast_path(
    underlay: aiormq.abc.AbstractChannel,
    take: Take,
    queue_name: str,
    *,
    take_decoded: TakeDecoded,
    inline: bool = True,
    bulk: bool = True,
) -> FastPath:
    """Apply the tricks to a fresh consumer channel; log once per process for each that stays off.

    `take` gets the deliveries aiormq assembled (pamqp's frames), `take_decoded` those the bulk
    intake decoded itself (tuples: see `swarrow.amqp.intake.TakeDecoded`).
    """
    route = None
    if SUPPORTED and inline and bulk:
        route = install_bulk_intake(underlay, take_decoded, queue_name, _close_channel)
    state = FastPath(
        let_reader_run_ahead(underlay),
        inline and _install_inline_delivery(underlay, take, queue_name, route),
        route,
    )
    if inline and bulk and route is None:
        _report_off("bulk_intake", "each frame is read and decoded one at a time by aiormq and pamqp")
    if not state.reader_unbounded:
        _report_off("reader_unbounded", "the channel's frame queue stays capped at 10 frames")
    if inline and not state.inline_delivery:
        _report_off("inline_delivery", "deliveries go through aiormq's task-per-message consumer callback")
    return state


def _report_off(trick: str, effect: str) -> None:
    if trick in _reported_off:
        return
    _reported_off.add(trick)
    logger.warning(
        "aiormq fast path %r is off on aiormq %s (written for 7.2.1 to 7.x): %s; consuming is slower",
        trick,
        AIORMQ_VERSION,
        effect,
    )


def let_reader_run_ahead(channel: aiormq.abc.AbstractChannel) -> bool:
    """Unbound the channel's frame queue so the connection reader never waits for our channel.

    The broker already bounds what it sends a consumer channel (`prefetch` deliveries, three frames
    each, plus rare control frames), so the cap adds no memory bound here; lifting it also stops a busy
    consumer channel from holding up the connection's other channels.
    """
    frames = getattr(channel, "frames", None)
    if not SUPPORTED or not isinstance(frames, asyncio.Queue):
        return False
    if frames.maxsize == 0:
        return True  # opened unbounded already (aiormq's public frame_buffer_size=0)
    if not isinstance(getattr(frames, "_maxsize", None), int):
        return False
    frames._maxsize = 0  # type: ignore[attr-defined]
    return frames.maxsize == 0


def _close_channel(underlay: aiormq.abc.AbstractChannel, queue_name: str, why: str) -> None:
    """Close a channel whose frames make no sense: its unacked deliveries go back to the queue."""
    logger.error(
        "closing the channel consuming %s: %s; the broker redelivers its unacked messages",
        queue_name,
        why,
        extra={"queue": queue_name},
    )
    error = aiormq.exceptions.ChannelInvalidStateError(f"swarrow closed the channel: {why}")
    task = asyncio.get_running_loop().create_task(underlay.close(error))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def _install_inline_delivery(
    underlay: aiormq.abc.AbstractChannel, take: Take, queue_name: str, route: Route | None
) -> bool:
    """Take deliveries in aiormq's channel reader instead of a task per message.

    With the bulk intake on, this handler takes only the deliveries the connection reader let
    through; `route.busy` tells the reader not to take one itself meanwhile (order).
    """
    frames = getattr(underlay, "frames", None)
    if not SUPPORTED or not isinstance(frames, asyncio.Queue) or not hasattr(underlay, "_on_deliver_frame"):
        return False

    async def next_frame() -> Any:
        item = frames.get_nowait() if frames.qsize() else await frames.get()
        frames.task_done()
        return item[1]

    async def on_deliver_frame(frame: Any) -> None:
        if route is None:
            await take_delivery(frame)
            return
        route.busy = True
        try:
            await take_delivery(frame)
        finally:
            route.busy = False

    async def take_delivery(frame: Any) -> None:
        header = await next_frame()
        if not isinstance(header, ContentHeader):
            _close_channel(
                underlay, queue_name, f"a {type(header).__name__} frame instead of a content header"
            )
            return
        size = header.body_size or 0
        body = b""
        if size:
            content = await next_frame()
            if not isinstance(content, ContentBody):
                _close_channel(
                    underlay, queue_name, f"a {type(content).__name__} frame instead of a content body"
                )
                return
            body = content.value
            if len(body) != size:  # larger than one frame (frame_max): gather the rest
                parts = [body]
                received = len(body)
                while received < size:
                    content = await next_frame()
                    if not isinstance(content, ContentBody):
                        _close_channel(
                            underlay,
                            queue_name,
                            f"a {type(content).__name__} frame after {received} of {size} body bytes",
                        )
                        return
                    parts.append(content.value)
                    received += len(content.value)
                if received != size:
                    _close_channel(
                        underlay, queue_name, f"{received} body bytes where the header announced {size}"
                    )
                    return
                body = b"".join(parts)
        try:
            take(frame, header.properties, body, underlay)
        except Exception:  # never let a bad delivery kill the channel's reader
            logger.exception("could not take a delivery from %s", queue_name, extra={"queue": queue_name})

    on_deliver_frame.swarrow_fast_path = True  # type: ignore[attr-defined]  # what is_inline() looks for
    underlay._on_deliver_frame = on_deliver_frame
    return True


def is_inline(underlay: aiormq.abc.AbstractChannel) -> bool:
    """True when `underlay`'s deliveries go through swarrow's reader-side handler (for tests)."""
    return bool(getattr(getattr(underlay, "_on_deliver_frame", None), "swarrow_fast_path", False))
