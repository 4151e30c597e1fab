"""Readiness that notices a consumer the broker has stopped feeding: ready messages, none delivered.

A quorum queue without a majority of its nodes cannot deliver, yet a consumer registered on a node
that survived stays registered: the channel is open, the consumer tag live, and `is_consuming`
would say True while nothing arrives. No AMQP call asks a quorum queue whether it has a leader
without side effects (a passive declare answers from the local replica), so this watches the
symptom instead: when a whole interval passed with no delivery, nothing buffered and the prefetch
window not full, a passive declare says whether messages are ready; if they are, the provider is
stalled and reports not ready until the next delivery. It costs one declare per idle interval and
nothing per message beyond the delivery count the provider keeps anyway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from swarrow.amqp.provider import AmqpMessageProvider

__all__ = ["watch_for_stall"]

logger = logging.getLogger(__name__)


async def watch_for_stall(provider: AmqpMessageProvider, interval: float) -> None:
    """Keep `provider.stalled` true while its queue holds ready messages none reach it (until cancelled)."""
    seen = -1
    while True:
        await asyncio.sleep(interval)
        delivered = provider.delivered
        idle = (
            delivered == seen
            and provider.consumer_registered
            and not provider.buffered
            and provider.unsettled < provider.prefetch
        )
        seen = delivered
        if not idle:
            _mark(provider, False, 0)
            continue
        try:
            info = await asyncio.wait_for(provider.broker.inspect_queue(provider.queue_name), interval)
        except Exception as exc:  # an unresponsive broker: the connection's own state tells the rest
            logger.debug("stall check of %s failed: %r", provider.queue_name, exc)
            continue
        if provider.delivered == seen:  # nothing arrived while we asked
            _mark(provider, info is not None and info.message_count > 0, info.message_count if info else 0)


def _mark(provider: AmqpMessageProvider, stalled: bool, ready: int) -> None:
    if stalled == provider.stalled:
        return
    provider.stalled = stalled
    if stalled:
        logger.warning(
            "%s has %d ready message(s) but none reached this consumer for %.0f s: not ready "
            "(a quorum queue without a majority of its nodes?)",
            provider.queue_name,
            ready,
            provider.stall_check_interval,
            extra={"queue": provider.queue_name},
        )
    else:
        logger.warning(
            "deliveries from %s flow again: ready", provider.queue_name, extra={"queue": provider.queue_name}
        )
