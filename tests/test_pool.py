"""The `--workers` supervisor: restart policy, status files, metric files, and pools of stand-in workers.

The stand-in workers (tests/pool_callbacks.py) are real Consumers on in-memory queues, with the real
signal, limit and status layers, so these tests need no broker; the RabbitMQ ones live in
tests/integration/test_pool_rabbitmq.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pool_callbacks  # tests/ is on sys.path (pytest's rootdir-relative imports)
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from processors.ack import AckProcessor
from processors.max_messages import MaxMessagesProcessor
from processors.pool_status import PoolStatusProcessor
from swarrow import Consumer, Layer, MemoryBroker, Message, Stack
from swarrow.pool import Backoff, WorkerPool, classify_exit, strip_options
from swarrow.pool.slots import Slot
from swarrow.pool.status import (
    WorkerStatus,
    clean_multiproc_dir,
    compact_dead_process,
    pool_worker_env,
    read_status,
    status_path,
    write_status,
)

FAST = Backoff(initial=0.05, maximum=0.4, reset_after=30.0)


def _exit(code: int, *, uptime: float = 5.0, done: int = 10, reason: str | None = "max_messages") -> Any:
    status = WorkerStatus(1, 0, 0.0, 0.0, done, 0, False, reason if code == 0 else None)
    return classify_exit(1, code, status, uptime=uptime)


# -- policy ---------------------------------------------------------------------------------------------


def test_backoff_doubles_from_initial_and_caps_at_maximum() -> None:
    backoff = Backoff(initial=1.0, maximum=30.0)
    assert [backoff.delay(n) for n in range(8)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.delay(10_000) == 30.0


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"initial": 0}, "initial"),
        ({"maximum": -1}, "maximum"),
        ({"initial": 2.0, "maximum": 1.0}, "maximum"),
        ({"reset_after": -1}, "reset_after"),
    ],
)
def test_backoff_rejects_options_that_cannot_work(kwargs: dict[str, float], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Backoff(**kwargs)


def test_slot_restarts_a_graceful_exit_at_once_and_backs_off_crashes() -> None:
    slot = Slot(0)
    crashes = [slot.after_exit(_exit(1, uptime=0.1), FAST) for _ in range(5)]
    assert crashes == [0.05, 0.1, 0.2, 0.4, 0.4]
    assert slot.after_exit(_exit(0, uptime=2.0), FAST) == 0.0
    assert slot.after_exit(_exit(1, uptime=0.1), FAST) == 0.05  # a good run resets the count


def test_slot_forgets_crashes_after_a_long_life() -> None:
    slot = Slot(0)
    for _ in range(4):
        slot.after_exit(_exit(1, uptime=0.1), FAST)
    assert slot.after_exit(_exit(1, uptime=31.0), FAST) == 0.05


def test_instant_graceful_exit_without_messages_is_backed_off_not_looped() -> None:
    slot = Slot(0)
    assert slot.after_exit(_exit(0, uptime=0.2, done=0, reason="idle"), FAST) == 0.05
    assert slot.after_exit(_exit(0, uptime=0.2, done=3), FAST) == 0.0


@pytest.mark.parametrize(
    ("code", "reason", "fatal"),
    [
        (0, "max_messages", False),
        (1, "crashed", False),
        (2, "usage_error", True),
        (3, "import_error", True),
        (4, "broker_unreachable", False),
        (-9, "killed", False),
        (70, "crashed", False),
    ],
)
def test_classify_exit_names_the_reason(code: int, reason: str, fatal: bool) -> None:
    info = _exit(code)
    assert (info.reason, info.fatal, info.graceful) == (reason, fatal, code == 0)


def test_classify_exit_without_status_says_graceful_and_killed_names_the_signal() -> None:
    assert classify_exit(5, 0, None, uptime=1.0).reason == "graceful"
    assert classify_exit(5, -signal.SIGKILL, None, uptime=1.0).detail == "killed by SIGKILL"


def test_strip_options_removes_the_pool_only_options_in_both_spellings() -> None:
    args = [
        "m:f",
        "--queue",
        "q",
        "--workers",
        "3",
        "--metrics-addr=:9100",
        "--prefetch",
        "5",
        "--",
        "--workers",
    ]
    assert strip_options(args, {"--workers": True, "--metrics-addr": True}) == [
        "m:f",
        "--queue",
        "q",
        "--prefetch",
        "5",
        "--",
        "--workers",
    ]


def test_pool_rejects_a_bad_worker_count() -> None:
    with pytest.raises(ValueError, match="workers"):
        WorkerPool(["true"], workers=0)


# -- status and metric files ----------------------------------------------------------------------------


def test_worker_status_round_trips_through_its_file(tmp_path: Path) -> None:
    status = WorkerStatus(42, 1, 10.0, 11.0, 7, 1024, True, "max_messages", "processed 7")
    write_status(tmp_path, status)
    assert read_status(tmp_path, 42) == status
    assert read_status(tmp_path, 43) is None
    status_path(tmp_path, 44).write_text("{not json")
    assert read_status(tmp_path, 44) is None
    assert list(tmp_path.glob("*.tmp")) == []


def test_pool_worker_env_reads_slot_and_directory(tmp_path: Path) -> None:
    assert pool_worker_env({}) is None
    env = {"SWARROW_POOL_WORKER": "2", "SWARROW_POOL_DIR": str(tmp_path)}
    found = pool_worker_env(env)
    assert found is not None and (found.slot, found.directory) == (2, tmp_path)
    with pytest.raises(ValueError, match="SWARROW_POOL_WORKER"):
        pool_worker_env({"SWARROW_POOL_WORKER": "x", "SWARROW_POOL_DIR": str(tmp_path)})


_WRITE_METRICS = """
import sys
from prometheus_client import Counter, Gauge, Histogram
Counter("t_done", "d", ["q"]).labels(q="a").inc(int(sys.argv[1]))
Histogram("t_seconds", "s", buckets=(1.0,)).observe(0.5)
Gauge("t_in_flight", "f", multiprocess_mode="livesum").set(1)
"""


def _totals(path: Path) -> dict[str, float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for metric in registry.collect()
        for s in metric.samples
    }


def _write_metrics(path: Path, amount: int) -> int:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(path)}
    process = subprocess.run([sys.executable, "-c", _WRITE_METRICS, str(amount)], env=env, check=True)
    assert process.returncode == 0
    return int(sorted(path.glob("counter_*.db"), key=os.path.getmtime)[-1].stem.split("_")[1])


def test_compacting_dead_workers_keeps_totals_and_bounds_the_files(tmp_path: Path) -> None:
    pids = [_write_metrics(tmp_path, amount) for amount in (3, 4, 5)]
    before = _totals(tmp_path)
    assert before["t_done_total[('q', 'a')]"] == 12
    lock = threading.Lock()
    for pid in pids:
        compact_dead_process(tmp_path, pid, lock)
    after = _totals(tmp_path)
    assert after["t_done_total[('q', 'a')]"] == 12
    assert after["t_seconds_count[]"] == 3
    assert after["t_seconds_bucket[('le', '1.0')]"] == 3
    assert "t_in_flight[]" not in after or after["t_in_flight[]"] == 0  # dead: no longer live
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_archive.db", "histogram_archive.db"]


def test_clean_multiproc_dir_removes_stale_value_files_only(tmp_path: Path) -> None:
    (tmp_path / "counter_1.db").write_bytes(b"x")
    (tmp_path / "keep.txt").write_text("x")
    assert clean_multiproc_dir(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


# -- the worker side ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_pool_status_processor_reports_messages_and_the_stop_reason(tmp_path: Path) -> None:
    broker = MemoryBroker("pool-status")
    broker.declare_queue_nowait("q")
    for n in range(5):
        broker.publish_nowait(Message(body=str(n).encode()), "q")
    provider = broker.provider("q", prefetch=1)
    stack = Stack(
        Layer(MaxMessagesProcessor, limit=3),
        Layer(PoolStatusProcessor, directory=tmp_path, slot=1, provider=provider, interval=0.05),
        Layer(AckProcessor, provider=provider),
        callback=lambda message: None,
    )
    with anyio.fail_after(5):
        reason = await Consumer(provider, stack).run()
    status = read_status(tmp_path, os.getpid())
    assert reason.code == "max_messages"
    assert status is not None
    assert (status.slot, status.messages_done, status.consuming, status.stop_reason) == (
        1,
        3,
        False,
        "max_messages",
    )
    assert status.rss > 0


@pytest.mark.anyio
async def test_pool_status_processor_stops_the_worker_when_its_supervisor_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = MemoryBroker("pool-orphan")
    broker.declare_queue_nowait("q")
    provider = broker.provider("q", prefetch=1)
    processor = PoolStatusProcessor(lambda_inner, directory=tmp_path, slot=0, interval=0.04)
    stack = Stack(lambda inner: processor, callback=lambda message: None)
    real_parent = os.getppid()
    reparented = iter([real_parent])  # the first call (at start) sees the real parent, later ones init's
    monkeypatch.setattr("processors.pool_status.os.getppid", lambda: next(reparented, 1))
    with anyio.fail_after(5):
        reason = await Consumer(provider, stack).run()
    assert reason.code == "supervisor_gone"
    status = read_status(tmp_path, os.getpid())
    assert status is not None and status.stop_reason == "supervisor_gone"


async def lambda_inner(message: Message, /) -> bool:
    return True


def test_pool_status_processor_rejects_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directory"):
        PoolStatusProcessor(lambda_inner, directory=tmp_path / "nope", slot=0)


# -- pools of stand-in workers --------------------------------------------------------------------------


async def _until(condition: Callable[[], bool], pool: WorkerPool, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await pool._changed.wait()


@pytest.mark.anyio
async def test_pool_recycles_workers_at_their_limit_and_metrics_sum_over_all(tmp_path: Path) -> None:
    pool = WorkerPool(
        pool_callbacks.command("memory", "--limit", "20"),
        workers=2,
        directory=tmp_path,
        metrics_address=("127.0.0.1", 0),
    )
    scraped: dict[str, Any] = {}

    async def drive() -> None:
        await _until(lambda: sum(pool.restarts.values()) >= 6, pool)
        assert pool.server is not None
        base = f"http://127.0.0.1:{pool.server.port}"
        scraped["status"] = json.loads(await anyio.to_thread.run_sync(_get, base + "/status"))
        scraped["metrics"] = (await anyio.to_thread.run_sync(_get, base + "/metrics")).decode()
        pool.stop()

    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        with anyio.fail_after(20):
            code = await pool.run()
    assert code == 0
    assert pool.restarts["max_messages"] >= 6
    assert set(pool.restarts) == {"max_messages"}
    exits = [info for slot in pool.slots for info in slot.history]
    recycled = [info for info in exits if info.reason == "max_messages"]
    assert all(info.messages_done == 20 for info in recycled)
    # Every message any worker ever did is in the pool's total, dead workers included.
    assert _totals(tmp_path / "metrics")["pooltest_done_total[('worker', 'memory')]"] == sum(
        info.messages_done for info in exits
    )
    assert len(list((tmp_path / "metrics").glob("counter_*.db"))) <= 1  # dead workers folded in
    status = scraped["status"]
    assert status["workers_desired"] == 2 and len(status["workers"]) == 2
    assert {w["slot"] for w in status["workers"]} == {0, 1}
    assert any(w["last_exit_reason"] == "max_messages" for w in status["workers"])
    assert re.search(
        r'^swarrow_worker_restarts_total\{reason="max_messages"\} (\d+)', scraped["metrics"], re.M
    )
    total = re.search(r'^pooltest_done_total\{worker="memory"\} ([\d.]+)', scraped["metrics"], re.M)
    assert total is not None and float(total.group(1)) >= 6 * 20


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


@pytest.mark.anyio
async def test_crash_loop_is_restarted_with_growing_delays(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="swarrow.pool")
    pool = WorkerPool(pool_callbacks.command("exit", "1"), workers=1, backoff=FAST)

    async def drive() -> None:
        await _until(lambda: pool.slots[0].failures >= 5, pool)
        pool.stop()

    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        with anyio.fail_after(20):
            code = await pool.run()
    delays = [float(d) for d in re.findall(r"restarting in ([\d.]+)s", caplog.text)]
    assert delays[:5] == [0.05, 0.1, 0.2, 0.4, 0.4]
    assert pool.restarts["crashed"] >= 4
    assert code == 0  # stopped on request, not by the crashes


@pytest.mark.anyio
async def test_a_killed_worker_is_named_and_restarted_after_a_backoff() -> None:
    pool = WorkerPool(pool_callbacks.command("memory", "--delay", "0.01"), workers=2, backoff=FAST)
    victims: list[int] = []

    async def drive() -> None:
        await _until(lambda: all(s.current and s.current.status for s in pool.slots), pool)
        victim = pool.slots[1].current
        assert victim is not None
        victims.append(victim.pid)
        os.kill(victim.pid, signal.SIGKILL)
        await _until(lambda: pool.restarts["killed"] == 1 and pool.slots[1].current is not None, pool)
        pool.stop()

    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        with anyio.fail_after(20):
            assert await pool.run() == 0
    killed = pool.slots[1].history[0]
    assert (killed.pid, killed.reason, killed.detail) == (victims[0], "killed", "killed by SIGKILL")
    assert pool.slots[0].restarts == 0  # the other worker was left alone


@pytest.mark.anyio
async def test_a_worker_that_cannot_be_started_stops_the_pool_with_exit_1(tmp_path: Path) -> None:
    pool = WorkerPool([str(tmp_path / "no-such-program")], workers=2)
    with anyio.fail_after(10):
        assert await pool.run() == 1


@pytest.mark.anyio
@pytest.mark.parametrize("exit_code", [2, 3])
async def test_usage_or_import_error_stops_the_pool_with_that_code(exit_code: int) -> None:
    pool = WorkerPool(pool_callbacks.command("exit", str(exit_code)), workers=2, backoff=FAST)
    with anyio.fail_after(10):
        assert await pool.run() == exit_code
    assert sum(pool.restarts.values()) == 0


@pytest.mark.anyio
async def test_rolling_restart_replaces_every_worker_and_never_drops_below_n_consuming() -> None:
    pool = WorkerPool(pool_callbacks.command("memory", "--delay", "0.005"), workers=3, grace_period=5)
    seen: list[int] = []

    async def drive() -> None:
        await _until(lambda: pool.snapshot.consuming == 3, pool)
        before = {slot.current.pid for slot in pool.slots if slot.current is not None}
        pool.rolling_restart()
        with anyio.fail_after(20):
            while pool._rolling:
                seen.append(pool.snapshot.consuming)
                await pool._changed.wait()
        after = {slot.current.pid for slot in pool.slots if slot.current is not None}
        assert before.isdisjoint(after) and len(after) == 3
        pool.stop()

    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        with anyio.fail_after(30):
            assert await pool.run() == 0
    assert seen and min(seen) == 3  # replacement first: N consuming throughout, never N-1
    assert pool.restarts["rolling_restart"] == 3
    assert all(slot.last_exit is not None for slot in pool.slots)


# -- the supervisor as a process: signals ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _status(port: int) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(_get(f"http://127.0.0.1:{port}/status"))
        return data
    except OSError:
        return None


def _wait_consuming(port: int, count: int, process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the pool exited early"
        status = _status(port)
        if status is not None and status["workers_consuming"] >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"pool never had {count} consuming workers: {_status(port)}")


def _wait_state(port: int, state: str, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the pool exited early"
        status = _status(port)
        if status is not None and status["state"] == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"pool never reached state {state}: {_status(port)}")


def _start_pool(tmp_path: Path, *worker: str, workers: int = 2) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = _free_port()
    events = tmp_path / "events"
    env = {**os.environ, "POOL_TEST_EVENTS": str(events)}
    args = ["pool", "--workers", str(workers), "--port", str(port), "--grace-period", "10", *worker]
    process = subprocess.Popen(pool_callbacks.command(*args), env=env)
    return process, port, events


def test_sigterm_drains_every_worker_and_the_pool_exits_0(tmp_path: Path) -> None:
    process, port, events = _start_pool(tmp_path, "memory", "--delay", "0.01")
    try:
        _wait_consuming(port, 2, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()
    lines = events.read_text().splitlines()
    starts = [line.split()[1] for line in lines if line.startswith("start")]
    stops = {line.split()[1]: line.split()[2] for line in lines if line.startswith("stop")}
    assert len(starts) == 2
    assert stops == dict.fromkeys(starts, "signal")  # each drained once: a single SIGTERM each


def test_second_sigterm_stops_workers_now_instead_of_draining(tmp_path: Path) -> None:
    process, port, events = _start_pool(tmp_path, "memory", "--delay", "60")  # a message never finishes
    try:
        _wait_consuming(port, 2, process)
        process.send_signal(signal.SIGTERM)
        _wait_state(port, "stopping", process)  # two signals sent at once could be delivered as one
        assert process.poll() is None  # draining a 60 s message
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
    finally:
        process.kill()
        process.wait()
    assert events.read_text().count("stop ") == 2


# -- through the command line ---------------------------------------------------------------------------


def _swarrow(*args: str) -> list[str]:
    return [sys.executable, "-m", "swarrow", "consume", "pool_callbacks:record_id", *args]


def _env(tmp_path: Path) -> dict[str, str]:
    tests = str(Path(pool_callbacks.__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    env.pop("SWARROW_POOL_WORKER", None)
    return env


def test_consume_help_lists_workers_in_the_concurrency_section() -> None:
    from click.testing import CliRunner

    from swarrow.cli import cli

    result = CliRunner().invoke(cli, ["consume", "--help"])
    concurrency = result.output.split("Concurrency:")[1].split("Limits:")[0]
    assert "--workers" in concurrency and "--restart-backoff-max" in concurrency


def test_cli_pool_stops_with_the_workers_usage_error_instead_of_restarting(tmp_path: Path) -> None:
    # memory:// starts empty in every process: each worker fails on the missing queue (exit 2).
    process = subprocess.run(
        _swarrow("--queue", "q", "--url", "memory://pool", "--workers", "2", "--no-retry"),
        env=_env(tmp_path),
        capture_output=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert process.returncode == 2, process.stderr.decode()[-2000:]
    assert b"does not exist" in process.stderr
    assert b"restarting" not in process.stderr


def test_cli_pool_re_runs_the_command_without_pool_options_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    args = ["--queue", "q", "--url", "memory://pool", "--declare", "--no-retry", "--workers", "2"]
    args += ["--metrics-addr", f"127.0.0.1:{port}", "--restart-backoff-max", "5s"]
    log = tmp_path / "log"
    with log.open("wb") as sink:
        process = subprocess.Popen(_swarrow(*args), env=_env(tmp_path), stderr=sink, cwd=tmp_path)
    try:
        _wait_consuming(port, 2, process)
        pids = [w["pid"] for w in (_status(port) or {})["workers"]]
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in pids]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log.read_text()[-2000:]
    finally:
        process.kill()
        process.wait()
    for command in commands:
        assert b"--workers" not in command and b"--metrics-addr" not in command
        assert b"--restart-backoff-max" not in command
        assert command[command.index(b"--queue") + 1] == b"q"


def test_cli_pool_with_its_metrics_port_in_use_exits_2_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = subprocess.run(
            _swarrow(
                "--queue",
                "q",
                "--url",
                "memory://pool",
                "--workers",
                "2",
                "--metrics-addr",
                f"127.0.0.1:{port}",
            ),
            env=_env(tmp_path),
            capture_output=True,
            timeout=30,
            cwd=tmp_path,
        )
    assert process.returncode == 2
    assert process.stderr.decode().strip().endswith("address already in use")
    assert b"Traceback" not in process.stderr


_HOLD_SIGNALS = """
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
seen = []
for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda n, _frame: seen.append(signal.Signals(n).name))
print("ready", flush=True)
sys.stdin.readline()  # both signals are sent while they are blocked, so both stay pending
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
print(",".join(sorted(seen)), flush=True)
"""


def test_stop_now_reaches_a_worker_that_has_not_yet_taken_the_first_signal() -> None:
    # Two pending SIGTERMs merge into one; the supervisor's second signal must be another one.
    from swarrow.pool.slots import Worker

    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_SIGNALS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        worker = Worker(object(), child, 0)  # type: ignore[arg-type]
        worker.terminate()  # drain
        worker.terminate()  # now
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "SIGINT,SIGTERM"
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.wait()
