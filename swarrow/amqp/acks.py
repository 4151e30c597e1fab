"""Ack coalescing: which delivery tags one multiple ack may cover, and the frames that settle them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable

import aiormq
import aiormq.abc

from swarrow.amqp._errors import CHANNEL_GONE
from swarrow.message import Message

__all__ = ["SLOW_HEAD_ACK_AFTER", "AckTracker", "Settlement", "write_queue_of", "written"]

logger = logging.getLogger(__name__)

# Seconds between two looks at the finished deliveries stuck behind an unfinished head; one still
# stuck at the next look is acked singly, so none stays unacked more than twice this after it finished.
SLOW_HEAD_ACK_AFTER = 0.5


def write_queue_of(underlay: aiormq.abc.AbstractChannel) -> asyncio.Queue[object] | None:
    """aiormq 7's bounded frame-write queue behind a channel (a private attribute), or None where it is
    not one: `written` then awaits writes unguarded. `tests/integration/test_fastpath_rabbitmq.py`
    checks it is found on the installed aiormq."""
    queue = getattr(underlay, "write_queue", None)
    return queue if isinstance(queue, asyncio.Queue) else None


async def written(underlay: aiormq.abc.AbstractChannel, write: Awaitable[None]) -> None:
    """Await one settlement frame's write; `ChannelInvalidStateError` when the channel closes first.

    aiormq's write queue is bounded and belongs to the connection: once the connection is gone
    nobody drains it, and a write waiting there for room waited forever — holding the settle lock,
    so every later ack and reject of the new channel waited too (attack, session 9: 4 of 9 runs
    with forced closes during rejects). With room (always, but for a stuck or dead connection) the
    frame is queued without waiting, as before.
    """
    queue = write_queue_of(underlay)
    if queue is None or not queue.full():
        await write
        return
    task = asyncio.ensure_future(write)
    try:
        await asyncio.wait((task, underlay.closing), return_when=asyncio.FIRST_COMPLETED)
    finally:
        unwritten = not task.done()
        if unwritten:
            task.cancel()  # closed first, or the settling task itself was cancelled: never left pending
    if unwritten:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{underlay!r} closed with a settlement unwritten")
    task.result()


class AckTracker:
    """Which delivery tags of one channel one `basic.ack(multiple=True)` may cover.

    A multiple ack settles every unsettled tag up to its own, including deliveries still buffered
    or in flight, so it may only name the highest tag of the *contiguous* prefix of delivered tags
    that are finished or already settled by their own frame; and it must name a finished tag (one
    settled singly is unknown to the broker: 406). Pure bookkeeping: the provider writes the frames.
    """

    __slots__ = ("_finished", "_pending", "_single")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()  # delivered, not yet covered by a written frame; in tag order
        self._finished: set[int] = set()  # acked by the application, frame not written yet
        self._single: set[int] = set()  # settled by their own frame (reject, fallback ack)

    def delivered(self, tag: int) -> None:
        """Record a delivery (tags arrive in increasing order on a channel)."""
        self._pending.append(tag)

    def is_open(self, tag: int) -> bool:
        """True when `tag` was delivered and nothing settled it yet (guards against double settlement)."""
        pending = self._pending
        return (
            bool(pending)
            and pending[0] <= tag <= pending[-1]
            and tag not in self._finished
            and tag not in self._single
        )

    def finish(self, tag: int) -> None:
        """The application acked `tag`; its ack waits for the next multiple ack."""
        self._finished.add(tag)

    def settle_single(self, tag: int) -> None:
        """`tag` is being settled by its own frame (a reject, or a fallback single ack)."""
        self._finished.discard(tag)
        self._single.add(tag)

    @property
    def finished(self) -> int:
        """Acked by the application and not written yet."""
        return len(self._finished)

    @property
    def outstanding(self) -> int:
        """Delivered and not yet covered by a written frame."""
        return len(self._pending)

    def take_prefix(self) -> int | None:
        """Drop the settled prefix; return its highest finished tag (for multiple=True), or None."""
        pending, finished, single = self._pending, self._finished, self._single
        last = None
        while pending:
            tag = pending[0]
            if tag in finished:
                finished.remove(tag)
                last = tag
            elif tag in single:
                single.remove(tag)
            else:
                break
            pending.popleft()
        return last

    def take_blocked(self) -> list[int]:
        """Finished tags stuck behind an unfinished one: to be acked singly, marked as such."""
        blocked = sorted(self._finished)
        self._single.update(blocked)
        self._finished.clear()
        return blocked

    def snapshot(self) -> set[int]:
        """The finished tags waiting now (for `take_still_waiting` at the next look)."""
        return set(self._finished)

    def take_still_waiting(self, earlier: set[int]) -> list[int]:
        """Tags of `earlier` still finished and waiting: to be acked singly, marked as such."""
        stale = sorted(earlier & self._finished)
        self._finished.difference_update(stale)
        self._single.update(stale)
        return stale


class Settlement:
    """The settlement half of `AmqpMessageProvider`: ack, reject and the coalesced-ack flushes.

    A mixin over the provider's state (declared here for the type checker); kept apart so the
    consuming half and the ack bookkeeping can each be read on their own.
    """

    _queue_name: str
    _underlay: aiormq.abc.AbstractChannel | None
    _live_tags: set[str]
    _coalesce: bool
    _tracker: AckTracker
    _open_single: set[int]
    _settle_lock: asyncio.Lock
    _since_flush: int
    _flush_due: asyncio.Event | None
    _fallback_after: int
    _waiting: set[int]
    _waiting_since: float
    ack_batch_size: int
    ack_flush_interval: float
    stale_settlements: int
    _unsettled: int  # deliveries of the live channel not settled by the application yet

    # -- settlement -----------------------------------------------------------------------------
    # Every settlement frame is written under `_settle_lock`, in the order the tracker decided it:
    # a single ack or reject must reach the wire before a multiple ack that covers its tag, and
    # aiormq's bounded write queue can reorder writers that wait on it.

    def _drop(self, message: Message, why: str) -> None:
        self.stale_settlements += 1
        logger.warning(
            "settlement of delivery %s dropped (%s); the broker redelivers it",
            message.delivery_tag,
            why,
            extra={"queue": self._queue_name, "message_id": message.message_id},
        )

    def _ignore_second(self, message: Message) -> None:
        logger.warning(
            "delivery %s settled twice; the second settlement is ignored",
            message.delivery_tag,
            extra={"queue": self._queue_name, "message_id": message.message_id},
        )

    async def _settle(self, message: Message, *, ack: bool, requeue: bool = False) -> None:
        """The one place a settlement is decided: coalesced ack, single ack, or reject."""
        underlay = self._underlay
        tag = message.delivery_tag
        if underlay is None or tag is None or message.consumer_tag not in self._live_tags:
            self._drop(message, "its channel is closed")
            return
        if not self._coalesce:
            if tag not in self._open_single:  # a second frame would be a 406 closing the channel
                self._ignore_second(message)
                return
            self._open_single.discard(tag)
            self._unsettled -= 1
            try:
                if ack:
                    await written(underlay, underlay.basic_ack(tag, wait=False))
                else:
                    await written(underlay, underlay.basic_reject(tag, requeue=requeue, wait=False))
            except CHANNEL_GONE as exc:
                self._drop(message, f"channel gone: {exc!r}")
            return
        tracker = self._tracker
        if not tracker.is_open(tag):
            self._ignore_second(message)
            return
        if ack and message.reply_to is None:
            if self._note_ack(tag):
                await self._flush()
            return
        # A reject, or the ack of a request (`reply_to`): its own frame now. The reply layer publishes
        # right after the ack; coalesced, a crash before the flush would redeliver an answered request.
        self._unsettled -= 1
        async with self._settle_lock:
            try:
                await self._write_flush(underlay, tracker)
                tracker.settle_single(tag)
                if ack:
                    await written(underlay, underlay.basic_ack(tag, wait=False))
                else:
                    await written(underlay, underlay.basic_reject(tag, requeue=requeue, wait=False))
            except CHANNEL_GONE as exc:
                self._drop(message, f"channel gone: {exc!r}")

    def _note_ack(self, tag: int) -> bool:
        """Record a coalesced ack of an open delivery; True when a batch is due to be written now."""
        self._tracker.finish(tag)
        self._unsettled -= 1
        self._since_flush += 1
        if self._since_flush >= self.ack_batch_size:
            return True
        if self._since_flush == 1 and self._flush_due is not None:
            self._flush_due.set()  # the timer flushes a batch that stays short
        return False

    async def _flush(self, *, final: bool = False) -> None:
        """Write the acks due now (multiple=True for the finished prefix); `final`: every finished one."""
        async with self._settle_lock:
            underlay = self._underlay
            if underlay is None:
                return
            try:
                await self._write_flush(underlay, self._tracker, final=final)
            except CHANNEL_GONE as exc:
                logger.debug("ack flush on %s dropped, channel gone: %r", self._queue_name, exc)

    async def _write_flush(
        self, underlay: aiormq.abc.AbstractChannel, tracker: AckTracker, *, final: bool = False
    ) -> None:
        # Called with `_settle_lock` held.
        self._since_flush = 0
        last = tracker.take_prefix()
        if last is not None:
            await written(underlay, underlay.basic_ack(last, multiple=True, wait=False))
        if not tracker.finished:
            return
        # Finished deliveries stuck behind an unfinished head: ack them singly once there are many
        # (they hold prefetch slots), once they waited SLOW_HEAD_ACK_AFTER (a crash would redeliver
        # them), and on close (the head was cancelled: they would be redelivered and run again).
        if final or tracker.finished >= self._fallback_after:
            blocked = tracker.take_blocked()
        else:
            now = time.monotonic()
            if now - self._waiting_since < SLOW_HEAD_ACK_AFTER:
                return
            blocked = tracker.take_still_waiting(self._waiting)
            self._waiting = tracker.snapshot()
            self._waiting_since = now
        for tag in blocked:
            await written(underlay, underlay.basic_ack(tag, wait=False))

    async def _flush_periodically(self, due: asyncio.Event) -> None:
        """Flush `ack_flush_interval` after the first unflushed ack, so a quiet queue is not left unacked."""
        while True:
            await due.wait()
            await asyncio.sleep(self.ack_flush_interval)
            due.clear()
            await self._flush()
            if self._tracker.finished:
                due.set()  # stuck behind an unfinished head: look again next interval

    async def ack(self, message: Message) -> None:
        """Acknowledge a delivery (coalesced; dropped with a log line if its channel died)."""
        tag = message.delivery_tag
        tracker = self._tracker
        if (
            self._coalesce
            and message.reply_to is None  # a request's ack leaves before its reply: see `_settle`
            and tag is not None
            and message.consumer_tag in self._live_tags
            and self._underlay is not None
            and tracker.is_open(tag)
        ):  # the common case, without `_settle`'s extra coroutine
            if self._note_ack(tag):
                await self._flush()
            return
        await self._settle(message, ack=True)

    async def reject(self, message: Message, *, requeue: bool = False) -> None:
        """Reject a delivery with `basic.reject` (quorum queues count it), requeued or dead-lettered."""
        await self._settle(message, ack=False, requeue=requeue)
