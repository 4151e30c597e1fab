"""Scenario 5: the retry copy cannot be published, or the connection drops between republish and ack.

dramatiq PR #545: a failed delay publish still acked the original, so it was lost; taskiq PR #371:
failed tasks acked. Here the original is only acked once its copy is confirmed; when the copy is
refused (the retry queue is missing and the publish is mandatory) the original is held unacked and
only the copy is published again, with backoff, until the queue exists; when the connection dies
after the copy but before the ack, the broker redelivers the original: a counted duplicate, never a
loss.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import pytest
from callbacks import AsyncCallback, Recorder

from processors import AckProcessor, RetryProcessor, default_stack
from swarrow import Consumer, Layer, Message, MessageProvider, Processor, Stack
from swarrow.outcome import RETRIED, get_outcome
from swarrow.topology import RETRY_ATTEMPT_HEADER

if TYPE_CHECKING:
    from conftest import Chaos

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.anyio]

DELAYS = (0.1,)
PREFETCH = 20


def fails_first_time(recorder: Recorder, calls: Counter[str]) -> AsyncCallback:
    """The original delivery fails; its retry copy (it carries the attempt header) succeeds."""

    async def callback(message: Message) -> None:
        message_id = message.message_id or ""
        calls[message_id] += 1
        if RETRY_ATTEMPT_HEADER not in message.headers:
            recorder.mark_started(message_id)
            raise RuntimeError(f"first delivery of {message_id} fails")
        await recorder(message)

    return callback


@pytest.mark.timeout(60)
async def test_originals_are_held_not_lost_nor_rerun_while_the_retry_queue_is_missing(chaos: Chaos) -> None:
    await chaos.declare(chaos.queue)
    await chaos.declare(chaos.dead)  # but no Q.retry.1: every retry copy comes back unroutable
    published = chaos.ids("no-retry-queue", 20)
    await chaos.publish(published)
    broker = chaos.broker()
    recorder, calls = Recorder(), Counter[str]()
    provider = broker.provider(chaos.queue, prefetch=50)
    layers = default_stack(provider=provider, publisher=broker.publisher(), signals=False, log=False,
                           retry_attempts=len(DELAYS), retry_delays=DELAYS)  # fmt: skip
    at = next(i for i, layer in enumerate(layers) if getattr(layer, "factory", None) is RetryProcessor)
    built: list[RetryProcessor] = []

    def retry_layer(inner: Processor) -> Processor:
        layer = layers[at]
        assert isinstance(layer, Layer)
        built.append(layer.wrap(inner))
        return built[-1]

    stack = Stack(*layers[:at], retry_layer, *layers[at + 1 :], callback=fails_first_time(recorder, calls))
    consumer = Consumer(provider, stack, concurrency=4)

    async def fix_the_topology_later() -> None:
        # Each of the 4 slots holds an original whose copy is refused: it is not requeued and rerun.
        await chaos.wait_until(
            lambda: built[0].republish.held == 4 and built[0].republish.failures >= 8,
            timeout=20,
            what="four originals held while their retry copies are refused",
        )
        assert sum(calls.values()) == 4 and not recorder.done
        await chaos.declare_topology(DELAYS)

    reason = await chaos.run_until(
        consumer,
        lambda: len(recorder.done) == len(published),
        timeout=40,
        what="every message processed once the retry queue exists",
        during=fix_the_topology_later,
    )
    assert reason.code == "test"
    row, _ = await chaos.settle("5a. retry queue missing (mandatory publish)", published, recorder.processed)
    assert row.processed == len(published) and row.dead == 0 and row.duplicates == 0
    assert set(calls.values()) == {2}  # the failing first call and the retry, nothing in between


class DropConnectionAfterRepublish:
    """Test layer between ack and retry: once a retry copy is confirmed, the broker drops our connection."""

    def __init__(self, inner: Processor, /, *, chaos: Chaos, provider: MessageProvider, drops: int) -> None:
        self.inner = inner
        self.chaos = chaos
        self.provider = provider
        self.drops_left = drops
        self.dropped: list[str] = []

    async def __call__(self, message: Message, /) -> bool:
        keep_going = await self.inner(message)
        if get_outcome() == RETRIED and self.drops_left > 0:
            self.drops_left -= 1
            self.dropped.append(message.message_id or "")
            closed = await anyio.to_thread.run_sync(self.chaos.close_connection)
            assert closed >= 1, "no swarrow connection found to drop"
            await self.chaos.wait_until(
                lambda: not self.provider.is_consuming, timeout=10, what="the client to see the drop"
            )
        return keep_going  # the outer ack now meets a dead channel


@pytest.mark.timeout(60)
async def test_connection_drop_between_republish_and_ack_redelivers_the_original(chaos: Chaos) -> None:
    await chaos.declare_topology(DELAYS)
    published = chaos.ids("drop-before-ack", 10)
    await chaos.publish(published)
    broker = chaos.broker()
    recorder, calls = Recorder(), Counter[str]()
    provider = broker.provider(chaos.queue, prefetch=PREFETCH)
    layers = default_stack(provider=provider, publisher=broker.publisher(), signals=False, log=False,
                           retry_attempts=len(DELAYS), retry_delays=DELAYS)  # fmt: skip
    ack = next(i for i, layer in enumerate(layers) if getattr(layer, "factory", None) is AckProcessor)
    dropper: list[DropConnectionAfterRepublish] = []

    def drop_layer(inner: Processor) -> Processor:
        dropper.append(DropConnectionAfterRepublish(inner, chaos=chaos, provider=provider, drops=3))
        return dropper[-1]

    stack = Stack(
        *layers[: ack + 1], drop_layer, *layers[ack + 1 :], callback=fails_first_time(recorder, calls)
    )
    consumer = Consumer(provider, stack, concurrency=1)
    reason = await chaos.run_until(
        consumer,
        lambda: set(recorder.done) >= set(published) and dropper[0].drops_left == 0 and provider.is_consuming,
        timeout=45,
        what="every message processed after three connection drops",
    )
    # The redelivered originals fail again and send a second copy: let those be processed too.
    assert reason.code == "test"
    row, _ = await chaos.settle(
        "5b. connection dropped between republish and ack", published, recorder.processed
    )
    assert row.processed == len(published) and row.dead == 0
    assert len(dropper[0].dropped) == 3
    # Each dropped original comes back (at least 3 duplicates). Acks are coalesced, so work finished
    # just before a drop may have its ack lost too: never more than the unacked deliveries (prefetch).
    assert 3 <= row.duplicates <= 3 * PREFETCH, row
