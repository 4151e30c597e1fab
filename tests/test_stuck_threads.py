"""tests/stuck_threads.py: a thread left behind fails the run, naming it, and never hangs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

LEAVES_A_THREAD = '''
import threading

forever = threading.Event()


def test_leaves_a_thread_behind():
    threading.Thread(target=forever.wait, name="left-behind-by-a-test").start()
'''

THREAD_ENDS_SOON = '''
import threading
import time


def test_starts_a_thread_that_ends_soon():
    threading.Thread(target=time.sleep, args=(0.3,), name="ends-soon").start()
'''

FAILS_AND_LEAVES_A_THREAD = LEAVES_A_THREAD + '''

def test_fails():
    assert False
'''


def _run(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    hooks = "from stuck_threads import pytest_sessionfinish, pytest_unconfigure\n"
    (tmp_path / "conftest.py").write_text(hooks)
    (tmp_path / "test_sample.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(TESTS), "SWARROW_TEST_THREAD_GRACE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_thread_left_running_fails_a_green_run_naming_it_instead_of_hanging(tmp_path: Path) -> None:
    done = _run(tmp_path, LEAVES_A_THREAD)  # before: the interpreter waited for it for ever (timeout 60 s)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "1 thread(s) still running 1 s after the tests ended" in done.stderr
    assert "left-behind-by-a-test" in done.stderr
    assert "in wait" in done.stderr  # its stack is shown


def test_a_failing_run_keeps_its_own_exit_status(tmp_path: Path) -> None:
    done = _run(tmp_path, FAILS_AND_LEAVES_A_THREAD)
    assert done.returncode == 1 and "1 failed, 1 passed" in done.stdout, done.stdout + done.stderr
    assert "left-behind-by-a-test" in done.stderr


def test_a_thread_that_ends_within_the_grace_period_is_waited_for(tmp_path: Path) -> None:
    done = _run(tmp_path, THREAD_ENDS_SOON)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "still running" not in done.stderr
