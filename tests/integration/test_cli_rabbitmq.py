"""The `swarrow` command as a real process against RabbitMQ: publish, consume, exit codes, SIGTERM drain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from swarrow.amqp import AmqpBroker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def swarrow(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarrow", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def queue(amqp_url: str, queue_name: str) -> Iterator[str]:
    """A unique queue name; it, its retry queues and its dead-letter queue are deleted afterwards."""
    yield queue_name

    async def cleanup() -> None:
        broker = AmqpBroker(amqp_url)
        try:
            for name in [queue_name, f"{queue_name}.dead", *(f"{queue_name}.retry.{k}" for k in range(1, 6))]:
                await broker.delete_queue(name)
        finally:
            await broker.close()

    anyio.run(cleanup)


def ready_messages(url: str, queue: str) -> int:
    async def count() -> int:
        broker = AmqpBroker(url)
        try:
            info = await broker.inspect_queue(queue)
            assert info is not None
            return info.message_count
        finally:
            await broker.close()

    return anyio.run(count)


@pytest.mark.parametrize(
    "ack_options",
    [[], ["--ack-batch-size", "1"], ["--ack-batch-size", "20", "--ack-flush-ms", "5"]],
    ids=["coalesced-default", "single-acks", "coalesced-tuned"],
)
def test_publish_then_consume_n_messages_exits_0(
    amqp_url: str, queue: str, tmp_path: Path, ack_options: list[str]
) -> None:
    declared = swarrow("declare", "--url", amqp_url, "-q", queue, "--retry-delays", "1s,2s")
    assert declared.returncode == 0, declared.stderr
    assert f"created {queue}.retry.1 (x-message-ttl=1000ms → {queue})" in declared.stdout
    published = swarrow("publish", "--url", amqp_url, "-q", queue, "--body", "job {n}", "--count", "50")
    assert published.returncode == 0, published.stderr
    assert f"published 50 messages to {queue}" in published.stdout
    record = tmp_path / "ids"
    consumed = swarrow(
        "consume", "tests.cli_callbacks:record", "--url", amqp_url, "-q", queue, "--retry-delays", "1s,2s",
        "--max-messages", "50", "--concurrency", "5", "--log-format", "json", *ack_options,
        env={"SWARROW_TEST_RECORD": str(record)},
    )  # fmt: skip
    assert consumed.returncode == 0, consumed.stderr
    ids = record.read_text().split()
    assert len(ids) == 50 and len(set(ids)) == 50
    assert ready_messages(amqp_url, queue) == 0  # every ack reached the broker before the exit
    again = swarrow("declare", "--url", amqp_url, "-q", queue, "--retry-delays", "1s,2s")
    assert again.stdout.splitlines()[0] == f"found {queue} (0 messages)"


def test_declare_conflict_exits_2_naming_the_queue(amqp_url: str, queue: str) -> None:
    assert swarrow("declare", "--url", amqp_url, "-q", queue, "--retry-delays", "1s").returncode == 0
    conflict = swarrow("declare", "--url", amqp_url, "-q", queue, "--retry-delays", "3s")
    assert conflict.returncode == 2
    assert f"'{queue}.retry.1'" in conflict.stderr
    assert "Traceback" not in conflict.stderr


def test_unreachable_broker_exits_4_without_the_password() -> None:
    done = swarrow(
        "consume", "tests.cli_callbacks:ok", "--url", "amqp://guest:secret@127.0.0.1:1/", "-q", "q"
    )
    assert done.returncode == 4
    assert "secret" not in done.stdout + done.stderr
    assert "amqp://guest:***@127.0.0.1:1/" in done.stderr
    assert "Traceback" not in done.stderr


def test_wrong_credentials_exit_4_without_the_password(amqp_url: str) -> None:
    url = amqp_url.replace("guest:guest@", "guest:wrong-pass@")
    done = swarrow("consume", "tests.cli_callbacks:ok", "--url", url, "-q", "q")
    assert done.returncode == 4, done.stderr
    assert "wrong-pass" not in done.stdout + done.stderr


def test_bad_import_exits_3(amqp_url: str) -> None:
    done = swarrow("consume", "tests.cli_callbacks:missing", "--url", amqp_url, "-q", "q")
    assert done.returncode == 3
    assert "module 'tests.cli_callbacks' has no attribute 'missing'" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_queue_exits_2(amqp_url: str, queue: str) -> None:
    done = swarrow("consume", "tests.cli_callbacks:ok", "--url", amqp_url, "-q", queue)
    assert done.returncode == 2
    assert f"queue '{queue}' does not exist" in done.stderr


def test_sigterm_drains_the_in_flight_message_and_exits_0(amqp_url: str, queue: str, tmp_path: Path) -> None:
    assert swarrow("declare", "--url", amqp_url, "-q", queue, "--no-retry").returncode == 0
    assert swarrow("publish", "--url", amqp_url, "-q", queue, "--body", "slow").returncode == 0
    record = tmp_path / "ids"
    started = Path(f"{record}.started")
    process = subprocess.Popen(
        [sys.executable, "-m", "swarrow", "consume", "tests.cli_callbacks:slow_record", "--url", amqp_url,
         "-q", queue, "--no-retry", "--grace-period", "10s"],
        cwd=ROOT,
        env={**os.environ, "SWARROW_TEST_RECORD": str(record), "SWARROW_TEST_SLOW": "1.5"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not started.exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the message never reached the callback"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert record.read_text().split() == started.read_text().split()  # finished, not cut short
    assert "signal" in stderr
    assert ready_messages(amqp_url, queue) == 0  # acked: nothing back in the queue to redeliver
