"""swarrow._metrics_accumulator: plain counts pushed as deltas, flushed whenever the registry is read."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest

from swarrow._metrics_accumulator import histogram_values
from swarrow.metrics import DURATION_BUCKETS, SwarrowMetrics


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"queue": "q", **labels})


def test_histogram_values_finds_the_bucket_and_sum_values_of_this_prometheus_client() -> None:
    child = Histogram("h", "h", ["queue"], buckets=DURATION_BUCKETS, registry=None).labels(queue="q")
    values = histogram_values(child, DURATION_BUCKETS)
    assert values is not None
    buckets, total = values
    assert len(buckets) == len(DURATION_BUCKETS) + 1  # +Inf
    buckets[2].inc(3)
    total.inc(0.25)
    assert [s.value for s in child._child_samples()][:4] == [0, 0, 3, 3]  # cumulative from the third
    assert child._sum.get() == 0.25


def test_histogram_values_is_none_when_the_layout_differs() -> None:
    def child() -> Histogram:
        return Histogram("h", "h", buckets=DURATION_BUCKETS, registry=None)

    assert histogram_values(child(), (0.1, 1.0)) is None  # other bounds
    renamed = child()
    del renamed._buckets
    assert histogram_values(renamed, DURATION_BUCKETS) is None
    no_sum = child()
    del no_sum._sum
    assert histogram_values(no_sum, DURATION_BUCKETS) is None
    no_bounds = child()
    del no_bounds._upper_bounds
    assert histogram_values(no_bounds, DURATION_BUCKETS) is None


def test_collecting_the_registry_pushes_pending_counts_before_the_families_are_read() -> None:
    registry = CollectorRegistry()
    pending = SwarrowMetrics(registry).for_queue("q").pending
    pending.received += 5
    pending.processed["acked"] += 4
    pending.in_flight += 1
    pending.buckets[0] += 3
    pending.buckets[-1] += 1
    pending.duration_sum += 2000.5
    # one pass of collect(): it would read zeros if the flush ran after the families
    assert sample(registry, "swarrow_messages_received_total") == 5
    assert sample(registry, "swarrow_messages_processed_total", outcome="acked") == 4
    assert sample(registry, "swarrow_messages_in_flight") == 1
    assert sample(registry, "swarrow_message_duration_seconds_bucket", le="0.001") == 3
    assert sample(registry, "swarrow_message_duration_seconds_bucket", le="1800.0") == 3
    assert sample(registry, "swarrow_message_duration_seconds_bucket", le="+Inf") == 4
    assert sample(registry, "swarrow_message_duration_seconds_count") == 4
    assert sample(registry, "swarrow_message_duration_seconds_sum") == 2000.5
    assert b'swarrow_messages_received_total{queue="q"} 5.0' in generate_latest(registry)


def test_flush_pushes_only_what_changed_since_the_last_flush() -> None:
    registry = CollectorRegistry()
    bound = SwarrowMetrics(registry).for_queue("q")
    bound.pending.received += 2
    bound.flush()
    bound.flush()
    assert sample(registry, "swarrow_messages_received_total") == 2
    bound.pending.received += 1
    bound.pending.in_flight += 1
    bound.flush()
    bound.pending.in_flight -= 1
    assert sample(registry, "swarrow_messages_received_total") == 3
    assert sample(registry, "swarrow_messages_in_flight") == 0


def test_direct_writes_to_the_children_add_to_the_pending_counts() -> None:
    registry = CollectorRegistry()
    bound = SwarrowMetrics(registry).for_queue("q")
    bound.received.inc(10)
    bound.duration.observe(0.002)
    bound.pending.received += 1
    bound.pending.buckets[1] += 1
    bound.pending.duration_sum += 0.002
    assert sample(registry, "swarrow_messages_received_total") == 11
    assert sample(registry, "swarrow_message_duration_seconds_bucket", le="0.0025") == 2
    assert sample(registry, "swarrow_message_duration_seconds_sum") == 0.004


def test_the_global_registry_flushes_on_collection_too() -> None:
    metrics = SwarrowMetrics.for_registry()  # registry=None: prometheus-client's REGISTRY
    assert SwarrowMetrics.for_registry(REGISTRY) is metrics
    bound = metrics.for_queue("test-accumulator-global")
    before = REGISTRY.get_sample_value("swarrow_messages_received_total", {"queue": bound.queue})
    bound.pending.received += 7
    after = REGISTRY.get_sample_value("swarrow_messages_received_total", {"queue": bound.queue})
    assert before is not None and after == before + 7


def test_a_duplicate_family_set_leaves_no_flusher_behind() -> None:
    registry = CollectorRegistry()
    SwarrowMetrics(registry, process_metrics=False)
    collectors = len(registry._collector_to_names)
    with pytest.raises(ValueError, match="Duplicated"):
        SwarrowMetrics(registry, process_metrics=False)
    assert len(registry._collector_to_names) == collectors
