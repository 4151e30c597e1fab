"""Prometheus metric families: one set per registry, label children bound once per queue."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics_core import Metric

from swarrow._metrics_accumulator import Accumulator
from swarrow.outcome import OUTCOMES, Outcome

__all__ = ["DURATION_BUCKETS", "QueueMetrics", "SwarrowMetrics"]

logger = logging.getLogger(__name__)

# 1 ms to 30 min: a fast handler and RabbitMQ's default consumer_timeout both fall inside.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class QueueMetrics:
    """The label children of one queue, bound once so the hot path never calls `.labels()`.

    The metrics layer counts into `pending` and leaves the children to `flush()`; anything else
    may still write the children directly.
    """

    queue: str
    received: Counter
    processed: dict[Outcome, Counter]
    duration: Histogram
    in_flight: Gauge
    consumer_up: Gauge
    stops: Counter  # the family: reasons are open-ended, so their children are bound on stop
    pending: Accumulator
    republish_failures: Counter
    utilization: Gauge
    queue_ready: Gauge
    queue_consumers: Gauge
    # What `/readyz` answers, read again at every flush (every scrape and heartbeat), so that
    # `swarrow_consumer_up` and `/readyz` never disagree. Empty: the gauge is set by hand.
    up_source: list[Callable[[], bool]] = field(default_factory=list)

    def stopped(self, reason: str) -> None:
        """Count one consumer stop for `reason` (a StopReason code); once per run, so bound here."""
        self.stops.labels(queue=self.queue, reason=reason).inc()

    def flush(self) -> None:
        """Push what the metrics layer counted since the last flush into the children."""
        self.pending.flush()
        for source in self.up_source:
            self.consumer_up.set(1 if source() else 0)


class _Flush:
    """Registered ahead of the swarrow families so every collection of the registry flushes first."""

    def __init__(self, metrics: SwarrowMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # no names of its own, and the registry must not call collect() to find some

    def collect(self) -> list[Metric]:
        self.metrics.flush()
        return []


class SwarrowMetrics:
    """The swarrow_* metric families, registered in one registry.

    `registry=None` means prometheus-client's global `REGISTRY`, so the application's own metrics
    (declared the usual way) are served on the same `/metrics`; it already carries the process
    collectors. For any other registry, `process_metrics=True` adds the process (RSS, CPU, open fds)
    and platform collectors unless the registry already has them. Tests inject a fresh registry.
    Use `for_registry()` to share one instance per registry (a family can be registered only once).
    Collecting the registry (`/metrics`, `generate_latest`, `get_sample_value`) flushes first, so
    it always shows every message counted so far.
    """

    _shared: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, SwarrowMetrics]] = (
        weakref.WeakKeyDictionary()
    )
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True) -> None:
        self.registry = REGISTRY if registry is None else registry
        if process_metrics and self.registry is not REGISTRY:
            for make in (ProcessCollector, PlatformCollector):
                try:
                    make(registry=self.registry)
                except ValueError:  # already registered (duplicated timeseries): keep the existing one
                    logger.debug("%s already present in the registry", make.__name__)
        self._queues: dict[str, QueueMetrics] = {}
        self._failovers_seen: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        # CollectorRegistry.collect() runs its collectors in registration order: this one comes first.
        flusher = _Flush(self)
        self.registry.register(flusher)
        try:
            self._create_families()
        except BaseException:
            self.registry.unregister(flusher)  # a failed instance must not stay half-registered
            raise

    def _create_families(self) -> None:
        reg = self.registry
        self.received = Counter(
            "swarrow_messages_received",
            "Messages taken from the queue into the stack.",
            ["queue"],
            registry=reg,
        )
        self.processed = Counter(
            "swarrow_messages_processed",
            "Messages that left the stack, by what became of them.",
            ["queue", "outcome"],
            registry=reg,
        )
        self.duration = Histogram(
            "swarrow_message_duration_seconds",
            "Time a message spent in the stack below the metrics layer.",
            ["queue"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        # multiprocess_mode only matters under PROMETHEUS_MULTIPROC_DIR (a `--workers` pool): the pool
        # then reports the sum over its live workers (consumer_up = workers consuming), and a dead
        # worker's last value disappears with it instead of lingering under a `pid` label.
        self.in_flight = Gauge(
            "swarrow_messages_in_flight",
            "Messages inside the stack right now.",
            ["queue"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.consumer_up = Gauge(
            "swarrow_consumer_up",
            "1 while consuming from a live connection, else 0 (in a pool: the workers consuming).",
            ["queue"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.stops = Counter(
            "swarrow_consumer_stops", "Consumer stops, by StopReason code.", ["queue", "reason"], registry=reg
        )
        self.replies = Counter(
            "swarrow_replies",
            "Replies to requests (messages with reply_to): sent, error (an error reply) or lost.",
            ["queue", "result"],
            registry=reg,
        )
        self.republish_failures = Counter(
            "swarrow_republish_failures",
            "Retry or dead-letter copies the broker refused; the original is held and the copy sent again.",
            ["queue"],
            registry=reg,
        )
        self.failovers = Counter(
            "swarrow_connection_failovers",
            "Broker connections re-established after a loss (to the same node or another of the URL's).",
            registry=reg,
        )
        # A pool shows one series per worker (`pid`): average them (avg by (queue)) for the pool's share.
        self.utilization = Gauge(
            "swarrow_worker_utilization",
            "Share of the worker's concurrency slots busy, averaged over the last 10 heartbeats (0 to 1).",
            ["queue"],
            registry=reg,
            multiprocess_mode="liveall",
        )
        # Every worker of a pool reads the same queue: the pool reports the largest (the most recent) value.
        self.queue_ready = Gauge(
            "swarrow_queue_messages_ready",
            "Messages ready in the queue, as a passive declare saw them (refreshed every few seconds).",
            ["queue"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.queue_consumers = Gauge(
            "swarrow_queue_consumers",
            "Consumers of the queue, as a passive declare saw them (refreshed every few seconds).",
            ["queue"],
            registry=reg,
            multiprocess_mode="livemax",
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None = None) -> SwarrowMetrics:
        """The one `SwarrowMetrics` of `registry` (None: the global one), created on first use."""
        key = REGISTRY if registry is None else registry
        with cls._shared_lock:
            metrics = cls._shared.get(key)
            if metrics is None:
                metrics = cls._shared[key] = cls(registry)
            return metrics

    def for_queue(self, queue: str) -> QueueMetrics:
        """Bind every child of `queue` once; every outcome series exists at 0 from the start."""
        with self._lock:
            bound = self._queues.get(queue)
            if bound is None:
                received = self.received.labels(queue=queue)
                processed = {o: self.processed.labels(queue=queue, outcome=o) for o in OUTCOMES}
                duration = self.duration.labels(queue=queue)
                in_flight = self.in_flight.labels(queue=queue)
                bound = self._queues[queue] = QueueMetrics(
                    queue=queue,
                    received=received,
                    processed=processed,
                    duration=duration,
                    in_flight=in_flight,
                    consumer_up=self.consumer_up.labels(queue=queue),
                    stops=self.stops,
                    pending=Accumulator(
                        queue,
                        received=received,
                        processed=processed,
                        duration=duration,
                        in_flight=in_flight,
                        bounds=DURATION_BUCKETS,
                    ),
                    republish_failures=self.republish_failures.labels(queue=queue),
                    utilization=self.utilization.labels(queue=queue),
                    queue_ready=self.queue_ready.labels(queue=queue),
                    queue_consumers=self.queue_consumers.labels(queue=queue),
                )
            return bound

    def count_failovers(self, connection: object, total: int) -> None:
        """Bring `swarrow_connection_failovers_total` up to date with `connection`'s own count.

        Several metrics layers may watch one connection (one per queue): each failover counts once.
        """
        with self._lock:
            seen = self._failovers_seen.get(connection, 0)
            if total > seen:
                self._failovers_seen[connection] = total
                self.failovers.inc(total - seen)

    def flush(self) -> None:
        """Push every queue's pending counts into the families; collecting the registry calls it."""
        with self._lock:
            queues = tuple(self._queues.values())
        for bound in queues:
            bound.flush()
