"""The CLI's exit past sync callback threads that never return: prompt, whatever way the consumer stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from swarrow.cli import bootstrap

ROOT = Path(__file__).resolve().parent.parent


class _Exited(Exception):
    pass


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_exit(code: int) -> None:
        raise _Exited(code)

    monkeypatch.setattr(bootstrap.os, "_exit", fake_exit)
    monkeypatch.setattr(bootstrap.logging, "shutdown", lambda: None)


def _hung_threads(count: int, release: threading.Event) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=release.wait, name="AnyIO worker thread", daemon=True) for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


def test_many_hung_threads_share_one_short_wait(exits: None) -> None:
    release = threading.Event()
    _hung_threads(10, release)
    said: list[str] = []
    started = time.monotonic()
    try:
        with pytest.raises(_Exited) as exited:
            bootstrap.exit_now_if_threads_hang(3, last_words=lambda: said.append("error shown"))
    finally:
        release.set()
    elapsed = time.monotonic() - started
    # Before: 0.5 s per thread, one after another: 10 threads 5 s, concurrency 100 50 s.
    assert elapsed < 1.5, f"exiting past 10 hung threads took {elapsed:.1f}s"
    assert exited.value.args == (3,) and said == ["error shown"]


def test_a_signal_during_the_check_is_ignored_and_the_handlers_come_back(exits: None) -> None:
    release = threading.Event()
    _hung_threads(2, release)
    handler_before = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(0.1, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(_Exited):  # not KeyboardInterrupt: before, Ctrl-C here left the process waiting
            bootstrap.exit_now_if_threads_hang(0)
    finally:
        release.set()
        timer.join()
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_no_thread_of_this_run_means_no_wait_and_no_exit(exits: None) -> None:
    release = threading.Event()
    theirs = frozenset(_hung_threads(1, release))
    try:
        started = time.monotonic()
        bootstrap.exit_now_if_threads_hang(0, before=theirs)  # returns: nothing of this run hangs
        assert time.monotonic() - started < 0.2
    finally:
        release.set()


def _swarrow(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "swarrow", *args], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _run(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "swarrow", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.integration
def test_a_crash_beside_a_stuck_callback_thread_exits_1_at_once(amqp_url: str, queue_name: str) -> None:
    _run("declare", "--url", amqp_url, "--queue", queue_name, "--no-retry")
    try:
        for body in ("hang", "boom"):
            _run("publish", "--url", amqp_url, "--queue", queue_name, "--body", body)
        proc = _swarrow("consume", "tests.cli_callbacks:hang_or_boom", "--url", amqp_url, "-q", queue_name,
                        "--concurrency", "2", "--time-limit", "1s", "--no-retry", "--no-catch",
                        "--grace-period", "1s")  # fmt: skip
        started = time.monotonic()
        try:
            out, _ = proc.communicate(timeout=30)  # the crash comes at ~1.5 s, the grace ends 1 s later
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail("the consumer crashed, then waited for its stuck callback thread:\n" + out[-1500:])
        elapsed = time.monotonic() - started
        assert proc.returncode == 1, out
        assert "Error: the consumer crashed" in out and "exiting without them" in out, out
        assert elapsed < 15, f"took {elapsed:.1f}s"  # before: until the 300 s callback returned
        assert "guest:guest@" not in out
    finally:
        _delete(queue_name)


@pytest.mark.integration
def test_ctrl_c_while_exiting_past_stuck_threads_exits_0(amqp_url: str, queue_name: str) -> None:
    _run("declare", "--url", amqp_url, "--queue", queue_name, "--no-retry")
    try:
        _run("publish", "--url", amqp_url, "--queue", queue_name, "--body", "x{n}", "-n", "6")
        proc = _swarrow("consume", "tests.cli_callbacks:stuck", "--url", amqp_url, "-q", queue_name,
                        "--concurrency", "6", "--time-limit", "1s", "--no-retry",
                        "--grace-period", "1s")  # fmt: skip
        assert proc.stdout is not None
        lines: list[str] = []
        interrupted = False
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            lines.append(line)
            if "time limit" in line and not interrupted:
                interrupted = True
                proc.send_signal(signal.SIGINT)  # a graceful stop; the 1 s grace runs out on stuck threads
            if "exiting 0" in line:
                proc.send_signal(signal.SIGINT)  # again, while it looks for hung threads
                break
            assert time.monotonic() < deadline, "".join(lines[-5:])
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            tail = "".join(lines[-3:]) + out
            pytest.fail("Ctrl-C while exiting left it waiting for its stuck threads:\n" + tail)
        assert proc.returncode == 0, "".join(lines) + out  # before: 'Aborted!' and a hang, or 143 on SIGTERM
        assert "Aborted!" not in out
    finally:
        _delete(queue_name)


def _delete(queue: str) -> None:
    node = os.environ.get("SWARROW_TEST_NODE", "rabbit@localhost")
    for name in (queue, f"{queue}.dead"):
        command = ["rabbitmqctl", "-q", "-n", node, "delete_queue", name]
        subprocess.run(command, capture_output=True, timeout=60)
