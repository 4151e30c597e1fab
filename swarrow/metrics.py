"""Prometheus metrics and the health endpoint: `/metrics`, `/healthz` (liveness), `/readyz` (readiness).

The HTTP server runs in a daemon thread so a scrape is answered even while the event loop is busy;
liveness therefore cannot be "the server answered" but "the event loop's heartbeat is fresh".
Exposition is prometheus-client's own WSGI app (content negotiation, OpenMetrics, gzip).
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Final
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric

from swarrow._metrics_accumulator import Accumulator
from swarrow.errors import ConfigurationError
from swarrow.outcome import OUTCOMES, Outcome
from swarrow.validation import require_int, require_seconds

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DURATION_BUCKETS",
    "HealthState",
    "MetricsServer",
    "QueueMetrics",
    "SwarrowMetrics",
    "parse_metrics_addr",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 9100

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

    def stopped(self, reason: str) -> None:
        """Count one consumer stop for `reason` (a StopReason code); once per run, so bound here."""
        self.stops.labels(queue=self.queue, reason=reason).inc()

    def flush(self) -> None:
        """Push what the metrics layer counted since the last flush into the children."""
        self.pending.flush()


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
                )
            return bound

    def flush(self) -> None:
        """Push every queue's pending counts into the families; collecting the registry calls it."""
        with self._lock:
            queues = tuple(self._queues.values())
        for bound in queues:
            bound.pending.flush()


class HealthState:
    """What `/healthz` and `/readyz` report, written by the event loop and read by the server thread.

    Plain attribute reads and writes only: the GIL makes each one atomic, and a reading one
    heartbeat late is harmless.
    """

    def __init__(
        self,
        *,
        stale_after: float = 10.0,
        ready: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stale_after = require_seconds("stale_after", stale_after)
        self.ready = ready
        self.clock = clock
        self.last_beat: float | None = None
        self.stopped: str | None = None

    def beat(self) -> None:
        """Record that the event loop ran just now."""
        self.last_beat = self.clock()

    def stop(self, reason: str) -> None:
        """Mark the consumer stopped (liveness fails from now on)."""
        self.stopped = reason

    def liveness(self) -> tuple[bool, str]:
        """(alive, why): alive while the loop beats within `stale_after` and the consumer has not stopped."""
        if self.stopped is not None:
            return False, f"consumer stopped: {self.stopped}"
        last = self.last_beat
        if last is None:
            return False, "consumer not started"
        age = self.clock() - last
        if age > self.stale_after:
            return False, f"event loop wedged: no heartbeat for {age:.1f}s (limit {self.stale_after:g}s)"
        return True, "alive"

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): ready only while alive and the provider is connected and consuming."""
        alive, why = self.liveness()
        if not alive:
            return False, why
        ready = self.ready
        if ready is not None and not ready():
            return False, "not consuming (broker disconnected or consumer cancelled)"
        return True, "consuming"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        logger.debug("metrics endpoint: " + format, *args)


def _json(start_response: StartResponse, ok: bool, why: str) -> list[bytes]:
    body = json.dumps({"status": "ok" if ok else "unavailable", "detail": why}).encode()
    status = "200 OK" if ok else "503 Service Unavailable"
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


class MetricsServer:
    """Serves `/metrics`, `/healthz` and `/readyz` from a daemon thread; `start()` / `stop()`.

    Binds 127.0.0.1 by default: metrics are not for the whole network unless asked for.
    Port 0 picks a free port, readable from `port` after `start()`.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        registry: CollectorRegistry | None = None,
        health: HealthState | None = None,
    ) -> None:
        if require_int("port", port, minimum=0) > 65535:
            raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
        self.host = host
        self.port = port
        self.registry = REGISTRY if registry is None else registry
        self.health = HealthState() if health is None else health
        self._metrics_app = make_wsgi_app(self.registry)
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """host:port as a URL authority (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI application: prometheus-client's exposition on /metrics, health on the other two."""
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            result: Iterable[bytes] = self._metrics_app(environ, start_response)
            return result
        if path == "/healthz":
            return _json(start_response, *self.health.liveness())
        if path == "/readyz":
            return _json(start_response, *self.health.readiness())
        body = b"swarrow: see /metrics, /healthz, /readyz\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    def start(self) -> None:
        """Bind and serve in a daemon thread; ConfigurationError if the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("this MetricsServer is already started")
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family = infos[0][0]
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {self.address}: {exc}") from None

        class _Server(ThreadingWSGIServer):
            address_family = family

        try:
            server = make_server(self.host, self.port, self.app, _Server, _QuietHandler)
        except OSError as exc:
            why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise ConfigurationError(f"cannot listen on {self.address}: {why}") from None
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="swarrow-metrics", daemon=True
        )
        self._thread.start()
        logger.info("serving /metrics, /healthz and /readyz on http://%s", self.address)

    def stop(self) -> None:
        """Stop serving and release the port (blocks at most ~0.1 s for the serve loop to notice)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def parse_metrics_addr(value: str) -> tuple[str, int]:
    """Parse `--metrics-addr`: "HOST:PORT", ":PORT", "PORT" or "[IPv6]:PORT"; host defaults to 127.0.0.1."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f"invalid metrics address {value!r}: empty IPv6 host")
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"invalid metrics address {value!r}: put an IPv6 host in brackets, e.g. [::1]:9100")
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"invalid metrics address {value!r}: the port must be an integer in 1..65535")
    return host or DEFAULT_HOST, int(port_text)
