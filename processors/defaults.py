"""The recommended stack, in the one order that keeps limits, failures and acks correct."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from processors.ack import AckProcessor
from processors.delivery_limit import DeliveryLimitProcessor
from processors.exception_catcher import ExceptionCatcherProcessor
from processors.job_tracker import JobTrackerProcessor
from processors.logger import LoggerProcessor
from processors.max_messages import MaxMessagesProcessor
from processors.max_runtime import MaxRuntimeProcessor
from processors.memory_limit import MemoryLimitProcessor
from processors.metrics import MetricsProcessor
from processors.reply import ReplyProcessor
from processors.retry import RetryProcessor
from processors.signal_handler import SignalHandlerProcessor
from processors.stop_when_idle import StopWhenIdleProcessor
from processors.time_limit import TimeLimitProcessor
from swarrow.broker import QueueStats
from swarrow.errors import ConfigurationError
from swarrow.jobs.store import JobStore
from swarrow.metrics import SwarrowMetrics
from swarrow.provider import MessageProvider
from swarrow.publisher import Publisher
from swarrow.stack import Layer, LayerLike
from swarrow.swarrot import RetryTopologyName
from swarrow.validation import require_int, require_positive, require_seconds

__all__ = ["default_stack"]


def _check_options(
    max_runtime: float | None,
    max_messages: int | None,
    memory_limit: float | None,
    delivery_limit: int | None,
    time_limit: float | None,
    stop_when_idle: float | None,
) -> None:
    for name, seconds in (
        ("max_runtime", max_runtime),
        ("time_limit", time_limit),
        ("stop_when_idle", stop_when_idle),
    ):
        if seconds is not None:
            require_seconds(name, seconds)
    for name, count in (("max_messages", max_messages), ("delivery_limit", delivery_limit)):
        if count is not None:
            require_int(name, count)
    if memory_limit is not None:
        require_positive("memory_limit", memory_limit, unit="megabytes")


def default_stack(
    *,
    provider: MessageProvider,
    publisher: Publisher | None = None,
    signals: bool = True,
    max_runtime: float | None = None,
    max_messages: int | None = None,
    memory_limit: float | None = None,
    metrics: bool = False,
    metrics_address: tuple[str, int] | None = None,
    registry: CollectorRegistry | None = None,
    log: bool = True,
    log_body: bool = False,
    catch: bool = True,
    requeue_on_error: bool = False,
    reply: bool = True,
    delivery_limit: int | None = None,
    retry: bool = True,
    retry_attempts: int = 3,
    retry_delays: Sequence[float] | None = None,
    quorum: bool = False,
    retry_topology: RetryTopologyName = "swarrow",
    time_limit: float | None = None,
    stop_when_idle: float | None = None,
    track_jobs: str | JobStore | None = None,
    serial_header: str | None = None,
    otel: bool = False,
    otel_server: tuple[str, int] | None = None,
    queue_stats: QueueStats | None = None,
    queue_stats_interval: float = 5.0,
    layers: Sequence[LayerLike] = (),
) -> list[Layer[Any]]:
    """Layers for `Stack(*layers, callback=...)`, outermost first; disabled ones (None / False) are left out.

    Order: signal_handler → serial_group → tracing → max_runtime → max_messages → memory_limit →
    stop_when_idle → metrics → logger → job_tracker → exception_catcher → reply → ack →
    delivery_limit → retry → time_limit.
    Limits sit outside the exception catcher so they count finished messages only; ack sits outside
    retry so the original is acked once its retry copy is confirmed; the job tracker (`track_jobs`: a
    store URL or a `JobStore`) sits outside ack to read what the settling layers recorded; reply sits
    outside ack so a request is answered once its fate is settled (it needs `publisher`; without one,
    requests are processed but not answered). `layers`: processors of your own (a `Layer`, or a
    class / factory called with the inner processor), added innermost, just around the callback, first
    listed outermost: inside ack and retry, so what they raise is retried and what they let through is
    acked. `otel`: a CONSUMER span per message (`TracingProcessor`, inside the signal handler, outside
    everything else) and a PRODUCER span per retry, dead-letter and reply copy (`TracingPublisher`);
    `otel_server` is the broker's (host, port) for their `server.*` attributes. Needs `swarrow[otel]`.
    `serial_header` (e.g. "x-serial-group"): messages sharing that header's value run one at a time,
    in arrival order (`SerialGroupProcessor`), outside every other layer so each is counted and
    settled in turn. `queue_stats` (e.g. `functools.partial(broker.inspect_queue, queue)`) feeds the
    metrics layer's `swarrow_queue_messages_ready` / `swarrow_queue_consumers` every
    `queue_stats_interval` seconds.
    Raises `ConfigurationError` for an option that cannot work.
    """
    try:
        _check_options(max_runtime, max_messages, memory_limit, delivery_limit, time_limit, stop_when_idle)
        if retry:
            require_int("retry_attempts", retry_attempts)
            if retry_delays is not None:
                if len(retry_delays) != retry_attempts:
                    raise ValueError(
                        f"retry_delays must hold one delay per retry attempt ({retry_attempts}), "
                        f"got {list(retry_delays)!r}"
                    )
                for delay in retry_delays:
                    require_seconds("each of retry_delays", delay)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    missing = [name for name, on in (("retry", retry), ("delivery_limit", delivery_limit)) if on]
    if missing and publisher is None:
        raise ConfigurationError(
            f"{' and '.join(missing)} republish messages and need a publisher: pass "
            "publisher=broker.publisher(), or disable them (retry=False, delivery_limit=None)"
        )

    for extra in layers:
        if not isinstance(extra, Layer):
            _check_factory(extra)
    custom = [extra if isinstance(extra, Layer) else Layer(extra) for extra in layers]
    stack: list[Layer[Any]] = []
    if signals:
        stack.append(Layer(SignalHandlerProcessor))
    if serial_header is not None:
        from processors.serial_group import SerialGroupProcessor

        stack.append(Layer(SerialGroupProcessor, header=serial_header))
    if otel:
        from processors.tracing import TracingProcessor
        from swarrow.otel import TracingPublisher

        stack.append(Layer(TracingProcessor, server=otel_server))
        if publisher is not None:
            publisher = TracingPublisher(publisher, server=otel_server)
    if max_runtime is not None:
        stack.append(Layer(MaxRuntimeProcessor, seconds=max_runtime))
    if max_messages is not None:
        stack.append(Layer(MaxMessagesProcessor, limit=max_messages))
    if memory_limit is not None:
        stack.append(Layer(MemoryLimitProcessor, megabytes=memory_limit))
    if stop_when_idle is not None:
        stack.append(Layer(StopWhenIdleProcessor, seconds=stop_when_idle))
    if metrics or metrics_address is not None:
        # The provider feeds swarrow_consumer_up and /readyz; an address serves the endpoint.
        metrics_layer = Layer(MetricsProcessor, registry=registry, provider=provider, address=metrics_address)
        if queue_stats is not None:
            metrics_layer = Layer(
                MetricsProcessor,
                registry=registry,
                provider=provider,
                address=metrics_address,
                queue_stats=queue_stats,
                queue_stats_interval=queue_stats_interval,
            )
        stack.append(metrics_layer)
    if log:
        stack.append(Layer(LoggerProcessor, log_body=log_body))
    if track_jobs is not None:
        stack.append(Layer(JobTrackerProcessor, store=track_jobs, registry=registry))
    if catch:
        stack.append(Layer(ExceptionCatcherProcessor))
    if reply and publisher is not None:
        reply_metrics = SwarrowMetrics.for_registry(registry) if metrics or metrics_address else None
        stack.append(Layer(ReplyProcessor, publisher=publisher, provider=provider, metrics=reply_metrics))
    stack.append(Layer(AckProcessor, provider=provider, requeue_on_error=requeue_on_error))
    if delivery_limit is not None:
        if publisher is None:
            raise RuntimeError("internal state: publisher is unset here")
        stack.append(
            Layer(
                DeliveryLimitProcessor,
                publisher=publisher,
                max_deliveries=delivery_limit,
                retry_topology=retry_topology,
            )
        )
    if retry:
        if publisher is None:
            raise RuntimeError("internal state: publisher is unset here")
        stack.append(
            Layer(
                RetryProcessor,
                publisher=publisher,
                attempts=retry_attempts,
                delays=retry_delays,
                quorum=quorum,
                retry_topology=retry_topology,
            )
        )
    if time_limit is not None:
        stack.append(Layer(TimeLimitProcessor, seconds=time_limit))
    stack.extend(custom)
    return stack


def _check_factory(factory: object) -> None:
    """A custom layer must be callable with the inner processor alone (its options come from defaults)."""
    if not callable(factory):
        raise ConfigurationError(f"a layer must be a Layer, a processor class or a factory, got {factory!r}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None)
    except TypeError as exc:
        name = getattr(factory, "__qualname__", None) or type(factory).__qualname__
        raise ConfigurationError(
            f"layer {name} cannot be built around the inner processor alone ({exc}): it must take the "
            "inner processor first, and give every other option a default"
        ) from None
