"""The README's "publish, then wait for the jobs" shell loop: it must wait while the jobs are still unseen."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import anyio

from swarrow.jobs import JobRecord, JobStore

README = Path(__file__).resolve().parents[2] / "README.md"


def _write(url: str, state: str, job_id: str = "poll-1") -> None:
    now = time.time()
    finished = None if state == "running" else now

    async def write() -> None:
        async with JobStore.open(url) as store:
            await store.write([JobRecord(job_id, "q", state, 1, now, now, finished, 0.0 if finished else None,
                                         "h", 1, None, None, None, None)])  # fmt: skip

    anyio.run(write)


def test_the_readme_wait_loop_waits_for_unseen_then_running_jobs(sqlite_url: str, tmp_path: Path) -> None:
    match = re.search(r"`(while swarrow jobs unfinished [^`]+)`", README.read_text())
    assert match, "README: the wait loop over swarrow jobs unfinished"
    loop = match.group(1).replace("$IDS", "poll-1").replace("sleep 5", "sleep 0.05")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "swarrow").write_text(f'#!/bin/sh\nexec {sys.executable} -m swarrow "$@"\n')
    (bindir / "swarrow").chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "SWARROW_TRACK_JOBS": sqlite_url}
    _write(sqlite_url, "succeeded", "another")  # the store exists; poll-1 is still in the queue, unseen
    with subprocess.Popen(["bash", "-c", f"{loop}; echo looped-out"], env=env, stdout=subprocess.PIPE,
                          text=True) as shell:  # fmt: skip
        try:
            for state in ("running", "succeeded"):
                time.sleep(0.5)  # not a race fix: the loop must still be waiting after several polls
                assert shell.poll() is None, f"the loop ended before poll-1 finished ({state} next)"
                _write(sqlite_url, state)
            out, _ = shell.communicate(timeout=30)
        finally:
            shell.kill()
    assert "looped-out" in out and "poll-1  succeeded" in out


def test_an_unseen_job_is_unfinished_not_an_end(sqlite_url: str, tmp_path: Path) -> None:
    # Right after `publish --print-ids` no worker has seen the job: status says 6 (unknown), which a loop
    # branching on 7 alone would take for an end; `unfinished` lists it (exit 7).
    _write(sqlite_url, "succeeded")  # the store exists (poll-1), poll-2 is not in it
    swarrow = [sys.executable, "-m", "swarrow", "jobs"]
    args = ["poll-2", "--store", sqlite_url]
    status = subprocess.run([*swarrow, "status", *args], capture_output=True, text=True, timeout=30)
    unfinished = subprocess.run([*swarrow, "unfinished", *args], capture_output=True, text=True, timeout=30)
    assert (status.returncode, unfinished.returncode, unfinished.stdout) == (6, 7, "poll-2\n")
