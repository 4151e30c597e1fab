"""The pool's endpoint: the workers' summed `/metrics`, pool gauges, `/healthz`, `/readyz` and `/status`."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from swarrow.health import HealthState
from swarrow.http import MetricsServer
from swarrow.pool.slots import WORKER_STATES
from swarrow.pool.snapshot import Snapshot
from swarrow.pool.status import LockedMultiProcessCollector

__all__ = ["PoolCollector", "PoolServer", "start_pool_server"]


class PoolCollector(Collector):
    """`swarrow_workers{state}` and `swarrow_worker_restarts_total{reason}`, from the pool's snapshot."""

    def __init__(self, snapshot: Callable[[], Snapshot], desired: int) -> None:
        self.snapshot = snapshot
        self.desired = desired

    def collect(self) -> Iterable[Metric]:
        snapshot = self.snapshot()
        workers = GaugeMetricFamily("swarrow_workers", "Pool worker processes, by state.", labels=["state"])
        for state in WORKER_STATES:
            workers.add_metric([state], snapshot.states.get(state, 0))
        yield workers
        restarts = CounterMetricFamily(
            "swarrow_worker_restarts", "Worker processes started to replace one, by why.", labels=["reason"]
        )
        for reason, count in sorted(snapshot.restarts.items()):
            restarts.add_metric([reason], count)
        yield restarts
        desired = GaugeMetricFamily("swarrow_workers_desired", "Worker processes the pool keeps alive.")
        desired.add_metric([], self.desired)
        yield desired


class PoolServer(MetricsServer):
    """The workers' summed `/metrics`, the pool's `/healthz` and `/readyz`, and `/status` (JSON)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        registry: CollectorRegistry,
        health: HealthState,
        status: Callable[[], Mapping[str, Any]],
    ) -> None:
        super().__init__(host, port, registry=registry, health=health)
        self.status = status

    def app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """`/status` here, everything else as the single-process endpoint does."""
        if environ.get("PATH_INFO", "") != "/status":
            return super().app(environ, start_response)
        body = json.dumps(self.status(), separators=(",", ":")).encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]


def start_pool_server(
    address: tuple[str, int],
    *,
    metrics_dir: Path,
    metrics_lock: threading.Lock,
    snapshot: Callable[[], Snapshot],
    desired: int,
) -> tuple[PoolServer, HealthState]:
    """Serve the pool's endpoint on `address` from a thread; `snapshot` is read on each request."""
    registry = CollectorRegistry(auto_describe=False)
    LockedMultiProcessCollector(metrics_dir, metrics_lock, registry)
    registry.register(PoolCollector(snapshot, desired))
    health = HealthState(stale_after=10.0, ready=lambda: snapshot().consuming > 0)
    health.beat()
    host, port = address
    server = PoolServer(host, port, registry=registry, health=health, status=lambda: snapshot().status)
    server.start()
    return server, health
