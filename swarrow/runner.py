"""One call for the common case: connect, check or declare the queues, build the default stack, consume.

```python
import swarrow

def handle(message: swarrow.Message) -> None: ...

swarrow.run(handle, queue="emails", max_messages=10_000, concurrency=10)
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Unpack

import anyio

from swarrow.broker import Broker, QueueStats
from swarrow.callback import Callback, check_callback, hung_callback_threads
from swarrow.consumer import Consumer
from swarrow.control import StopReason
from swarrow.factory import open_broker
from swarrow.prepare import (
    describe_queues,
    existing_retry_delays,
    prepare_queues,
    resolve_delays_of_queues,
    resolve_retry_delays,
    warn_without_retries,
)
from swarrow.provider import MessageProvider
from swarrow.publisher import Publisher
from swarrow.settings import STACK_OPTION_NAMES, Settings, SettingsOptions, resolve_url
from swarrow.stack import LayerLike, Stack
from swarrow.stop_signals import ignore_stop_signals
from swarrow.topology import (
    exponential_delays,
)
from swarrow.urls import parse_url

__all__ = [
    "Processors",
    "consume",
    "describe_queues",
    "existing_retry_delays",
    "exit_if_callback_threads_hang",
    "ignore_stop_signals_if_threads_hang",
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
                await warn_without_retries(broker, name)
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
        ignore_stop_signals_if_threads_hang()  # a Ctrl-C from here on cannot hold the exit
    except BaseException as exc:
        if hung_callback_threads():
            logger.error("the consumer failed: %r", exc)
            exit_if_callback_threads_hang(1)
        raise
    exit_if_callback_threads_hang(0)
    return reason


def ignore_stop_signals_if_threads_hang() -> int:
    """Ignore SIGINT and SIGTERM from now on if sync callback threads outlived the stop; their count.

    Why: a second Ctrl-C raised into the exit, and Python then waited for those threads for ever.
    Called as soon as the consumer's loop has ended, before anything else can be interrupted.
    """
    hung = hung_callback_threads()
    if hung:
        ignore_stop_signals()
    return hung


def exit_if_callback_threads_hang(code: int, *, last_words: Callable[[], None] | None = None) -> None:
    """End the process now if sync callback threads outlived the stop: the interpreter would join them.

    `hung_callback_threads()` counts exactly the calls whose message was cancelled while their thread
    ran on, so there is nothing to wait for. Once leaving, SIGINT and SIGTERM are ignored
    (`ignore_stop_signals_if_threads_hang`). `last_words` runs before the exit (an error to print).
    """
    hung = ignore_stop_signals_if_threads_hang()
    if not hung:
        return
    logger.warning("%d sync callback thread(s) still running after the stop; exiting without them", hung)
    if last_words is not None:
        last_words()
    logging.shutdown()
    _flush_standard_streams(timeout=1.0)
    os._exit(code)


def _flush_standard_streams(*, timeout: float) -> None:
    """Flush stdout and stderr, waiting `timeout` at most: a hung callback thread may be blocked in a
    `print` to a pipe nobody reads, holding the stream's lock, and the flush would then wait for ever."""

    def flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()

    flusher = threading.Thread(target=flush, name="swarrow-exit-flush", daemon=True)
    flusher.start()
    flusher.join(timeout)
