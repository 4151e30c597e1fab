"""`swarrow consume --workers N` as a real process tree against RabbitMQ: recycling, crash loops, signals.

Each test runs the real command (`python -m swarrow consume … --workers N`), reads the pool's
`/status` and `/metrics`, and the ids the callback (tests/pool_callbacks.py) appended to a file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from swarrow import Message
from swarrow.amqp import AmqpBroker

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Pool:
    """A `swarrow consume --workers` process, its endpoint and its log."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path, record: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.record = record

    def get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                body: bytes = response.read()
                return body
        except OSError:
            return None

    def status(self) -> dict[str, Any] | None:
        body = self.get("/status")
        return None if body is None else json.loads(body)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
        text = (self.get("/metrics") or b"").decode()
        total = 0.0
        for line in text.splitlines():
            match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? ([-+\d.eEinfNa]+)$", line)
            if match is None or match.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(match.group(3))
        return total

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the pool exited ({self.process.returncode}) waiting for {what}\n{self.logs()}"
                )
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; status: {self.status()}\n{self.logs()[-3000:]}")

    def ids(self) -> list[str]:
        if not self.record.exists():
            return []
        return [line.split()[0] for line in self.record.read_text().splitlines() if line]

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def _pool(
    tmp_path: Path, amqp_url: str, queue: str, *args: str, target: str = "pool_callbacks:record_id"
) -> Iterator[Pool]:
    port = _free_port()
    log = tmp_path / "pool.log"
    record = tmp_path / "record"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        "POOL_TEST_RECORD": str(record),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [
        sys.executable, "-m", "swarrow", "consume", target, "--queue", queue, "--url", amqp_url,
        "--no-retry", "--no-log", "--metrics-addr", f"127.0.0.1:{port}", *args,
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path)
    pool = Pool(process, port, log, record)
    try:
        yield pool
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _publish(broker: AmqpBroker, queue: str, ids: range) -> None:
    publisher = broker.publisher()
    for n in ids:
        # Persistent: a broker restarted by a concurrent test must not drop the poison message.
        await publisher.publish(Message(body=str(n).encode(), message_id=str(n), delivery_mode=2), queue)


@pytest.fixture
async def declared(amqp_broker: AmqpBroker, queue_name: str) -> AmqpBroker:
    await amqp_broker.declare_queue(queue_name)
    return amqp_broker


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_three_workers_recycled_every_100_messages_process_all_1000(
    declared: AmqpBroker, amqp_url: str, queue_name: str, tmp_path: Path
) -> None:
    await _publish(declared, queue_name, range(1000))
    with _pool(
        tmp_path, amqp_url, queue_name, "--workers", "3", "--max-messages", "100", "--prefetch", "20"
    ) as pool:
        await anyio.to_thread.run_sync(lambda: pool.wait_for("1000 ids", lambda: len(pool.ids()) >= 1000, 45))
        await anyio.to_thread.run_sync(
            lambda: pool.wait_for(
                "the acks counted",
                lambda: pool.metric("swarrow_messages_processed_total", outcome="acked") >= 1000,
            )
        )
        status = pool.status()
        recycled = pool.metric("swarrow_worker_restarts_total", reason="max_messages")
        acked = pool.metric("swarrow_messages_processed_total", queue=queue_name, outcome="acked")
        received = pool.metric("swarrow_messages_received_total", queue=queue_name)
        pool.process.send_signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(lambda: pool.process.wait(30))
    ids = pool.ids()
    assert code == 0, pool.logs()[-3000:]
    assert sorted(ids, key=int) == [str(n) for n in range(1000)]  # every message, none twice
    assert 8 <= recycled <= 10  # 1000 / 100, less the partial runs of the last workers
    assert acked == 1000 and received == 1000  # summed over all 10+ worker processes, dead ones too
    assert status is not None and status["workers_desired"] == 3
    assert sum(w["restarts"] for w in status["workers"]) == recycled
    assert {w["last_exit_reason"] for w in status["workers"]} <= {"max_messages", None}
    assert all(isinstance(w["pid"], int) for w in status["workers"])
    assert all(w["rss"] > 0 for w in status["workers"] if w["rss"] is not None)  # None: not reported yet
    assert all(w["last_exit"]["messages_done"] == 100 for w in status["workers"] if w["last_exit"])
    message = await declared.inspect_queue(queue_name)
    assert message is not None and message.message_count == 0


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_a_crash_loop_is_restarted_with_growing_delays(
    declared: AmqpBroker, amqp_url: str, queue_name: str, tmp_path: Path
) -> None:
    await _publish(declared, queue_name, range(1))  # redelivered to every new worker: a poison message
    with _pool(tmp_path, amqp_url, queue_name, "--workers", "2", target="pool_callbacks:crash") as pool:
        await anyio.to_thread.run_sync(
            lambda: pool.wait_for(
                "both workers restarted 3 times",
                lambda: pool.metric("swarrow_worker_restarts_total", reason="crashed") >= 6,
                40,
            )
        )
        status = pool.status()
        pool.process.send_signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(lambda: pool.process.wait(30))
    logs = pool.logs()
    delays: dict[str, list[float]] = {}
    for worker, delay in re.findall(r"worker (\d+) \(pid \d+\) exited .*restarting in ([\d.]+)s", logs):
        delays.setdefault(worker, []).append(float(delay))
    assert code == 0
    # Each worker (slot) backs off on its own: 1 s, 2 s, 4 s … as the poison message reaches it again.
    assert {worker: d[:3] for worker, d in delays.items()} == {"0": [1.0, 2.0, 4.0], "1": [1.0, 2.0, 4.0]}, (
        logs
    )
    assert status is not None
    assert {w["last_exit"]["reason"] for w in status["workers"]} == {"crashed"}
    assert pool.record.read_text().count("crash") >= 6


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_sighup_rolls_every_worker_keeping_n_minus_1_consuming(
    declared: AmqpBroker, amqp_url: str, queue_name: str, tmp_path: Path
) -> None:
    with _pool(tmp_path, amqp_url, queue_name, "--workers", "3", "--grace-period", "5s") as pool:
        await anyio.to_thread.run_sync(
            lambda: pool.wait_for("3 consuming", lambda: (pool.status() or {}).get("workers_consuming") == 3)
        )
        first = pool.status()
        assert first is not None
        before = {w["pid"] for w in first["workers"]}
        pool.process.send_signal(signal.SIGHUP)
        seen: list[int] = []

        def rolled() -> bool:
            status = pool.status()
            if status is None:
                return False
            seen.append(status["workers_consuming"])
            return bool(status["restarts"].get("rolling_restart") == 3 and status["state"] == "running")

        publishing = anyio.create_task_group()
        async with publishing:
            publishing.start_soon(_publish, declared, queue_name, range(300))
            await anyio.to_thread.run_sync(lambda: pool.wait_for("the rolling restart", rolled, 45))
        after = pool.status()
        await anyio.to_thread.run_sync(lambda: pool.wait_for("300 ids", lambda: len(set(pool.ids())) >= 300))
        pool.process.send_signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(lambda: pool.process.wait(30))
    assert code == 0
    assert after is not None
    assert before.isdisjoint({w["pid"] for w in after["workers"]})
    assert len(seen) > 5 and min(seen) >= 2, seen  # N-1 = 2 at worst
    assert set(pool.ids()) == {str(n) for n in range(300)}


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_an_import_error_stops_the_pool_with_exit_3_without_restarts(
    declared: AmqpBroker, amqp_url: str, queue_name: str, tmp_path: Path
) -> None:
    with _pool(tmp_path, amqp_url, queue_name, "--workers", "2", target="pool_callbacks:missing") as pool:
        code = await anyio.to_thread.run_sync(lambda: pool.process.wait(20))
    assert code == 3
    assert "restarting" not in pool.logs()


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_the_pools_metrics_carry_the_queues_backlog_and_consumers(
    declared: AmqpBroker, amqp_url: str, queue_name: str, tmp_path: Path
) -> None:
    # What KEDA's Prometheus scaler reads from a pool: one backlog series (not one per worker, not
    # summed), the queue's consumers, and each worker's utilization.
    await _publish(declared, queue_name, range(20))
    release = tmp_path / "release"
    os.environ["POOL_TEST_RELEASE"] = str(release)
    try:
        with _pool(
            tmp_path, amqp_url, queue_name, "--workers", "2", "--concurrency", "1", "--prefetch", "1",
            "--queue-stats-interval", "200ms", target="pool_callbacks:hold",
        ) as pool:  # fmt: skip
            await anyio.to_thread.run_sync(
                lambda: pool.wait_for(
                    "18 ready and 2 consumers on the pool's /metrics",
                    lambda: (
                        pool.metric("swarrow_queue_messages_ready", queue=queue_name) == 18
                        and pool.metric("swarrow_queue_consumers", queue=queue_name) == 2
                    ),
                    30,
                )
            )
            text = (pool.get("/metrics") or b"").decode()
            release.touch()
            await anyio.to_thread.run_sync(
                lambda: pool.wait_for(
                    "the backlog drained", lambda: pool.metric("swarrow_queue_messages_ready") == 0, 30
                )
            )
            pool.process.send_signal(signal.SIGTERM)
            code = await anyio.to_thread.run_sync(lambda: pool.process.wait(30))
    finally:
        os.environ.pop("POOL_TEST_RELEASE", None)
    assert code == 0, pool.logs()[-3000:]
    ready = [line for line in text.splitlines() if line.startswith("swarrow_queue_messages_ready{")]
    assert len(ready) == 1, ready
    utilization = [line for line in text.splitlines() if line.startswith("swarrow_worker_utilization{")]
    assert len(utilization) == 2, utilization
    assert sorted(pool.ids(), key=int) == [str(n) for n in range(20)]


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_the_pools_metrics_carry_the_backlog_and_consumers_of_every_queue(
    declared: AmqpBroker, amqp_url: str, queue_name: str, tmp_path: Path
) -> None:
    # --workers 2 with two queues: the second queue's backlog and consumers must be polled too
    # (before, a pool worker polled only the first queue: swarrow_queue_consumers{second} stayed 0).
    second = f"{queue_name}.second"
    await declared.declare_queue(second)
    os.environ["POOL_TEST_RELEASE"] = str(tmp_path / "release")
    try:
        await _publish(declared, second, range(5))
        with _pool(
            tmp_path, amqp_url, queue_name, "--queue", second, "--workers", "2", "--concurrency", "1",
            "--prefetch", "1", "--queue-stats-interval", "200ms", target="pool_callbacks:hold",
        ) as pool:  # fmt: skip
            await anyio.to_thread.run_sync(
                lambda: pool.wait_for(
                    "3 ready and 2 consumers of the second queue on the pool's /metrics",
                    lambda: (
                        pool.metric("swarrow_queue_messages_ready", queue=second) == 3
                        and pool.metric("swarrow_queue_consumers", queue=second) == 2
                        and pool.metric("swarrow_queue_consumers", queue=queue_name) == 2
                    ),
                    20,
                )
            )
            (tmp_path / "release").touch()
            await anyio.to_thread.run_sync(lambda: pool.wait_for("all 5", lambda: len(pool.ids()) == 5, 20))
            pool.process.send_signal(signal.SIGTERM)
            code = await anyio.to_thread.run_sync(lambda: pool.process.wait(30))
        assert code == 0, pool.logs()[-3000:]
        assert sorted(pool.ids(), key=int) == [str(n) for n in range(5)]
    finally:
        os.environ.pop("POOL_TEST_RELEASE", None)
        await declared.delete_queue(second)
