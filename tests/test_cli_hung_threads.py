"""The CLI's exit past sync callback threads that never return: prompt, whatever way the consumer stops."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarrow import callback, runner

ROOT = Path(__file__).resolve().parent.parent


class _Exited(Exception):
    pass


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def fake_exit(code: int) -> None:
        raise _Exited(code)

    monkeypatch.setattr(runner.os, "_exit", fake_exit)
    monkeypatch.setattr(runner.logging, "shutdown", lambda: None)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def _late_calls(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """`count` calls whose message was cancelled while their thread runs on (what a time limit leaves)."""
    monkeypatch.setattr(callback, "_running_late", {object() for _ in range(count)})


def test_many_hung_threads_cost_no_wait(exits: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _late_calls(monkeypatch, 10)
    said: list[str] = []
    started = time.monotonic()
    with pytest.raises(_Exited) as exited:
        runner.exit_if_callback_threads_hang(3, last_words=lambda: said.append("error shown"))
    elapsed = time.monotonic() - started
    # Before: the CLI joined each AnyIO worker thread for 0.5 s, one after another: 10 threads 5 s,
    # concurrency 100 50 s.
    assert elapsed < 1.5, f"exiting past 10 hung threads took {elapsed:.1f}s"
    assert exited.value.args == (3,) and said == ["error shown"]


def test_a_second_signal_cannot_interrupt_the_exit(exits: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _late_calls(monkeypatch, 2)
    with pytest.raises(_Exited):
        runner.exit_if_callback_threads_hang(0)
    # Before: a second Ctrl-C raised into the exit and the interpreter then waited for the threads.
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_nothing_hung_means_no_exit_and_the_handlers_untouched(
    exits: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _late_calls(monkeypatch, 0)
    handler = signal.getsignal(signal.SIGINT)
    runner.exit_if_callback_threads_hang(0)  # returns: the interpreter's own exit has nothing to wait for
    assert signal.getsignal(signal.SIGINT) is handler


def _leave_after(monkeypatch: pytest.MonkeyPatch, run: Any) -> None:
    """The CLI's run-and-leave with `run` in place of the consumer's event loop."""
    consume = importlib.import_module("swarrow.cli.consume")  # the module: swarrow.cli.consume is the command

    monkeypatch.setattr(consume, "run_anyio", lambda fn, **options: run())
    consume._run_and_leave(lambda: None, use_uvloop=False, sdk=None)


def test_signals_are_ignored_before_the_exit_line_is_logged(
    exits: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    consume = importlib.import_module("swarrow.cli.consume")  # the module: swarrow.cli.consume is the command

    _late_calls(monkeypatch, 2)
    seen: list[object] = []

    def info(message: str, *args: object) -> None:
        seen.append(signal.getsignal(signal.SIGINT))

    monkeypatch.setattr(consume.logger, "info", info)
    with pytest.raises(_Exited) as exited:
        _leave_after(monkeypatch, lambda: "stopped")
    # Before: ignored only after "exiting 0"; a Ctrl-C right after that line (CI, 2026-11-29) printed
    # 'Aborted!' and the process waited for its stuck threads.
    assert seen == [signal.SIG_IGN] and exited.value.args == (0,)


@pytest.mark.parametrize(("where", "code"), [("while the loop closes", 130), ("at the exit line", 0)])
def test_a_ctrl_c_slipping_into_the_exit_ends_it_past_stuck_threads(
    where: str, code: int, exits: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    consume = importlib.import_module("swarrow.cli.consume")  # the module: swarrow.cli.consume is the command

    _late_calls(monkeypatch, 1)

    def interrupted() -> object:
        raise KeyboardInterrupt

    def info(message: str, *args: object) -> None:
        raise KeyboardInterrupt  # a signal handled between two bytecodes, before the ignore took effect

    if where == "at the exit line":
        monkeypatch.setattr(consume.logger, "info", info)
    with pytest.raises(_Exited) as exited:
        _leave_after(monkeypatch, interrupted if where == "while the loop closes" else lambda: "stopped")
    assert exited.value.args == (code,)


def test_a_ctrl_c_with_nothing_stuck_is_a_plain_interrupt(
    exits: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _late_calls(monkeypatch, 0)

    def interrupted() -> object:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _leave_after(monkeypatch, interrupted)


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
