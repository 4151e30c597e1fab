"""Publish a retry or dead-letter copy, holding the original while the broker refuses the copy.

A refused copy (unroutable, nacked, a full `reject-publish` queue, a dead channel) used to requeue
the original at once: the callback ran again thousands of times a second, and each requeue counted
toward a quorum queue's `x-delivery-limit`, which then dropped the message. Now the original stays
unsettled in its slot and only the copy is published again, with backoff, until it is confirmed
(the original is then acked as usual), the hold runs out (the original is requeued) or the consumer
stops (the original is left unsettled: the broker redelivers it once).
"""

from __future__ import annotations

import logging
import math
import time

import anyio
from prometheus_client import Counter

from swarrow.backoff import Backoff
from swarrow.control import current_control
from swarrow.errors import InvalidMessageError, SwarrowError
from swarrow.message import Message
from swarrow.publisher import Publisher
from swarrow.topology import DROPPED_HEADERS_HEADER, fit_copy

__all__ = [
    "RepublishFailed",
    "RepublishInterrupted",
    "RepublishState",
    "add_refusals",
    "held_reason",
    "publish_copy",
    "republish_states",
]

logger = logging.getLogger(__name__)


class RepublishFailed(SwarrowError):
    """Raised when a retry or dead-letter copy was not confirmed in time; `requeue` makes ack requeue."""

    requeue = True


class RepublishInterrupted(SwarrowError):
    """Raised when the consumer stops while a copy is held: ack leaves the original unsettled."""

    leave_unsettled = True


class RepublishState:
    """One layer's refused copies: a running count (metrics) and the originals held right now (readiness)."""

    __slots__ = ("failures", "first_backoff", "held", "last_error", "max_backoff")

    def __init__(self, *, first_backoff: float = 0.2, max_backoff: float = 5.0) -> None:
        self.failures = 0
        self.held = 0
        self.last_error = ""
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff


async def publish_copy(
    publisher: Publisher,
    original: Message,
    copy: Message,
    queue: str,
    *,
    state: RepublishState,
    hold: float | None,
    exchange: str = "",
) -> None:
    """Publish `copy` to `queue` until confirmed; `RepublishFailed` after `hold` seconds (None: never).

    `queue` is the routing key; `exchange` "" (the default exchange) routes it straight to that queue.
    """
    try:
        await publisher.publish(copy, queue, exchange)
        return
    except InvalidMessageError as exc:  # no retry can cure it: a copy that fits, if one can
        error: Exception = exc
        fitted = fit_copy(copy)
        if fitted is not None:
            logger.warning("copy of message %s to %s cut to fit one frame (%s): error message shortened, "
                           "headers left out: %s", original.message_id, queue, exc,
                           fitted.headers.get(DROPPED_HEADERS_HEADER) or "none",
                           extra={"queue": original.queue, "message_id": original.message_id})  # fmt: skip
            copy = fitted
            try:
                await publisher.publish(copy, queue, exchange)
                return
            except Exception as again:
                error = again
    except Exception as exc:
        error = exc
    deadline = math.inf if hold is None else time.monotonic() + hold
    backoff = Backoff(initial=min(state.first_backoff, state.max_backoff), maximum=state.max_backoff)
    failures = 0
    state.held += 1
    extra = {"queue": original.queue, "message_id": original.message_id}
    try:
        while True:
            failures += 1
            delay = backoff.delay(failures)
            state.failures += 1
            state.last_error = f"copy to {queue!r} refused: {error}"
            if time.monotonic() + delay > deadline:
                logger.warning("copy of message %s to %s not confirmed (%s); requeueing the original",
                               original.message_id, queue, error, extra=extra)  # fmt: skip
                raise RepublishFailed(
                    f"copy of {original.message_id!r} to {queue!r} not confirmed: {error}"
                ) from error
            logger.warning("copy of message %s to %s not confirmed (%s); the original is held unacked, "
                           "publishing the copy again in %.1f s (failure %d)",
                           original.message_id, queue, error, delay, failures, extra=extra)  # fmt: skip
            if await _stopped_within(delay):
                logger.warning("copy of message %s to %s still not confirmed as the consumer stops; the "
                               "original is left unacked: the broker redelivers it", original.message_id,
                               queue, extra=extra)  # fmt: skip
                raise RepublishInterrupted(
                    f"copy of {original.message_id!r} to {queue!r} not confirmed before the stop: {error}"
                ) from error
            try:
                await publisher.publish(copy, queue, exchange)
            except Exception as exc:
                error = exc
                continue
            logger.warning("copy of message %s to %s confirmed after %d refusal(s)",
                           original.message_id, queue, failures, extra=extra)  # fmt: skip
            return
    finally:
        state.held -= 1


async def _stopped_within(delay: float) -> bool:
    """Wait `delay` seconds, or less if the consumer is asked to stop; True if it was.

    A held copy must not keep a stop waiting for the whole grace period: the original is better
    left unsettled (the broker redelivers it once) than held until the grace period cancels it.
    """
    control = current_control()
    if control is None:
        await anyio.sleep(delay)
        return False
    with anyio.move_on_after(delay):
        await control.wait_stop_requested()
    return control.is_stopping()


def republish_states(processor: object) -> list[RepublishState]:
    """The refused-copy state of every retry-like layer inside `processor` (retry, delivery_limit)."""
    states: list[RepublishState] = []
    for _ in range(64):  # a stack is a short chain; the bound guards against cycles
        state = getattr(processor, "republish", None)
        if isinstance(state, RepublishState):
            states.append(state)
        processor = getattr(processor, "inner", None)
        if processor is None:
            break
    return states


def held_reason(states: list[RepublishState]) -> str | None:
    """Why `/readyz` fails while originals are held, or None when none is."""
    held = sum(state.held for state in states)
    if not held:
        return None
    errors = "; ".join(state.last_error for state in states if state.held)
    return f"{held} message(s) held: the broker refuses their retry or dead-letter copy ({errors})"


def add_refusals(counter: Counter, states: list[RepublishState], seen: int) -> int:
    """Add the refusals counted since `seen` to `counter`; return the new total."""
    total = sum(state.failures for state in states)
    if total > seen:
        counter.inc(total - seen)
    return total
