"""Ctrl-C and SIGTERM storms while `swarrow consume` stops: nothing lost, nothing run twice, exit 0.

Found by an attack on issue 21's changes (2026-11-29): once the signal layer stopped watching, the
final ack flush still had to go out, and a further signal there was Python's own (KeyboardInterrupt
or death): messages logged "acked" came back and ran again (17-41 duplicates in 12 stormed stops),
and exits were 1, 130 or 143 instead of 0. A slow message at the head keeps many finished ones
behind the coalesced ack, so each stop has acks to lose.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = 300
STOPS = 4


def _swarrow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swarrow", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)  # fmt: skip


def _stormed_stop(url: str, queue: str, env: dict[str, str], rng: random.Random) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarrow", "consume", "tests.cli_callbacks:slow_head_record", "--url", url,
         "-q", queue, "--concurrency", "4", "--grace-period", "0.5s", "--no-retry"],
        cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    for line in proc.stdout:  # until it consumes
        lines.append(line)
        if "consuming" in line:
            break
        assert time.monotonic() < deadline, "".join(lines)
    try:
        for _ in range(2000):  # a storm: a signal every 0-4 ms until it has exited
            if proc.poll() is not None:
                break
            proc.send_signal(rng.choice((signal.SIGINT, signal.SIGTERM)))
            time.sleep(rng.uniform(0, 0.004))
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail("a signal storm at the stop left it hanging:\n" + "".join(lines) + out)
    return proc.returncode, "".join(lines) + out


def test_signal_storms_at_the_stop_lose_nothing_duplicate_nothing_and_exit_0(
    amqp_url: str, queue_name: str, tmp_path: Path
) -> None:
    record = tmp_path / "processed"
    env = dict(os.environ, SWARROW_TEST_RECORD=str(record))
    try:
        assert _swarrow("declare", "--url", amqp_url, "--queue", queue_name, "--no-retry").returncode == 0
        for body, count in (("slow{n}", "1"), ("x{n}", str(MESSAGES))):
            published = _swarrow("publish", "--url", amqp_url, "--queue", queue_name, "--body", body,
                                 "--message-id", body, "-n", count)  # fmt: skip
            assert published.returncode == 0, published.stderr
        rng = random.Random(21)
        for stop in range(STOPS):
            code, output = _stormed_stop(amqp_url, queue_name, env, rng)
            assert code == 0, f"stop {stop}: exit {code}\n{output[-3000:]}"
            assert "Traceback" not in output and "Aborted!" not in output, output[-3000:]
        drained = _swarrow("consume", "tests.cli_callbacks:record", "--url", amqp_url, "-q", queue_name,
                           "--no-retry", "--stop-when-idle", "1s", env=env)  # fmt: skip
        assert drained.returncode == 0, drained.stderr[-2000:]
        ids = record.read_text().split()
        twice = sorted({i for i in ids if ids.count(i) > 1})  # recorded when finished
        assert twice == [], f"{len(twice)} finished message(s) ran again: {twice[:10]}"
        assert set(ids) == {"slow1", *(f"x{n}" for n in range(1, MESSAGES + 1))}
    finally:
        subprocess.run(["rabbitmqctl", "-q", "-n", os.environ.get("SWARROW_TEST_NODE", "rabbit@localhost"),
                        "delete_queue", queue_name], capture_output=True, timeout=60)  # fmt: skip
