"""swarrow.metrics: the metric families, health state, the HTTP endpoint and --metrics-addr parsing."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from swarrow.errors import ConfigurationError
from swarrow.health import HealthState
from swarrow.http import DEFAULT_HOST, DEFAULT_PORT, MetricsServer, parse_metrics_addr
from swarrow.metrics import DURATION_BUCKETS, SwarrowMetrics
from swarrow.outcome import OUTCOMES


def get(url: str) -> tuple[int, str, str]:
    """(status, body, content type) of a GET, 4xx/5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), error.headers.get("Content-Type", "")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[MetricsServer]:
    health = HealthState(stale_after=10.0)
    server = MetricsServer("127.0.0.1", 0, registry=registry, health=health)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- the families ---------------------------------------------------------------------------------


def test_for_queue_creates_every_outcome_series_at_zero(registry: CollectorRegistry) -> None:
    metrics = SwarrowMetrics(registry)
    metrics.for_queue("orders")
    for outcome in OUTCOMES:
        value = registry.get_sample_value(
            "swarrow_messages_processed_total", {"queue": "orders", "outcome": outcome}
        )
        assert value == 0.0, outcome
    assert registry.get_sample_value("swarrow_messages_received_total", {"queue": "orders"}) == 0.0
    assert registry.get_sample_value("swarrow_messages_in_flight", {"queue": "orders"}) == 0.0
    assert registry.get_sample_value("swarrow_consumer_up", {"queue": "orders"}) == 0.0
    assert registry.get_sample_value("swarrow_message_duration_seconds_count", {"queue": "orders"}) == 0.0


def test_for_queue_binds_children_once(registry: CollectorRegistry) -> None:
    metrics = SwarrowMetrics(registry)
    assert metrics.for_queue("a") is metrics.for_queue("a")
    assert metrics.for_queue("a") is not metrics.for_queue("b")


def test_families_have_prefix_base_units_and_types(registry: CollectorRegistry) -> None:
    SwarrowMetrics(registry).for_queue("q")
    types = {family.name: family.type for family in registry.collect() if family.name.startswith("swarrow_")}
    assert types == {
        "swarrow_messages_received": "counter",
        "swarrow_messages_processed": "counter",
        "swarrow_message_duration_seconds": "histogram",
        "swarrow_messages_in_flight": "gauge",
        "swarrow_consumer_up": "gauge",
        "swarrow_consumer_stops": "counter",
        "swarrow_republish_failures": "counter",
        "swarrow_replies": "counter",
        "swarrow_connection_failovers": "counter",
        "swarrow_worker_utilization": "gauge",
        "swarrow_queue_messages_ready": "gauge",
        "swarrow_queue_consumers": "gauge",
    }


def test_duration_buckets_span_one_millisecond_to_thirty_minutes(registry: CollectorRegistry) -> None:
    assert DURATION_BUCKETS[0] == 0.001
    assert DURATION_BUCKETS[-1] == 1800.0
    assert list(DURATION_BUCKETS) == sorted(DURATION_BUCKETS)
    SwarrowMetrics(registry).for_queue("q").duration.observe(1000.0)
    assert (
        registry.get_sample_value("swarrow_message_duration_seconds_bucket", {"queue": "q", "le": "1800.0"})
        == 1.0
    )
    assert (
        registry.get_sample_value("swarrow_message_duration_seconds_bucket", {"queue": "q", "le": "600.0"})
        == 0.0
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process collector reads /proc")
def test_injected_registry_gets_process_collectors(registry: CollectorRegistry) -> None:
    SwarrowMetrics(registry)
    rss = registry.get_sample_value("process_resident_memory_bytes")
    cpu = registry.get_sample_value("process_cpu_seconds_total")
    assert rss is not None and rss > 0
    assert cpu is not None
    assert "python_info" in {family.name for family in registry.collect()}


def test_process_collectors_already_present_are_kept(registry: CollectorRegistry) -> None:
    SwarrowMetrics(registry)
    other = CollectorRegistry()
    SwarrowMetrics(other, process_metrics=False)
    assert other.get_sample_value("process_resident_memory_bytes") is None
    # a second family set in the same registry is a programming error prometheus-client reports
    with pytest.raises(ValueError, match="Duplicated"):
        SwarrowMetrics(registry)


def test_for_registry_shares_one_instance_per_registry(registry: CollectorRegistry) -> None:
    first = SwarrowMetrics.for_registry(registry)
    assert SwarrowMetrics.for_registry(registry) is first
    assert SwarrowMetrics.for_registry(CollectorRegistry()) is not first


def test_stops_are_counted_by_reason(registry: CollectorRegistry) -> None:
    bound = SwarrowMetrics(registry).for_queue("q")
    bound.stopped("signal")
    bound.stopped("signal")
    bound.stopped("max_messages")
    assert registry.get_sample_value("swarrow_consumer_stops_total", {"queue": "q", "reason": "signal"}) == 2
    labels = {"queue": "q", "reason": "max_messages"}
    assert registry.get_sample_value("swarrow_consumer_stops_total", labels) == 1


# --- health ---------------------------------------------------------------------------------------


def test_liveness_needs_a_fresh_heartbeat() -> None:
    clock = Clock()
    health = HealthState(stale_after=5.0, clock=clock)
    assert health.liveness() == (False, "consumer not started")
    health.beat()
    clock.now += 4.9
    assert health.liveness() == (True, "alive")
    clock.now += 0.2
    alive, why = health.liveness()
    assert not alive
    assert "wedged" in why and "5.1s" in why


def test_liveness_fails_once_stopped() -> None:
    health = HealthState()
    health.beat()
    health.stop("signal")
    assert health.liveness() == (False, "consumer stopped: signal")


def test_readiness_follows_the_ready_callback_and_liveness() -> None:
    consuming = [True]
    clock = Clock()
    health = HealthState(stale_after=5.0, ready=lambda: consuming[0], clock=clock)
    health.beat()
    assert health.readiness() == (True, "consuming")
    consuming[0] = False
    ready, why = health.readiness()
    assert not ready and "not consuming" in why
    consuming[0] = True
    clock.now += 6
    assert not health.readiness()[0]


def test_health_rejects_a_bad_stale_after() -> None:
    with pytest.raises(ValueError, match="stale_after"):
        HealthState(stale_after=0)


# --- the server -----------------------------------------------------------------------------------


def test_serves_prometheus_exposition_on_metrics(server: MetricsServer, registry: CollectorRegistry) -> None:
    bound = SwarrowMetrics(registry).for_queue("orders")
    bound.processed["acked"].inc(3)
    status, body, content_type = get(f"http://127.0.0.1:{server.port}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")  # negotiated by prometheus-client
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    assert samples[("swarrow_messages_processed_total", (("outcome", "acked"), ("queue", "orders")))] == 3
    assert "process_resident_memory_bytes" in body
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().endswith(b"# EOF\n")


def test_serves_other_metrics_of_the_registry(server: MetricsServer, registry: CollectorRegistry) -> None:
    Counter("myapp_things", "An application metric.", registry=registry).inc()
    assert "myapp_things_total 1.0" in get(f"http://127.0.0.1:{server.port}/metrics")[1]


def test_healthz_and_readyz_report_the_health_state(server: MetricsServer) -> None:
    base = f"http://127.0.0.1:{server.port}"
    status, body, content_type = get(base + "/healthz")
    assert (status, json.loads(body)["status"]) == (503, "unavailable")
    assert content_type == "application/json"
    server.health.beat()
    assert get(base + "/healthz")[0] == 200
    assert get(base + "/readyz")[0] == 200
    server.health.ready = lambda: False
    status, body, _ = get(base + "/readyz")
    assert status == 503
    assert "not consuming" in json.loads(body)["detail"]
    assert get(base + "/healthz")[0] == 200
    server.health.stop("max_messages")
    status, body, _ = get(base + "/healthz")
    assert (status, json.loads(body)["detail"]) == (503, "consumer stopped: max_messages")


def test_unknown_path_is_404(server: MetricsServer) -> None:
    assert get(f"http://127.0.0.1:{server.port}/nope")[0] == 404


def test_port_in_use_is_a_configuration_error(registry: CollectorRegistry) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer("127.0.0.1", port, registry=registry)
        with pytest.raises(ConfigurationError) as caught:
            server.start()
    assert str(caught.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"


def test_unresolvable_host_is_a_configuration_error(registry: CollectorRegistry) -> None:
    server = MetricsServer("no-such-host.invalid", 0, registry=registry)
    with pytest.raises(ConfigurationError, match=r"cannot listen on no-such-host\.invalid:0"):
        server.start()


def test_stop_releases_the_port(registry: CollectorRegistry) -> None:
    server = MetricsServer("127.0.0.1", 0, registry=registry)
    server.start()
    port = server.port
    assert port != 0
    server.stop()
    server.stop()  # idempotent
    with socket.socket() as again:
        again.connect_ex(("127.0.0.1", port))
    second = MetricsServer("127.0.0.1", port, registry=registry)
    second.start()
    second.stop()


def test_serves_ipv6_loopback(registry: CollectorRegistry) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = MetricsServer("::1", 0, registry=registry)
    try:
        server.start()
    except ConfigurationError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert server.address == f"[::1]:{server.port}"
        assert get(f"http://[::1]:{server.port}/metrics")[0] == 200
    finally:
        server.stop()


def test_rejects_a_bad_port() -> None:
    with pytest.raises(ValueError, match="port"):
        MetricsServer("127.0.0.1", 70000)


# --- --metrics-addr -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        (":9100", ("0.0.0.0", 9100)),  # Prometheus' exporters' convention: every interface
        ("9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:9200", ("0.0.0.0", 9200)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:9100", ("::1", 9100)),
        ("[::]:65535", ("::", 65535)),
    ],
)
def test_parse_metrics_addr(text: str, expected: tuple[str, int]) -> None:
    assert parse_metrics_addr(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "host", "host:", ":0", ":65536", "::1:9100", "[]:9100", "h:-1", "h:9x", "http://127.0.0.1:9100"],
)
def test_parse_metrics_addr_rejects_with_the_value(text: str) -> None:
    with pytest.raises(ValueError, match="invalid metrics address"):
        parse_metrics_addr(text)


def test_a_metrics_address_given_as_a_url_with_a_password_is_refused_masked() -> None:
    with pytest.raises(ValueError, match="invalid metrics address") as refused:
        parse_metrics_addr("http://scrape:s3cr3t-pw@0.0.0.0:9100/metrics")
    assert "s3cr3t-pw" not in str(refused.value) and "scrape:***@" in str(refused.value)
    with pytest.raises(ValueError, match="invalid metrics address") as refused:
        parse_metrics_addr("scrape:s3cr3t-pw@0.0.0.0:9100")
    assert "s3cr3t-pw" not in str(refused.value)


# --- examples/ ----------------------------------------------------------------------------------------------


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def dashboard_queries() -> list[str]:
    dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_queries_use_exactly_the_exposed_metric_names(registry: CollectorRegistry) -> None:
    metrics = SwarrowMetrics(registry)
    metrics.for_queue("q").stopped("signal")  # stop children exist only after a stop
    metrics.replies.labels(queue="q", result="sent").inc()  # reply children only after a reply
    exposed = {sample.name for family in registry.collect() for sample in family.samples}
    used = {name for expr in dashboard_queries() for name in re.findall(r"\b(?:swarrow|process)_\w+", expr)}
    assert used, "the dashboard queries no metric"
    assert used <= exposed, used - exposed
    swarrow_families = {
        f"{family.name}" for family in registry.collect() if family.name.startswith("swarrow_")
    }
    covered = {family for family in swarrow_families if any(name.startswith(family) for name in used)}
    assert covered == swarrow_families  # every family has a panel


def test_prometheus_example_scrapes_the_default_address() -> None:
    text = (EXAMPLES / "prometheus.yml").read_text()
    assert "job_name: swarrow" in text
    assert f"{DEFAULT_HOST}:{DEFAULT_PORT}" in text
    promtool = shutil.which("promtool")
    if promtool is not None:
        check = subprocess.run(
            [promtool, "check", "config", str(EXAMPLES / "prometheus.yml")], capture_output=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
