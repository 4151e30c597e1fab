"""Before consuming: declare or check the queue and its retry queues, and agree on the retry delays.

Checking up front turns "the retry copy was unroutable", minutes into a run, into an error at start
naming the missing queue and the command that creates it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from swarrow.broker import Broker, QueueInfo
from swarrow.errors import ConfigurationError
from swarrow.swarrot import RetryTopologyName, SwarrotTopology, swarrot_retry_queue_name
from swarrow.topology import DeadLetterStrategy, RetryTopology, dead_letter_queue_name, retry_queue_name
from swarrow.units import MAX_DELAYS, format_duration

__all__ = [
    "describe_queues",
    "existing_retry_delays",
    "prepare_queues",
    "resolve_delays_of_queues",
    "resolve_retry_delays",
    "warn_without_retries",
]

logger = logging.getLogger(__name__)


async def prepare_queues(
    broker: Broker,
    queue: str,
    *,
    declare: bool = False,
    retry: bool = True,
    delays: Sequence[float] = (),
    quorum: bool = False,
    retry_topology: RetryTopologyName = "swarrow",
    dead_letter_strategy: DeadLetterStrategy = "at-most-once",
) -> list[QueueInfo]:
    """Declare the queue (and its retry topology), or check it exists, failing with what to run.

    Checking up front turns "the retry copy was unroutable" on the first failure, minutes into a
    run, into an error at start naming the missing queue and the command that creates it.
    Returns what was declared or found, in topology order.
    """
    swarrot = retry_topology == "swarrot"
    if declare:
        if retry and delays and swarrot:
            return await SwarrotTopology(queue, delays, quorum=quorum).declare(broker)
        if retry and delays:
            topology = RetryTopology(queue, delays, quorum=quorum, dead_letter_strategy=dead_letter_strategy)
            return await topology.declare(broker)
        return [await broker.declare_queue(queue, arguments={"x-queue-type": "quorum"} if quorum else None)]
    hint = "pass --declare (declare=True)"
    if broker.url.startswith("memory://"):
        hint += "; the in-memory broker starts empty in every process"
    found = await broker.inspect_queue(queue)
    if found is None:
        raise ConfigurationError(
            f"queue {queue!r} does not exist on {broker.url}: create it with "
            f"`swarrow declare --queue {queue}`, or {hint}"
        )
    infos = [found]
    if retry and delays:
        if swarrot:
            names = [name for name, _ in SwarrotTopology(queue, delays).queues() if name != queue]
        else:
            names = [retry_queue_name(queue, k) for k in range(1, len(delays) + 1)]
            names.append(dead_letter_queue_name(queue))
        inspected = {name: await broker.inspect_queue(name) for name in names}
        missing = [name for name, info in inspected.items() if info is None]
        if missing:
            spelled = ",".join(format_duration(d) for d in delays)
            raise ConfigurationError(
                f"retry queue(s) {', '.join(repr(m) for m in missing)} missing on {broker.url}: create them "
                f"with `swarrow declare --queue {queue} --retry-delays {spelled}"
                f"{' --retry-topology swarrot' if swarrot else ''}`, or {hint}, "
                "or turn retries off (--no-retry)"
                + (
                    f"; if {queue}'s delays changed, delete its old {queue}_retry_* queues first: one left"
                    " over stays bound to the same retry key and a retried message would be delivered twice"
                    if swarrot and len(missing) < len(names)
                    else ""
                )
            )
        if swarrot:
            await _check_swarrot_ttls(broker, queue, delays)
        infos.extend(info for info in inspected.values() if info is not None)
    return infos


async def _check_swarrot_ttls(broker: Broker, queue: str, delays: Sequence[float]) -> None:
    """Each `Q_retry_{d}` holds copies for d: a hand-made one with another TTL would retry early or late."""
    ttl_of = getattr(broker, "message_ttl", None)
    if ttl_of is None:
        return
    for delay in dict.fromkeys(delays):
        name = swarrot_retry_queue_name(queue, delay)
        ttl = await ttl_of(name)
        if ttl is not None and round(ttl * 1000) != round(delay * 1000):
            raise ConfigurationError(
                f"retry queue {name!r} on {broker.url} has x-message-ttl {round(ttl * 1000)} ms, not "
                f"{round(delay * 1000)} ms as its name and --retry-delays say: its copies would come back "
                f"after {format_duration(ttl)}; delete it (once empty) and declare it again"
            )


async def warn_without_retries(broker: Broker, queue: str) -> None:
    """Say what becomes of a failed message when retries are off: dead-lettered, or dropped."""
    has_dlx = getattr(broker, "has_dead_letter_exchange", None)
    dlx = None if has_dlx is None else await has_dlx(queue)
    if dlx is True:
        logger.info(
            "retries are off: a failed message is rejected to %s's dead-letter exchange",
            queue,
            extra={"queue": queue},
        )
    elif dlx is False:
        logger.warning(
            "retries are off and %s has no dead-letter exchange: a failed message is rejected and DROPPED "
            "by RabbitMQ (unless a policy gives %s one); keep retries on, or give it a dead-letter exchange",
            queue,
            queue,
            extra={"queue": queue},
        )
    else:
        logger.warning(
            "retries are off: a failed message is rejected without requeue; RabbitMQ dead-letters it "
            "if %s has a dead-letter exchange, and drops it otherwise",
            queue,
            extra={"queue": queue},
        )


async def existing_retry_delays(broker: Broker, queue: str) -> tuple[float, ...] | None:
    """The delays of the retry queues `queue` already has (`Q.retry.1`, `Q.retry.2` … and their TTLs).

    None when there are none, or when the broker cannot tell a TTL.
    """
    ttl_of = getattr(broker, "message_ttl", None)  # both brokers have it; a hand-made one may not
    if ttl_of is None:
        return None
    delays: list[float] = []
    for attempt in range(1, MAX_DELAYS + 1):
        name = retry_queue_name(queue, attempt)
        if await broker.inspect_queue(name) is None:
            break
        ttl = await ttl_of(name)
        if ttl is None:
            return None
        delays.append(ttl)
    return tuple(delays) or None


async def resolve_retry_delays(
    broker: Broker, queue: str, delays: Sequence[float], *, explicit: bool
) -> tuple[float, ...]:
    """The retry delays to run with, agreeing with the retry queues that already exist.

    Not given (`explicit=False`): the existing queues' delays when there are some (logged), so
    `consume` never needs the delays repeated. Given: they must match the existing queues, else a
    `ConfigurationError` naming the delays that do (RabbitMQ would refuse to redeclare them anyway).
    """
    found = await existing_retry_delays(broker, queue)
    if found is None:
        return tuple(delays)
    spelled = ",".join(format_duration(d) for d in found)
    if not explicit:
        if tuple(found) != tuple(delays):
            logger.info(
                "using the existing retry queues %s.retry.1..%d (delays %s)",
                queue,
                len(found),
                spelled,
                extra={"queue": queue},
            )
        return found
    # Fewer retries than there are queues is fine (the rest stay unused); other delays are not.
    if [round(d * 1000) for d in found[: len(delays)]] != [round(d * 1000) for d in delays]:
        asked = ",".join(format_duration(d) for d in delays)
        raise ConfigurationError(
            f"retry queues {queue}.retry.1..{len(found)} exist on {broker.url} with delays {spelled}, "
            f"not {asked}: consume with --retry-delays {spelled} (or give no delays to use them), "
            "or delete the retry queues and declare them again"
        )
    return tuple(delays)


def describe_queues(infos: Sequence[QueueInfo]) -> str:
    """One line for a start-up log: `created a, b; found c (12 messages)`."""
    created = [info.name for info in infos if info.created]
    found = [f"{info.name} ({info.message_count} message{'' if info.message_count == 1 else 's'})"
             for info in infos if not info.created]  # fmt: skip
    parts = [f"created {', '.join(created)}"] if created else []
    if found:
        parts.append(f"found {', '.join(found)}")
    return "; ".join(parts)


async def resolve_delays_of_queues(
    broker: Broker, queues: Sequence[str], delays: Sequence[float], *, explicit: bool
) -> tuple[float, ...]:
    """`resolve_retry_delays` for each queue; several queues share one retry layer, so they must agree."""
    chosen: tuple[float, ...] | None = None
    first = queues[0]
    for queue in queues:
        found = await resolve_retry_delays(broker, queue, delays, explicit=explicit)
        if chosen is None:
            chosen = found
        elif found != chosen:
            raise ConfigurationError(
                f"queues {first!r} and {queue!r} have retry queues with different delays "
                f"({_spell(chosen)} and {_spell(found)}): one worker retries them alike — declare them with "
                "the same --retry-delays, or run one worker per queue"
            )
    if chosen is None:
        raise RuntimeError("internal state: no queue was given")
    return chosen


def _spell(delays: Sequence[float]) -> str:
    return ",".join(format_duration(d) for d in delays)
