"""`swarrow consume` with its stderr on a pipe nobody reads: it keeps working and SIGTERM still stops it.

Found in an attack on issue 21's changes (2026-11-29) and left then: once the pipe was full the event
loop blocked in a log `write(2)`, processing stopped and SIGTERM was never seen (only SIGKILL ended
it; a stalled log shipper or a stopped `| tee` does this). Log lines are now written by a thread of
their own, with a bounded backlog; what does not fit is dropped and counted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = 2_000  # ~200 KB of log lines: three times what a pipe holds


def _swarrow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swarrow", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)  # fmt: skip


def _recorded(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _declare_and_publish(url: str, queue: str, count: int, message_id: str = "m{n}") -> None:
    assert _swarrow("declare", "--url", url, "--queue", queue, "--no-retry").returncode == 0
    published = _swarrow("publish", "--url", url, "--queue", queue, "--body", "x{n}",
                         "--message-id", message_id, "-n", str(count))  # fmt: skip
    assert published.returncode == 0, published.stderr


def _delete(queue: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", "-n", os.environ.get("SWARROW_TEST_NODE", "rabbit@localhost"),
                    "delete_queue", queue], capture_output=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_stderr_pipe_neither_stalls_the_worker_nor_hides_sigterm(
    amqp_url: str, queue_name: str, tmp_path: Path, workers: int
) -> None:
    record = tmp_path / "processed"
    env = dict(os.environ, SWARROW_TEST_RECORD=str(record))
    try:
        _declare_and_publish(amqp_url, queue_name, MESSAGES)
        proc = subprocess.Popen(
            [sys.executable, "-m", "swarrow", "consume", "tests.cli_callbacks:record", "--url", amqp_url,
             "-q", queue_name, "--no-retry", "--workers", str(workers)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while len(_recorded(record)) < MESSAGES:  # before: stuck at ~600, the pipe's worth of lines
                assert proc.poll() is None, f"exited {proc.returncode} early"
                assert time.monotonic() < deadline, f"stalled at {len(_recorded(record))} of {MESSAGES}"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=20)  # the flush at exit waits for the stuck pipe 1 s at most
            except subprocess.TimeoutExpired:
                pytest.fail("SIGTERM did not stop a worker whose stderr pipe is full")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
        assert code == 0
        drained = _swarrow("consume", "tests.cli_callbacks:record", "--url", amqp_url, "-q", queue_name,
                           "--no-retry", "--stop-when-idle", "1s", env=env)  # fmt: skip
        assert drained.returncode == 0, drained.stderr[-2000:]
        ids = _recorded(record)
        assert sorted(ids) == sorted(f"m{n}" for n in range(1, MESSAGES + 1))  # each once, none lost
    finally:
        _delete(queue_name)


def test_a_warning_just_before_os_exit_reaches_a_stderr_pipe(amqp_url: str, queue_name: str) -> None:
    # Attack on the writer thread (2026-11-29): through a pipe the WARNING, and the "consuming" line
    # before it, were lost 3 times of 3 (handed to the writer thread, which os._exit never let run).
    try:
        _declare_and_publish(amqp_url, queue_name, 1, message_id="m-last")
        ran = subprocess.run(
            [sys.executable, "-m", "swarrow", "consume", "tests.cli_callbacks:warn_and_exit",
             "--url", amqp_url, "-q", queue_name, "--no-retry"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ran.returncode == 3
        assert f"consuming {queue_name}" in ran.stderr
        assert "fatal condition on m-last, exiting" in ran.stderr.splitlines()[-1]
    finally:
        _delete(queue_name)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_closed_stderr_is_a_sink_not_a_crash(
    amqp_url: str, queue_name: str, tmp_path: Path, workers: int
) -> None:
    # Attack 3 (2026-11-29), older than this session: with `2>&-` the CLI aborted (exit 134) and, with
    # --workers 2, the supervisor's epoll took descriptor 2, its log lines went there and it never exited.
    record = tmp_path / "processed"
    env = dict(os.environ, SWARROW_TEST_RECORD=str(record))
    try:
        _declare_and_publish(amqp_url, queue_name, 200)
        ran = subprocess.run(
            [sys.executable, "-m", "swarrow", "consume", "tests.cli_callbacks:record", "--url", amqp_url,
             "-q", queue_name, "--no-retry", "--stop-when-idle", "1s", "--workers", str(workers)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(2), timeout=60,
        )  # fmt: skip
        assert ran.returncode == 0
        assert sorted(_recorded(record)) == sorted(f"m{n}" for n in range(1, 201))
    finally:
        _delete(queue_name)
