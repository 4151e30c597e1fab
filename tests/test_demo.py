"""`make run` / `python -m swarrow.demo`: the first command always shows the onion, RabbitMQ or not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE = "amqp://guest:s3cret-pw@127.0.0.1:1/"
DONE = "done (callback: the callback returned False): 2999 processed, 6 retried, 1 dead-lettered"


def _env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SWARROW_URL"}
    env.update(changes)
    return env


def test_without_rabbitmq_and_without_swarrow_url_the_demo_runs_in_memory_saying_so_first() -> None:
    code = f"import anyio, swarrow.demo as d; raise SystemExit(anyio.run(d._main, None, {UNREACHABLE!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env()
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        "swarrow demo on the in-memory broker (memory://demo) because no RabbitMQ answers at"
    )
    assert "s3cret" not in done.stdout + done.stderr
    assert lines[-1].startswith(DONE)


def test_an_unreachable_swarrow_url_exits_4_instead_of_falling_back() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "swarrow.demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(SWARROW_URL=UNREACHABLE),
    )
    assert done.returncode == 4
    assert "in-memory" not in done.stdout and "Check SWARROW_URL" in done.stderr
    assert "s3cret" not in done.stdout + done.stderr


@pytest.mark.skipif(not (ROOT / "Makefile").exists(), reason="needs the source checkout")
def test_make_run_falls_back_to_the_in_memory_demo_when_rabbitmq_cannot_start() -> None:
    venv = Path(sys.prefix)
    done = subprocess.run(
        ["make", "-s", "run", f"VENV={venv}", "RABBITMQ_SCRIPT=false"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith(
        "swarrow demo on the in-memory broker (memory://demo) because RabbitMQ could not be"
    )
    assert done.stdout.splitlines()[-1].startswith(DONE)
