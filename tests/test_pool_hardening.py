"""The pool's promises under stress (hardening items 7 and 8): no orphan worker, no stale directory,
no fatal stop on a passing condition. Stand-in workers (tests/pool_callbacks.py) need no broker."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pool_callbacks  # tests/ is on sys.path (pytest's rootdir-relative imports)
import pytest

from swarrow.pool import Backoff, WorkerPool

FAST = Backoff(initial=0.05, maximum=0.4, reset_after=30.0)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"  # a zombie nobody reaped (PID 1 in a container may not) has stopped


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _env() -> dict[str, str]:
    tests = str(Path(pool_callbacks.__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    env.pop("SWARROW_POOL_WORKER", None)
    return env


async def _until(condition: Callable[[], bool], pool: WorkerPool, timeout: float = 15.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await pool._changed.wait()


# -- item 7: a worker never outlives its supervisor -----------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_worker_still_importing_stops_when_its_supervisor_is_killed(tmp_path: Path) -> None:
    events, gate = tmp_path / "events", tmp_path / "gate"
    env = {**_env(), "SLOW_IMPORT_EVENTS": str(events), "SLOW_IMPORT_GATE": str(gate)}
    command = [sys.executable, "-m", "swarrow", "consume", "slow_import_callbacks:handle", "--queue", "q"]
    command += ["--url", "memory://orphans", "--declare", "--no-retry", "--workers", "2"]
    with (tmp_path / "log").open("wb") as log:
        supervisor = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=log)
    workers: list[int] = []
    try:

        def importing() -> list[int]:
            lines = events.read_text().splitlines() if events.exists() else []
            return [int(pid) for _, pid, ppid in map(str.split, lines) if int(ppid) == supervisor.pid]

        _wait_for(lambda: len(importing()) == 2, 30, "both workers to import")
        workers = importing()
        supervisor.kill()  # SIGKILL: no chance to stop its workers
        supervisor.wait(timeout=10)
        gate.touch()  # the import completes; the worker would now connect and consume
        _wait_for(lambda: not any(map(_alive, workers)), 15, f"orphaned workers {workers} to stop")
    finally:
        supervisor.kill()
        supervisor.wait()
        for worker in workers:
            if _alive(worker):
                os.kill(worker, signal.SIGKILL)


@pytest.mark.anyio
async def test_the_next_start_removes_the_directories_a_killed_supervisor_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / "swarrow-pool-stale1"
    (stale / "status").mkdir(parents=True)
    (stale / "supervisor.lock").touch()
    (stale / "status" / "123.json").write_text("{}")
    live = tmp_path / "swarrow-pool-live1"
    live.mkdir()
    held = (live / "supervisor.lock").open("w")  # another supervisor, still running, holds its lock
    fcntl.flock(held, fcntl.LOCK_EX)
    other = tmp_path / "unrelated-dir"
    other.mkdir()
    pool = WorkerPool(pool_callbacks.command("memory", "--delay", "0.01"), workers=1, backoff=FAST)
    seen: dict[str, bool] = {}

    async def drive() -> None:
        await _until(lambda: all(s.current and s.current.consuming for s in pool.slots), pool)
        seen["stale"], seen["live"], seen["other"] = stale.exists(), live.exists(), other.exists()
        with (pool.directory / "supervisor.lock").open("w") as probe, pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        pool.stop()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(drive)
            with anyio.fail_after(20):
                assert await pool.run() == 0
    finally:
        held.close()
    assert seen == {"stale": False, "live": True, "other": True}
    assert not pool.directory.exists()


# -- item 8: passing conditions are backed off, not fatal ---------------------------------------------


@pytest.mark.anyio
async def test_a_usage_or_import_error_after_the_first_start_is_retried_with_backoff(tmp_path: Path) -> None:
    # The first worker consumes and recycles; its replacement finds the queue briefly missing (exit 2),
    # then an import error (exit 3), then consumes again: the pool must ride it out.
    counter = tmp_path / "starts"
    steps = ("memory:5", "exit:2", "exit:3", "memory:0")
    pool = WorkerPool(pool_callbacks.command("steps", str(counter), *steps), workers=1, backoff=FAST)

    async def drive() -> None:
        await _until(
            lambda: (
                pool.stopping
                or (counter.exists() and int(counter.read_text()) >= 4 and bool(pool.snapshot.consuming))
            ),
            pool,
        )
        pool.stop()

    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        with anyio.fail_after(30):
            code = await pool.run()
    assert code == 0
    assert pool.restarts["usage_error"] == 1 and pool.restarts["import_error"] == 1
    assert [info.code for info in pool.slots[0].history] == [0, 2, 3, 0]


@pytest.mark.anyio
async def test_a_spawn_error_after_the_first_start_is_retried_with_backoff(tmp_path: Path) -> None:
    # A worker's program vanishing for a moment (or EAGAIN: too many processes) must not stop the pool.
    program = tmp_path / "python"
    script = f'#!/bin/sh\nexec "{sys.executable}" "$@"\n'
    program.write_text(script)
    program.chmod(0o755)
    counter = tmp_path / "starts"
    command = [str(program), *pool_callbacks.command("steps", str(counter), "memory:0")[1:]]
    pool = WorkerPool(command, workers=1, backoff=FAST)
    failures: list[int] = []

    async def drive() -> None:
        await _until(lambda: pool.snapshot.consuming == 1, pool)
        program.unlink()  # the replacement of the worker killed below cannot be spawned
        current = pool.slots[0].current
        assert current is not None
        os.kill(current.pid, signal.SIGKILL)
        await _until(lambda: pool.stopping or getattr(pool, "spawn_failures", 0) >= 2, pool)
        failures.append(getattr(pool, "spawn_failures", 0))
        program.write_text(script)
        program.chmod(0o755)
        await _until(
            lambda: pool.stopping or (pool.snapshot.consuming == 1 and int(counter.read_text()) == 2), pool
        )
        pool.stop()

    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        with anyio.fail_after(30):
            code = await pool.run()
    assert code == 0
    assert failures[0] >= 2
    assert int(counter.read_text()) == 2


_WATCH = """
import ctypes, os, sys, time
from swarrow.pool.parent import watch_supervisor
watch_supervisor(int(sys.argv[1]), interval=0.05, grace=float(sys.argv[2]))
if sys.platform.startswith("linux"):
    value = ctypes.c_int()
    ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    print(value.value, flush=True)
else:
    print(15, flush=True)
time.sleep(30)
"""


def test_a_worker_arms_the_parent_death_signal() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _WATCH, str(os.getpid()), "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == str(int(signal.SIGTERM))  # the kernel's signal is armed
    finally:
        child.kill()
        child.wait()


def test_a_worker_given_a_supervisor_already_gone_stops_at_once() -> None:
    # A pid that is not the parent: the supervisor died before the worker could look.
    child = subprocess.Popen([sys.executable, "-c", _WATCH, "999999999", "30"], stdout=subprocess.DEVNULL)
    try:
        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()


def test_an_orphan_that_ignores_sigterm_exits_after_the_grace() -> None:
    script = _WATCH.replace(
        "import ctypes", "import signal; signal.signal(signal.SIGTERM, lambda *a: None)\nimport ctypes"
    )
    child = subprocess.Popen([sys.executable, "-c", script, "999999999", "0.3"], stdout=subprocess.PIPE)
    try:
        assert child.wait(timeout=10) == 1
    finally:
        child.kill()
        child.wait()


def test_a_pool_worker_reads_its_supervisor_pid(tmp_path: Path) -> None:
    from swarrow.pool.status import pool_worker_env

    env = {"SWARROW_POOL_WORKER": "1", "SWARROW_POOL_DIR": str(tmp_path), "SWARROW_POOL_SUPERVISOR": "4242"}
    worker = pool_worker_env(env)
    assert worker is not None and worker.supervisor == 4242
    assert pool_worker_env({**env, "SWARROW_POOL_SUPERVISOR": ""}).supervisor is None  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_the_status_layer_stops_a_worker_whose_given_supervisor_is_not_its_parent(
    tmp_path: Path,
) -> None:
    from processors.pool_status import PoolStatusProcessor
    from swarrow import Consumer, Layer, MemoryBroker, Message, Stack

    broker = MemoryBroker("supervisor-gone")
    broker.declare_queue_nowait("work")
    broker.publish_nowait(Message(body=b"x"), "work")
    provider = broker.provider("work", prefetch=1)

    async def handle(message: Message) -> None:
        pass

    layer = Layer(PoolStatusProcessor, directory=tmp_path, slot=0, interval=0.05, supervisor=999999999)
    with anyio.fail_after(10):
        reason = await Consumer(provider, Stack(layer, callback=handle)).run()
    assert reason.code == "supervisor_gone"
