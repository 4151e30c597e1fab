"""Prometheus metrics for every message, and the `/metrics` · `/healthz` · `/readyz` endpoint for the run."""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from time import perf_counter

import anyio
import anyio.to_thread
from prometheus_client import CollectorRegistry

from processors._republish import RepublishState, add_refusals, held_reason, republish_states
from swarrow._metrics_accumulator import Accumulator
from swarrow.broker import QueueStats, QueueStatsSource
from swarrow.control import ConsumerControl
from swarrow.health import HealthState
from swarrow.http import MetricsServer
from swarrow.message import Message
from swarrow.metrics import QueueMetrics, SwarrowMetrics
from swarrow.outcome import FAILED, get_outcome, record_outcome, reset_outcome
from swarrow.processor import Processor
from swarrow.provider import MessageProvider
from swarrow.validation import require_seconds

__all__ = ["MetricsProcessor"]

logger = logging.getLogger(__name__)


class MetricsProcessor:
    """Count, time and gauge each message by the outcome the settling layers recorded.

    `registry=None` uses prometheus-client's global registry (see `SwarrowMetrics`). With `address`,
    the lifespan serves `/metrics`, `/healthz` and `/readyz` there and stops it with the consumer;
    a port in use raises `ConfigurationError`. `provider` makes `/readyz` and `swarrow_consumer_up`
    follow `provider.is_consuming`; without it they only say "running and not stopping".
    `/healthz` fails once the event loop missed heartbeats for `liveness_timeout` seconds.
    A message no settling layer recorded an outcome for (no ack layer in the stack) is counted as
    received and timed, but not in `swarrow_messages_processed_total`: that counter never guesses.

    Per message it only adds to plain ints; they reach the prometheus children whenever the registry
    is collected, on every heartbeat and when the lifespan ends (a `--workers` pool's supervisor reads
    the workers' files, never their registries). `clock` times the messages; tests inject one.
    """

    def __init__(
        self,
        inner: Processor,
        /,
        *,
        registry: CollectorRegistry | None = None,
        provider: MessageProvider | None = None,
        address: tuple[str, int] | None = None,
        liveness_timeout: float = 10.0,
        heartbeat_interval: float = 1.0,
        clock: Callable[[], float] = perf_counter,
        queue_stats: QueueStats | None = None,
        queue_stats_interval: float = 5.0,
    ) -> None:
        self.heartbeat_interval = require_seconds("heartbeat_interval", heartbeat_interval)
        if liveness_timeout <= heartbeat_interval:
            raise ValueError(
                f"liveness_timeout must be > heartbeat_interval ({heartbeat_interval!r}), "
                f"got {liveness_timeout!r}"
            )
        self.inner = inner
        self.provider = provider
        self.metrics = SwarrowMetrics.for_registry(registry)
        self.health = HealthState(stale_after=liveness_timeout)
        self.server = (
            None
            if address is None
            else MetricsServer(address[0], address[1], registry=self.metrics.registry, health=self.health)
        )
        self.clock = clock
        self.queue_stats = queue_stats
        self.queue_stats_interval = require_seconds("queue_stats_interval", queue_stats_interval)
        self._pending: Accumulator | None = None
        self._pendings: dict[str, Accumulator] = {}
        self._warned_no_outcome = False

    @asynccontextmanager
    async def lifespan(self, control: ConsumerControl) -> AsyncIterator[None]:
        """Bind the queue's children, serve the endpoint, beat the heartbeat; record the stop at the end."""
        provider = self.provider
        # A consumer of several queues (swarrow.multi_queue) is counted, gauged and made ready per queue.
        names: tuple[str, ...] = getattr(provider, "queue_names", None) or (control.queue_name,)
        bounds = [self.metrics.for_queue(name) for name in names]
        bound = bounds[0]
        self._pending = bound.pending
        self._pendings = {b.queue: b.pending for b in bounds}
        parts = _parts(provider, names)
        consumed = False

        def ready() -> tuple[bool, str]:
            nonlocal consumed
            if control.stop_requested:
                return False, f"draining (stop requested: {control.reason})"
            idle = [name for name, part in parts if part is not None and not part.is_consuming]
            if idle:
                where = f" {', '.join(idle)}" if len(names) > 1 else ""
                if not consumed:
                    return False, f"starting (not consuming{where} yet)"
                return False, f"not consuming{where} (broker disconnected or consumer cancelled)"
            consumed = True
            return True, "consuming" if len(names) == 1 else f"consuming {', '.join(names)}"

        health = self.health
        health.ready = ready
        # One source of truth: the gauge is what /readyz answers, read again at every scrape.
        for each, (_, part) in zip(bounds, parts, strict=True):
            each.up_source[:] = [_up_source(health, control, part if len(names) > 1 else None)]
        republish = republish_states(self.inner)
        health.blocked = (lambda: held_reason(republish)) if republish else None
        health.stopped = None
        health.beat()
        if self.server is not None:
            self.server.start()
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(self._heartbeat, bounds)
                for each in bounds:
                    background.start_soon(self._sample_utilization, each, control)
                for each, source in _stats_sources(self.queue_stats, bounds):
                    background.start_soon(self._poll_queue_stats, each, source)
                if republish:
                    background.start_soon(self._count_refused_copies, bound, republish)
                try:
                    yield
                finally:
                    background.cancel_scope.cancel()
        finally:
            code = control.reason.code if control.reason is not None else "crashed"
            for each in bounds:
                each.up_source.clear()
                each.flush()  # a pool worker's last counts: its supervisor reads them from the files
                each.consumer_up.set(0)
                each.stopped(code)
            health.stop(code)
            if self.server is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.server.stop)

    def _pending_of(self, queue: str) -> Accumulator:
        pending = self._pendings.get(queue)
        if pending is None:
            pending = self._pendings[queue] = self.metrics.for_queue(queue).pending
        if self._pending is None:
            self._pending = pending
        return pending

    async def _count_refused_copies(self, bound: QueueMetrics, states: list[RepublishState]) -> None:
        # Off the hot path: refusals are rare, so a heartbeat-paced delta is exact enough.
        counter, interval, seen = bound.republish_failures, self.heartbeat_interval, 0
        try:
            while True:
                await anyio.sleep(interval)
                seen = add_refusals(counter, states, seen)
        finally:
            add_refusals(counter, states, seen)

    async def _sample_utilization(self, bound: QueueMetrics, control: ConsumerControl) -> None:
        # in_flight ÷ concurrency sampled once a heartbeat, averaged over the last ten samples: a
        # steady number for an autoscaler, off the hot path.
        samples: deque[float] = deque(maxlen=10)
        slots = max(1, control.concurrency)
        while True:
            samples.append(min(1.0, control.in_flight / slots))
            bound.utilization.set(sum(samples) / len(samples))
            await anyio.sleep(self.heartbeat_interval)

    async def _poll_queue_stats(self, bound: QueueMetrics, inspect: QueueStatsSource) -> None:
        # A passive declare every few seconds: the backlog as RabbitMQ counts it (ready messages, not
        # the ones already pushed into prefetch windows), without the management plugin.
        interval = self.queue_stats_interval
        while True:
            with anyio.move_on_after(interval):
                try:
                    info = await inspect()
                except Exception as exc:
                    logger.debug("queue stats of %s unavailable: %s", bound.queue, exc)
                else:
                    if info is not None:
                        bound.queue_ready.set(info.message_count)
                        bound.queue_consumers.set(info.consumer_count)
            await anyio.sleep(interval)

    async def _heartbeat(self, bounds: list[QueueMetrics]) -> None:
        # Runs on the event loop, so a blocked loop stops the beat and `/healthz` notices.
        # The flush (which also sets swarrow_consumer_up from the readiness) is for multiprocess mode,
        # where nothing collects this process's registry.
        health, interval = self.health, self.heartbeat_interval
        # A RabbitMQ provider's connection counts its failovers (swarrow.amqp); others have none.
        connection = getattr(self.provider, "broker", None)
        while True:
            health.beat()
            failovers = getattr(connection, "failovers", None)
            if isinstance(failovers, int) and failovers:
                self.metrics.count_failovers(connection, failovers)
            for bound in bounds:
                bound.flush()
            await anyio.sleep(interval)

    async def __call__(self, message: Message, /) -> bool:
        pending = self._pending
        if pending is None or pending.queue != message.queue:  # several queues, or no lifespan
            pending = self._pending_of(message.queue)
        pending.received += 1
        pending.in_flight += 1
        reset_outcome()
        clock = self.clock
        start = clock()
        try:
            return await self.inner(message)
        except Exception:
            record_outcome(FAILED)  # only if no settling layer recorded one
            raise
        finally:
            elapsed = clock() - start
            if pending.bucketed:
                # bisect_left: the first bound >= elapsed, the bucket Histogram.observe() picks
                pending.buckets[bisect_left(pending.bounds, elapsed)] += 1
                pending.duration_sum += elapsed
            else:
                pending.duration.observe(elapsed)
            pending.in_flight -= 1
            outcome = get_outcome()
            if outcome is not None:
                pending.processed[outcome] += 1
            elif not self._warned_no_outcome:
                self._warned_no_outcome = True
                logger.warning(
                    "no layer recorded an outcome for messages of %s (is there an ack layer inside metrics?);"
                    " swarrow_messages_processed_total will not count them",
                    pending.queue,
                    extra={"queue": pending.queue, "message_id": message.message_id},
                )


def _parts(
    provider: MessageProvider | None, names: tuple[str, ...]
) -> list[tuple[str, MessageProvider | None]]:
    """Each queue with the provider consuming it (the provider itself for one queue)."""
    if len(names) == 1:
        return [(names[0], provider)]
    of = getattr(provider, "provider_for", None)
    return [(name, of(name) if of is not None else None) for name in names]


def _up_source(
    health: HealthState, control: ConsumerControl, part: MessageProvider | None
) -> Callable[[], bool]:
    """`swarrow_consumer_up{queue}`: what `/readyz` answers, or, for one queue of several, whether that
    queue is consumed: the worker alive, not stopping, holding no refused copy, and this queue's consumer
    registered — another queue's consumer going away does not take this one's gauge down with it."""

    def up() -> bool:
        if part is None:
            return health.readiness()[0]
        if control.stop_requested or not part.is_consuming or not health.liveness()[0]:
            return False
        blocked = health.blocked
        return blocked is None or not blocked()

    return up


def _stats_sources(
    stats: QueueStats | None, bounds: list[QueueMetrics]
) -> list[tuple[QueueMetrics, QueueStatsSource]]:
    """Which queue's gauges each backlog source feeds."""
    if stats is None:
        return []
    if isinstance(stats, Mapping):
        return [(b, stats[b.queue]) for b in bounds if b.queue in stats]
    return [(bounds[0], stats)]
