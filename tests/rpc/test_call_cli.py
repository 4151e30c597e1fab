"""`swarrow call` against a real `swarrow consume` worker: reply, error reply, timeout, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SWARROW = [sys.executable, "-m", "swarrow"]


def _env(url: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "SWARROW_URL": url}


def _call(url: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*SWARROW, "call", *args], env=_env(url), input=stdin, capture_output=True, timeout=60, check=False
    )


@pytest.fixture
def worker(amqp_url: str, delete_queue_family: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A `swarrow consume` worker on its own queue (deleted after, with its retry and dead queues) running the
    callback named by the test's param."""
    queue_name = delete_queue_family
    callback = getattr(request, "param", "echo")
    process = subprocess.Popen(
        [*SWARROW, "consume", f"tests.rpc.callbacks:{callback}", "--queue", queue_name, "--declare",
         "--concurrency", "2", "--retry-attempts", "1", "--retry-delays", "100ms"],
        env=_env(amqp_url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:  # ready once it consumes: a call to the queue is then answered
            probe = subprocess.run(
                ["rabbitmqctl", "-n", os.environ.get("SWARROW_TEST_NODE", "rabbit@localhost"), "list_queues",
                 "name", "consumers", "-q", "--no-table-headers"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            if any(line.split() == [queue_name, "1"] for line in probe.stdout.splitlines()):
                break
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "the worker did not start consuming"
            time.sleep(0.2)
        yield queue_name
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_call_prints_the_reply_body(amqp_url: str, worker: str) -> None:
    done = _call(amqp_url, "--queue", worker, "--body", "hello")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"HELLO"


def test_call_reads_the_body_from_stdin(amqp_url: str, worker: str) -> None:
    done = _call(amqp_url, "--queue", worker, "-", stdin=b"\x00from stdin")
    assert (done.returncode, done.stdout) == (0, b"\x00FROM STDIN")


@pytest.mark.parametrize("worker", ["refuse"], indirect=True)
def test_an_error_reply_exits_1_with_the_type_and_message(amqp_url: str, worker: str) -> None:
    done = _call(amqp_url, "--queue", worker, "--body", "card 42")
    assert done.returncode == 1
    assert b"swarrow.errors.PermanentError: refused: card 42" in done.stderr
    assert done.stdout == b""


@pytest.mark.parametrize("worker", ["slow"], indirect=True)
def test_no_reply_in_time_exits_5(amqp_url: str, worker: str) -> None:
    started = time.monotonic()
    done = _call(amqp_url, "--queue", worker, "--body", "x", "--timeout", "500ms")
    assert done.returncode == 5, done.stderr
    assert b"no reply" in done.stderr
    assert time.monotonic() - started < 15


def test_a_queue_nobody_consumes_is_exit_1_at_once(amqp_url: str, queue_name: str) -> None:
    started = time.monotonic()
    done = _call(amqp_url, "--queue", f"{queue_name}.missing", "--body", "x", "--timeout", "30s")
    assert done.returncode == 1
    assert b"unroutable" in done.stderr
    assert time.monotonic() - started < 15


def test_usage_errors_exit_2_and_an_unreachable_broker_4(amqp_url: str, queue_name: str) -> None:
    both = _call(amqp_url, "--queue", queue_name, "--body", "x", "--file", "-")
    assert both.returncode == 2 and b"exactly one of" in both.stderr
    bad_timeout = _call(amqp_url, "--queue", queue_name, "--body", "x", "--timeout", "soon")
    assert bad_timeout.returncode == 2 and b"--timeout" in bad_timeout.stderr
    unreachable = _call("amqp://guest:s3cret@127.0.0.1:1/", "--queue", queue_name, "--body", "x")
    assert unreachable.returncode == 4
    assert b"s3cret" not in unreachable.stderr and b"s3cret" not in unreachable.stdout
