"""One call for the common case: connect, check or declare the queues, build the default stack, consume.

```python
import swarrow

def handle(message: swarrow.Message) -> None: ...

swarrow.run(handle, queue="emails", max_messages=10_000, concurrency=10)
```
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Unpack

import anyio

from swarrow.broker import Broker, QueueInfo, QueueStats
from swarrow.callback import Callback, check_callback, hung_callback_threads
from swarrow.consumer import Consumer
from swarrow.control import StopReason
from swarrow.errors import ConfigurationError
from swarrow.factory import open_broker
from swarrow.provider import MessageProvider
from swarrow.publisher import Publisher
from swarrow.settings import STACK_OPTION_NAMES, Settings, SettingsOptions, resolve_url
from swarrow.stack import LayerLike, Stack
from swarrow.swarrot import RetryTopologyName, SwarrotTopology, swarrot_retry_queue_name
from swarrow.topology import (
    DeadLetterStrategy,
    RetryTopology,
    dead_letter_queue_name,
    exponential_delays,
    retry_queue_name,
)
from swarrow.units import MAX_DELAYS, format_duration
from swarrow.urls import parse_url

__all__ = [
    "Processors",
    "consume",
    "describe_queues",
    "existing_retry_delays",
    "prepare_queues",
    "resolve_retry_delays",
    "resolve_url",
    "retry_delays",
    "run",
    "with_otel_server",
]

logger = logging.getLogger(__name__)

Processors = Sequence[LayerLike] | Callable[[MessageProvider, Publisher], Sequence[LayerLike]]


def retry_delays(attempts: int = 3, delays: Sequence[float] | None = None) -> tuple[float, ...]:
    """The delays the retry layer will use: `delays` as given, else exponential (1, 2, 4 … s)."""
    return tuple(delays) if delays is not None else exponential_delays(attempts)


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


async def _warn_without_retries(broker: Broker, queue: str) -> None:
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


def _logging_configured() -> bool:
    """Whether the application (or a test runner) set up logging: a handler on the root logger."""
    return bool(logging.getLogger().handlers)


def _provider(broker: Broker, settings: Settings) -> MessageProvider:
    providers = [_one_provider(broker, settings, queue) for queue in settings.queue_names]
    if len(providers) == 1:
        return providers[0]
    from swarrow.multi_queue import MultiQueueProvider

    return MultiQueueProvider(providers, settings.queue_weights or None)  # type: ignore[arg-type]


def _one_provider(broker: Broker, settings: Settings, queue: str) -> MessageProvider:
    from swarrow.amqp import AmqpBroker

    if not isinstance(broker, AmqpBroker):
        return broker.provider(queue, prefetch=settings.prefetch)
    return broker.provider(
        queue,
        prefetch=settings.prefetch,
        ack_batch_size=settings.ack_batch_size,
        ack_flush_interval=0.02 if settings.ack_flush_interval is None else settings.ack_flush_interval,
    )


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


def _queue_stats(broker: Broker, settings: Settings) -> QueueStats:
    """What the metrics layer polls for the backlog: one callable, or one per queue."""
    if len(settings.queue_names) == 1:
        return functools.partial(broker.inspect_queue, settings.queue)
    return {queue: functools.partial(broker.inspect_queue, queue) for queue in settings.queue_names}


async def consume(
    callback: Callback,
    settings: Settings | None = None,
    /,
    *,
    processors: Processors | None = None,
    layers: Sequence[LayerLike] = (),
    **options: Unpack[SettingsOptions],
) -> StopReason:
    """Consume until a limit, a signal or the callback stops it; return why (async form of `run`).

    Give a `Settings` (built once, e.g. by the CLI) or its keyword arguments (`queue=...`, see
    `Settings.create`: `url=None` reads `SWARROW_URL`, `metrics_address` may be `"host:port"`, retry
    delays come from `retry_attempts` or `retry_delays`, else from the retry queues that exist).
    `processors`: the layers to use, or `(provider, publisher) -> layers`; None builds
    `processors.default_stack(...)` from the settings, with `layers` (processors of your own)
    innermost. `ack_batch_size` / `ack_flush_interval` tune RabbitMQ ack coalescing (None: the
    provider's defaults; a batch of 1 acks each message alone); the in-memory broker ignores them.
    """
    check_callback(callback)
    if settings is None:
        if processors is not None and (stack := sorted(STACK_OPTION_NAMES & options.keys())):
            raise TypeError(
                f"{stack} configure the default stack: pass them to "
                "processors.default_stack(...) yourself when you give `processors`"
            )
        settings = Settings.create(**options)
    elif options:
        raise TypeError(f"give either settings or keyword options, not both: {sorted(options)}")
    queue = settings.queue
    queues = settings.queue_names
    retry = processors is None and settings.retry
    broker = open_broker(settings.url)
    try:
        await broker.connect()
        if retry:
            delays = await resolve_delays_of_queues(
                broker, queues, settings.retry_delays, explicit=settings.retry_explicit
            )
            settings = dataclasses.replace(settings, retry_delays=delays)
        for name in queues:
            infos = await prepare_queues(
                broker,
                name,
                declare=settings.declare,
                retry=retry,
                delays=settings.retry_delays if retry else (),
                quorum=settings.quorum,
                retry_topology=settings.retry_topology,
                dead_letter_strategy=settings.dead_letter_strategy,
            )
            # What is true now; "consuming" is logged by the consumer once it really consumes.
            logger.info("%s on %s", describe_queues(infos), broker.url, extra={"queue": name})
        provider = _provider(broker, settings)
        publisher = broker.publisher()
        chosen: Sequence[LayerLike]
        if processors is None:
            from processors.defaults import default_stack

            settings = with_otel_server(settings)
            # The queue's backlog, read by the metrics layer: only where metrics are served.
            stats = settings.queue_stats and settings.metrics_address is not None
            chosen = default_stack(
                provider=provider,
                publisher=publisher,
                metrics_address=settings.metrics_address,
                layers=layers,
                queue_stats=_queue_stats(broker, settings) if stats else None,
                **settings.stack_options(),
            )
        elif callable(processors):
            chosen = processors(provider, publisher)
        else:
            chosen = processors
        consumer = Consumer(
            provider,
            Stack(*chosen, callback=callback),
            concurrency=settings.concurrency,
            grace_period=settings.grace_period,
        )
        if processors is None and not retry:
            # "No message lost" is the first promise: say where a failure goes when retries are off.
            for name in queues:
                await _warn_without_retries(broker, name)
        try:
            return await consumer.run()
        finally:
            if consumer.control.rejected:
                logger.warning(
                    "%d message(s) from %s were rejected without requeue this run: dead-lettered if %s "
                    "has a dead-letter exchange, dropped otherwise",
                    consumer.control.rejected,
                    settings.queue if len(queues) == 1 else ", ".join(queues),
                    "the queue" if len(queues) == 1 else "its queue",
                    extra={"queue": queue},
                )
    finally:
        with anyio.CancelScope(shield=True):
            await broker.close()


def with_otel_server(settings: Settings) -> Settings:
    """`settings` with `otel_server` filled from the URL's first node when tracing is on (`server.*`)."""
    if settings.otel and settings.otel_server is None:
        nodes = parse_url(settings.url).nodes  # none for memory://
        if nodes:
            return dataclasses.replace(settings, otel_server=(nodes[0].host, nodes[0].port))
    return settings


def run(
    callback: Callback,
    settings: Settings | None = None,
    /,
    *,
    processors: Processors | None = None,
    layers: Sequence[LayerLike] = (),
    **options: Unpack[SettingsOptions],
) -> StopReason:
    """Consume with the default stack (or `processors`) until something stops it; return why.

    Takes a `Settings` or its keyword arguments, like `consume`. Blocking: starts its own event loop
    (asyncio, with uvloop when installed).
    When the application has not set up logging (no handler on the root logger), it logs as the CLI
    does: text lines at INFO on stderr, one per message; configure logging first to change that.
    If a sync callback's thread is still running after the stop (hung past a time limit or the
    grace period), Python would wait for it forever at exit: `run` then logs a WARNING and ends
    the process at once (`os._exit`: 0 after a stop, 1 after a crash; atexit handlers do not run).
    Use `consume` and `swarrow.callback.hung_callback_threads()` to decide otherwise.
    """
    if not _logging_configured():
        from swarrow.logs import configure_logging

        configure_logging("INFO")
    try:
        import uvloop  # noqa: F401

        backend_options = {"use_uvloop": True}
    except ImportError:
        backend_options = {}
    try:
        reason = anyio.run(
            functools.partial(consume, callback, settings, processors=processors, layers=layers, **options),
            backend="asyncio",
            backend_options=backend_options,
        )
    except BaseException as exc:
        if hung_callback_threads():
            logger.error("the consumer failed: %r", exc)
            _exit_if_callback_threads_hang(1)
        raise
    _exit_if_callback_threads_hang(0)
    return reason


def _exit_if_callback_threads_hang(code: int) -> None:
    """End the process now if sync callback threads outlived the stop: the interpreter would join them."""
    hung = hung_callback_threads()
    if not hung:
        return
    logger.warning("%d sync callback thread(s) still running after the stop; exiting without them", hung)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
