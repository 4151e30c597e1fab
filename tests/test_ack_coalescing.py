"""Ack coalescing: the tag tracker's rules, and the frames the AMQP provider writes (no broker needed)."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from swarrow import ConfigurationError, Message
from swarrow.amqp import AmqpMessageProvider
from swarrow.amqp.acks import AckTracker
from swarrow.amqp.fastpath import let_reader_run_ahead

URL = "amqp://guest:guest@127.0.0.1:1/"  # never connected to: these tests drive the provider by hand


# -- the tracker ------------------------------------------------------------------------------------


def _tracker(*tags: int) -> AckTracker:
    tracker = AckTracker()
    for tag in tags:
        tracker.delivered(tag)
    return tracker


def test_in_order_finishes_are_covered_by_the_highest_tag() -> None:
    tracker = _tracker(1, 2, 3)
    for tag in (1, 2, 3):
        tracker.finish(tag)
    assert tracker.take_prefix() == 3
    assert tracker.outstanding == 0
    assert tracker.take_prefix() is None


def test_never_acks_past_an_unfinished_tag() -> None:
    tracker = _tracker(1, 2, 3, 4, 5)
    tracker.finish(2)
    tracker.finish(3)
    assert tracker.take_prefix() is None  # 1 is in flight: a multiple ack on 3 would ack it too
    tracker.finish(1)
    tracker.finish(5)
    assert tracker.take_prefix() == 3
    assert tracker.take_prefix() is None  # 4 still open, 5 waits
    tracker.finish(4)
    assert tracker.take_prefix() == 5


def test_buffered_deliveries_behind_finished_ones_stay_unacked() -> None:
    tracker = _tracker(*range(1, 11))  # 10 delivered, only the first 3 processed
    for tag in (1, 2, 3):
        tracker.finish(tag)
    assert tracker.take_prefix() == 3
    assert tracker.outstanding == 7


def test_a_rejected_tag_in_the_middle_is_skipped_and_never_named() -> None:
    tracker = _tracker(1, 2, 3, 4)
    tracker.finish(1)
    tracker.settle_single(2)
    tracker.finish(3)
    assert tracker.take_prefix() == 3
    tracker.settle_single(4)
    assert tracker.take_prefix() is None  # only single-settled tags: nothing for a multiple ack
    assert tracker.outstanding == 0


def test_the_multiple_ack_names_a_finished_tag_not_a_rejected_one() -> None:
    tracker = _tracker(1, 2, 3)
    tracker.finish(1)
    tracker.settle_single(2)
    tracker.settle_single(3)
    assert tracker.take_prefix() == 1


def test_double_settlement_is_detected() -> None:
    tracker = _tracker(5, 6, 7)
    assert tracker.is_open(6)
    tracker.finish(6)
    assert not tracker.is_open(6)
    tracker.settle_single(7)
    assert not tracker.is_open(7)
    assert not tracker.is_open(4)  # before the first delivery
    assert not tracker.is_open(8)  # never delivered
    tracker.finish(5)
    assert tracker.take_prefix() == 6
    assert not tracker.is_open(5)  # already covered by a written ack


def test_blocked_finished_tags_are_taken_for_single_acks() -> None:
    tracker = _tracker(1, 2, 3, 4)
    for tag in (2, 3, 4):
        tracker.finish(tag)
    assert tracker.take_prefix() is None
    assert tracker.take_blocked() == [2, 3, 4]
    assert tracker.finished == 0
    tracker.finish(1)
    assert tracker.take_prefix() == 1  # 2..4 were settled singly: not named, just dropped
    assert tracker.outstanding == 0


# -- the provider's frames --------------------------------------------------------------------------


class FakeClosing:
    """Stands for aiormq's `channel.closing` future: callbacks run when the channel dies."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def add_done_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def fire(self) -> None:
        for callback in self.callbacks:
            callback(self)


class FakeChannel:
    """Records settlement frames in the order they would reach the wire."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []
        self.is_closed = False
        self.closing = FakeClosing()
        self.on_consumer_cancel_callbacks: set[Any] = set()
        self.consumers: dict[str, Any] = {}

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.frames.append(("ack", tag, multiple))

    async def basic_reject(self, tag: int, *, requeue: bool = True, wait: bool = True) -> None:
        self.frames.append(("reject", tag, requeue))

    async def basic_consume(
        self, queue: str, callback: Any, *, consumer_tag: str, timeout: float | None = None
    ) -> None:
        self.consumers[consumer_tag] = callback

    async def basic_cancel(self, tag: str, *, timeout: float | None = None) -> None:
        self.consumers.pop(tag, None)


class FakeRobustChannel:
    def __init__(self, underlay: FakeChannel) -> None:
        self.underlay = underlay

    async def get_underlay_channel(self) -> FakeChannel:
        return self.underlay

    async def close(self) -> None:
        self.underlay.is_closed = True

    @property
    def is_closed(self) -> bool:
        return self.underlay.is_closed


async def _provider(prefetch: int = 100, **options: Any) -> tuple[AmqpMessageProvider, FakeChannel]:
    provider = AmqpMessageProvider(URL, "q", prefetch=prefetch, **options)
    channel = FakeChannel()
    provider._channel = FakeRobustChannel(channel)  # type: ignore[assignment]
    provider._wanted = True
    await provider._consume()
    return provider, channel


def _deliver(
    provider: AmqpMessageProvider, channel: FakeChannel, count: int, first: int = 1
) -> list[Message]:
    assert provider._consumer_tag is not None
    for tag in range(first, first + count):
        deliver = Basic.Deliver(provider._consumer_tag, tag, False, "", "q")
        header = ContentHeader(0, 1, Basic.Properties(message_id=f"m{tag}"))
        provider._take(deliver, header.properties, b"x", channel)  # type: ignore[arg-type]
    messages = []
    while (message := provider.receive_nowait()) is not None:
        messages.append(message)
    return messages


def test_default_batch_is_min_of_100_and_half_the_prefetch() -> None:
    assert AmqpMessageProvider(URL, "q", prefetch=1000).ack_batch_size == 100
    assert AmqpMessageProvider(URL, "q", prefetch=10).ack_batch_size == 5
    assert AmqpMessageProvider(URL, "q", prefetch=1).ack_batch_size == 1


@pytest.mark.parametrize(("option", "value"), [("ack_batch_size", 0), ("ack_flush_interval", 0)])
def test_rejects_bad_settings(option: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=option):
        AmqpMessageProvider(URL, "q", **{option: value})


@pytest.mark.anyio
async def test_acks_are_coalesced_every_batch_and_flushed_on_stop() -> None:
    provider, channel = await _provider(ack_batch_size=3)
    for message in _deliver(provider, channel, 7):
        await provider.ack(message)
    assert channel.frames == [("ack", 3, True), ("ack", 6, True)]
    await provider.stop_consuming()
    assert channel.frames[-1] == ("ack", 7, True)


@pytest.mark.anyio
async def test_out_of_order_acks_wait_for_the_head() -> None:
    provider, channel = await _provider(ack_batch_size=2)
    m1, m2, m3, m4 = _deliver(provider, channel, 4)
    await provider.ack(m3)
    await provider.ack(m2)  # batch reached, but 1 is unfinished
    assert channel.frames == []
    await provider.ack(m1)
    await provider.ack(m4)
    assert channel.frames == [("ack", 4, True)]


@pytest.mark.anyio
async def test_a_reject_flushes_the_finished_prefix_first_and_is_never_covered() -> None:
    provider, channel = await _provider(ack_batch_size=10)
    m1, m2, m3, m4 = _deliver(provider, channel, 4)
    await provider.ack(m1)
    await provider.reject(m2, requeue=True)
    assert channel.frames == [("ack", 1, True), ("reject", 2, True)]
    await provider.ack(m4)
    await provider.ack(m3)
    await provider.stop_consuming()
    assert channel.frames[2:] == [("ack", 4, True)]


@pytest.mark.anyio
async def test_a_reject_ahead_of_an_unfinished_head_keeps_the_ack_below_it() -> None:
    provider, channel = await _provider(ack_batch_size=10)
    m1, m2, m3 = _deliver(provider, channel, 3)
    await provider.ack(m2)
    await provider.reject(m3)
    await provider.ack(m1)
    await provider.stop_consuming()
    assert channel.frames == [("reject", 3, False), ("ack", 2, True)]


@pytest.mark.anyio
async def test_a_slow_head_does_not_hold_back_the_prefetch_window() -> None:
    provider, channel = await _provider(prefetch=10)  # batch 5, single acks past 5 blocked
    m1, *rest = _deliver(provider, channel, 10)
    for message in rest[:5]:
        await provider.ack(message)
    assert channel.frames == [("ack", tag, False) for tag in range(2, 7)]
    await provider.ack(m1)
    await provider.stop_consuming()
    assert channel.frames[-1] == ("ack", 1, True)
    assert provider._tracker.outstanding == 4  # 7..10 buffered, untouched


@pytest.mark.anyio
async def test_a_second_settlement_of_the_same_delivery_is_ignored() -> None:
    provider, channel = await _provider(ack_batch_size=10)
    (m1,) = _deliver(provider, channel, 1)
    await provider.ack(m1)
    await provider.ack(m1)
    await provider.reject(m1)
    await provider.stop_consuming()
    assert channel.frames == [("ack", 1, True)]


@pytest.mark.anyio
async def test_batch_size_one_acks_each_message_on_its_own() -> None:
    provider, channel = await _provider(ack_batch_size=1)
    for message in _deliver(provider, channel, 3):
        await provider.ack(message)
    assert channel.frames == [("ack", 1, False), ("ack", 2, False), ("ack", 3, False)]


@pytest.mark.anyio
async def test_the_timer_flushes_a_quiet_queue() -> None:
    provider, channel = await _provider(ack_batch_size=100, ack_flush_interval=0.01)
    provider._start_flusher()
    try:
        m1, _m2 = _deliver(provider, channel, 2)
        await provider.ack(m1)
        with anyio.fail_after(2):
            while not channel.frames:
                await anyio.sleep(0.005)
        assert channel.frames == [("ack", 1, True)]
    finally:
        await provider.close()


@pytest.mark.anyio
async def test_a_new_channel_resets_the_tracker_and_drops_the_old_channels_acks() -> None:
    provider, old = await _provider(ack_batch_size=2)
    stale = _deliver(provider, old, 3)
    await provider.ack(stale[0])  # unflushed when the channel dies
    new = FakeChannel()
    provider._channel = FakeRobustChannel(new)  # type: ignore[assignment]
    await provider._consume()  # what recovery does after a reconnect
    for message in stale[1:]:
        await provider.ack(message)  # tags 2, 3 mean other deliveries on the new channel
    assert new.frames == [] and old.frames == []
    assert provider.stale_settlements == 3
    fresh = _deliver(provider, new, 2)
    for message in fresh:
        await provider.ack(message)
    assert new.frames == [("ack", 2, True)]


@pytest.mark.anyio
async def test_a_dying_channel_drops_its_buffered_deliveries_at_once() -> None:
    provider, channel = await _provider(ack_batch_size=2)
    assert provider._consumer_tag is not None
    for tag in (1, 2, 3):
        deliver = Basic.Deliver(provider._consumer_tag, tag, False, "", "q")
        header = ContentHeader(0, 1, Basic.Properties(message_id=f"m{tag}"))
        provider._take(deliver, header.properties, b"x", channel)  # type: ignore[arg-type]
    in_flight = provider.receive_nowait()
    assert in_flight is not None
    channel.closing.fire()  # the broker went away: the two still buffered cannot be acked any more
    assert provider.receive_nowait() is None
    await provider.ack(in_flight)
    assert channel.frames == []
    assert provider.stale_settlements == 1


def test_the_consumer_channel_frame_queue_is_unbounded_only_when_it_is_an_asyncio_queue() -> None:
    import asyncio

    class WithQueue:
        frames: asyncio.Queue[Any] = asyncio.Queue(maxsize=10)

    channel = WithQueue()
    assert let_reader_run_ahead(channel)  # type: ignore[arg-type]
    assert channel.frames.maxsize == 0
    for _ in range(50):  # more than aiormq's cap of 10: puts no longer wait for the channel's reader
        channel.frames.put_nowait(object())
    assert not let_reader_run_ahead(object())  # type: ignore[arg-type]  # another aiormq: left alone


@pytest.mark.anyio
async def test_a_delivery_read_after_its_channel_closed_is_not_buffered() -> None:
    provider, channel = await _provider()
    assert provider._consumer_tag is not None
    deliver = Basic.Deliver("swarrow.q.from-a-dead-channel", 1, False, "", "q")
    provider._take(deliver, Basic.Properties(message_id="late"), b"x", channel)  # type: ignore[arg-type]
    assert provider.receive_nowait() is None  # the broker redelivers it: processing it would duplicate it
    assert [m.message_id for m in _deliver(provider, channel, 1)] == ["m1"]


def test_only_tags_still_waiting_since_the_last_look_are_taken_for_single_acks() -> None:
    tracker = AckTracker()
    for tag in range(1, 7):
        tracker.delivered(tag)
    tracker.finish(3)
    tracker.finish(4)
    assert tracker.take_prefix() is None  # 1 and 2 still run
    earlier = tracker.snapshot()
    tracker.finish(5)  # finished after the look: not stale yet
    assert tracker.take_still_waiting(earlier) == [3, 4]
    assert tracker.finished == 1 and not tracker.is_open(3) and tracker.is_open(6)
    tracker.finish(1)
    tracker.finish(2)
    # 3 and 4 were settled singly: the multiple ack names 5, the highest finished tag before 6.
    assert tracker.take_prefix() == 5
    assert tracker.finished == 0 and tracker.outstanding == 1


class DeadConnectionChannel(FakeChannel):
    """aiormq's shape where it matters here: frames go into the connection's bounded write queue,
    and `closing` is a real future. Nobody drains the queue: the connection is gone."""

    def __init__(self) -> None:
        super().__init__()
        self.write_queue: asyncio.Queue[tuple[str, int, bool]] = asyncio.Queue(maxsize=1)
        self.write_queue.put_nowait(("earlier frame", 0, False))  # full
        self.closing = asyncio.get_running_loop().create_future()  # type: ignore[assignment]

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        await self.write_queue.put(("ack", tag, multiple))

    async def basic_reject(self, tag: int, *, requeue: bool = True, wait: bool = True) -> None:
        await self.write_queue.put(("reject", tag, requeue))


async def _consuming_on_a_dead_connection(
    count: int,
) -> tuple[AmqpMessageProvider, DeadConnectionChannel, list[Message]]:
    """A provider consuming on a `DeadConnectionChannel`, `count` deliveries taken."""
    provider = AmqpMessageProvider(URL, "q", prefetch=100, ack_batch_size=100)
    channel = DeadConnectionChannel()
    provider._channel = FakeRobustChannel(channel)  # type: ignore[assignment]
    provider._wanted = True
    await provider._consume()
    return provider, channel, _deliver(provider, channel, count)  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize("settlement", ["rejected", "flushed"])
async def test_a_write_into_a_dead_connections_queue_gives_up_when_the_channel_closes(
    settlement: str,
) -> None:
    # The settle lock was held forever by a write waiting for room in a queue nobody drains any more,
    # and every later settlement waited behind it (attack, session 9: 4 of 9 forced-close runs, there
    # with rejects of undecodable deliveries written from tasks, a path since removed).
    provider, channel, messages = await _consuming_on_a_dead_connection(3)
    if settlement == "rejected":
        asyncio.get_running_loop().create_task(provider.reject(messages[0]))
    else:
        await provider.ack(messages[0])
        asyncio.get_running_loop().create_task(provider._flush())
    await asyncio.sleep(0.01)
    assert provider._settle_lock.locked()  # the write waits for room that never comes
    channel.closing.set_result(None)  # type: ignore[attr-defined]  # the connection's loss reaches the channel
    with anyio.fail_after(2):
        while provider._settle_lock.locked():
            await asyncio.sleep(0.01)
    await provider.close()


@pytest.mark.anyio
async def test_a_settlement_cancelled_while_its_write_waits_leaves_no_write_pending() -> None:
    provider, _, messages = await _consuming_on_a_dead_connection(1)
    before = asyncio.all_tasks()
    rejecting = asyncio.get_running_loop().create_task(provider.reject(messages[0]))
    await asyncio.sleep(0.01)
    assert provider._settle_lock.locked()
    rejecting.cancel()
    with anyio.fail_after(2):
        while len(asyncio.all_tasks() - before) > 0:
            await asyncio.sleep(0.01)  # the inner write task goes with it
    assert not provider._settle_lock.locked()
