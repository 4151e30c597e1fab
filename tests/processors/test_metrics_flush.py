"""MetricsProcessor counts in plain ints: every read of the registry, the heartbeat and the lifespan's end
push them into prometheus-client, with the values a per-message `Histogram.observe()` would have given."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from itertools import cycle, islice
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from processors.ack import AckProcessor
from processors.metrics import MetricsProcessor
from swarrow import CallbackProcessor, Consumer, Layer, MemoryBroker, Message, Stack
from swarrow.metrics import DURATION_BUCKETS
from swarrow.outcome import OUTCOMES, record_outcome

pytestmark = pytest.mark.anyio

Q = "orders"
FAMILY = "swarrow_message_duration_seconds"

# Every bound exactly (le is inclusive), just above each, below the first, beyond the last (+Inf).
DURATIONS = [
    0.0, 1e-9, 0.0004, 0.07, 12.3456789, 3600.0,
    *DURATION_BUCKETS, *(bound * 1.000001 for bound in DURATION_BUCKETS),
]  # fmt: skip


class Durations:
    """A clock under which each message lasts the next of `durations`: 0.0 at its start, that at its end."""

    def __init__(self, durations: Iterable[float]) -> None:
        self.durations = iter(durations)
        self.starting = True

    def __call__(self) -> float:
        self.starting = not self.starting
        return next(self.durations) if self.starting else 0.0


def histogram(registry: CollectorRegistry) -> dict[tuple[str, str | None], float]:
    """The duration family's samples of queue Q, keyed by (name, le)."""
    return {
        (s.name, s.labels.get("le")): s.value
        for family in registry.collect()
        if family.name == FAMILY
        for s in family.samples
        if s.labels.get("queue") == Q and not s.name.endswith("_created")
    }


def observed(durations: Iterable[float]) -> dict[tuple[str, str | None], float]:
    """What a plain prometheus-client Histogram shows after observing `durations` one by one."""
    registry = CollectorRegistry()
    child = Histogram(FAMILY, "d", ["queue"], buckets=DURATION_BUCKETS, registry=registry).labels(queue=Q)
    for duration in durations:
        child.observe(duration)
    return histogram(registry)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"queue": Q, **labels})


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


async def settle(message: Message, /) -> bool:
    """The innermost layer: records the outcome the body names, raises on b"raise", nothing on b""."""
    if message.body == b"raise":
        raise RuntimeError("boom")
    if message.body:
        record_outcome(message.body.decode())  # type: ignore[arg-type]
    return True


@pytest.mark.parametrize("bucketed", [True, False], ids=["bucket-values", "observe-fallback"])
async def test_values_match_a_per_message_observe_exactly(
    bucketed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not bucketed:  # as with a prometheus-client whose histogram internals are laid out otherwise
        monkeypatch.setattr("swarrow._metrics_accumulator.histogram_values", lambda child, bounds: None)
    registry = CollectorRegistry()
    bodies = list(islice(cycle([o.encode() for o in OUTCOMES] + [b"", b"raise"]), len(DURATIONS) * 3))
    durations = DURATIONS * 3
    processor = MetricsProcessor(settle, registry=registry, clock=Durations(durations))
    for body in bodies:
        try:
            await processor(Message(body, queue=Q))
        except RuntimeError:
            assert body == b"raise"
    assert processor.metrics.for_queue(Q).pending.bucketed is bucketed
    assert histogram(registry) == observed(durations)  # every bucket, _count and _sum, to the bit
    assert sample(registry, "swarrow_messages_received_total") == len(bodies)
    assert sample(registry, "swarrow_messages_in_flight") == 0
    for outcome in OUTCOMES:
        expected = bodies.count(outcome.encode()) + (bodies.count(b"raise") if outcome == "failed" else 0)
        assert sample(registry, "swarrow_messages_processed_total", outcome=outcome) == expected, outcome


def test_the_hot_path_uses_the_bucket_values_on_this_prometheus_client() -> None:
    processor = MetricsProcessor(settle, registry=CollectorRegistry())
    assert processor.metrics.for_queue(Q).pending.bucketed


async def test_a_scrape_of_the_endpoint_mid_run_shows_the_current_values() -> None:
    broker = MemoryBroker("metrics-scrape")
    broker.declare_queue_nowait(Q)
    for _ in range(5):
        broker.publish_nowait(Message(b"x"), Q)
    provider = broker.provider(Q, prefetch=10)
    registry = CollectorRegistry()
    inside, release = anyio.Event(), anyio.Event()
    handled = 0

    async def handle(message: Message) -> None:
        nonlocal handled
        handled += 1
        if handled == 4:
            inside.set()
            await release.wait()
        if handled == 5:
            consumer.control.stop("done")

    # A heartbeat an hour away: only the scrape itself can bring the values up to date. The layer
    # ignores the stack's callback processor: the test needs this instance for its port.
    metrics = MetricsProcessor(
        AckProcessor(CallbackProcessor(handle), provider=provider),
        registry=registry,
        address=("127.0.0.1", 0),
        heartbeat_interval=3600.0,
        liveness_timeout=7200.0,
    )
    consumer = Consumer(provider, Stack(lambda inner: metrics, callback=handle))
    assert metrics.server is not None
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            await inside.wait()
            body = await anyio.to_thread.run_sync(get, f"http://127.0.0.1:{metrics.server.port}/metrics")
            release.set()
    assert 'swarrow_messages_received_total{queue="orders"} 4.0' in body
    assert 'swarrow_messages_processed_total{outcome="acked",queue="orders"} 3.0' in body
    assert 'swarrow_messages_in_flight{queue="orders"} 1.0' in body
    assert 'swarrow_message_duration_seconds_count{queue="orders"} 3.0' in body
    assert sample(registry, "swarrow_messages_processed_total", outcome="acked") == 5


async def test_a_thread_collecting_in_a_loop_while_messages_flow_leaves_exact_totals() -> None:
    count = 20_000
    broker = MemoryBroker("metrics-threads")
    broker.declare_queue_nowait(Q)
    for _ in range(count):
        broker.publish_nowait(Message(b"x"), Q)
    provider = broker.provider(Q, prefetch=500)
    registry = CollectorRegistry()
    # Powers of two: the sum is exact however the flushes split it, so the totals can be compared with ==.
    durations = list(islice(cycle([2.0**-11, 2.0**-7, 0.5, 3.0, 2.0**12]), count))
    handled = 0

    def handle(message: Message) -> None:
        nonlocal handled
        handled += 1
        if handled == count:
            consumer.control.stop("done")

    consumer = Consumer(
        provider,
        Stack(
            Layer(MetricsProcessor, registry=registry, heartbeat_interval=0.01, clock=Durations(durations)),
            Layer(AckProcessor, provider=provider),
            callback=handle,
        ),
    )
    started, stop = threading.Event(), threading.Event()
    seen: list[float] = []

    def scrape() -> None:
        while not stop.is_set():
            list(registry.collect())
            seen.append(sample(registry, "swarrow_messages_received_total") or 0.0)
            started.set()

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        assert await anyio.to_thread.run_sync(started.wait, 5)
        scrapes_before = len(seen)
        with anyio.fail_after(30):
            await consumer.run()
        scrapes_during = len(seen) - scrapes_before
    finally:
        stop.set()
        await anyio.to_thread.run_sync(scraper.join, 5)
    assert scrapes_during > 1
    assert seen == sorted(seen)  # never went back
    assert histogram(registry) == observed(durations)
    assert sample(registry, "swarrow_messages_received_total") == count
    assert sample(registry, "swarrow_messages_processed_total", outcome="acked") == count
    assert sample(registry, "swarrow_messages_in_flight") == 0


# --- multiprocess mode: nothing collects a worker's registry, its supervisor reads the files -------------

_WORKER = """
import sys
from pathlib import Path

import anyio

from processors.ack import AckProcessor
from processors.metrics import MetricsProcessor
from swarrow import CallbackProcessor, Consumer, Layer, MemoryBroker, Message, Stack

signals, mode = Path(sys.argv[1]), sys.argv[2]
total = {"beat": 6, "exit": 6, "cancel": 4}[mode]
broker = MemoryBroker("worker")
broker.declare_queue_nowait("orders")
for _ in range(total):
    broker.publish_nowait(Message(b"x"), "orders")
provider = broker.provider("orders", prefetch=10)
handled = 0
hung = anyio.Event()


async def handle(message):
    global handled
    handled += 1
    if handled < total:
        return
    if mode == "beat":  # the last message waits for the test's go-ahead
        (signals / "inside").touch()
        while not (signals / "go").exists():
            await anyio.sleep(0.01)
    elif mode == "cancel":
        hung.set()
        await anyio.sleep_forever()
    consumer.control.stop("done")


beat = 0.05 if mode == "beat" else 3600.0
metrics = Layer(MetricsProcessor, heartbeat_interval=beat, liveness_timeout=2 * beat + 1)
consumer = Consumer(provider, Stack(metrics, Layer(AckProcessor, provider=provider), callback=handle))


async def main():
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        if mode == "cancel":
            await hung.wait()
            tg.cancel_scope.cancel()


anyio.run(main)
"""


def _worker(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[bytes], Path]:
    files = tmp_path / "metrics"
    files.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(files)}
    process = subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path), mode], env=env)
    return process, files


def _files(files: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(files))  # type: ignore[no-untyped-call]
    return registry


def _wait(what: str, condition: object, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the worker exited ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_multiprocess_values_reach_the_files_on_each_heartbeat_and_at_the_end(tmp_path: Path) -> None:
    process, files = _worker(tmp_path, "beat")
    try:
        _wait("the last message", (tmp_path / "inside").exists, process)
        # The last message is still inside: only the heartbeat can have written these.
        _wait(
            "the heartbeat's flush",
            lambda: sample(_files(files), "swarrow_messages_received_total") == 6
            and sample(_files(files), "swarrow_messages_processed_total", outcome="acked") == 5,
            process,
        )
        mid = _files(files)
        assert sample(mid, "swarrow_messages_in_flight") == 1
        assert sample(mid, f"{FAMILY}_count") == 5
        (tmp_path / "go").touch()
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()
    final = _files(files)
    assert sample(final, "swarrow_messages_processed_total", outcome="acked") == 6
    assert sample(final, f"{FAMILY}_count") == 6


@pytest.mark.parametrize("mode", ["exit", "cancel"])
def test_multiprocess_values_reach_the_files_when_the_lifespan_ends(tmp_path: Path, mode: str) -> None:
    # An hour between heartbeats: the only flush after the first message is the lifespan's last.
    process, files = _worker(tmp_path, mode)
    try:
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()
    registry = _files(files)
    total = 6 if mode == "exit" else 4  # cancelled: the last message never settles
    assert sample(registry, "swarrow_messages_received_total") == total
    assert sample(registry, f"{FAMILY}_count") == total
    assert sample(registry, "swarrow_messages_processed_total", outcome="acked") == (
        total if mode == "exit" else total - 1
    )
