"""Starting one worker process: the environment that tells it its slot, and a session of its own."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import anyio
from anyio.abc import Process

from swarrow.pool.status import MULTIPROC_DIR_ENV, POOL_DIR_ENV, POOL_WORKER_ENV, SUPERVISOR_ENV

__all__ = ["FATAL_SPAWN_ERRORS", "open_worker_process", "worker_env"]

# Spawn errors that a retry cannot fix, at the first start: a missing or non-executable program.
FATAL_SPAWN_ERRORS: Final = frozenset({errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR})


def worker_env(
    base: Mapping[str, str], *, slot: int, status_dir: Path, metrics_dir: Path | None
) -> dict[str, str]:
    """`base` plus the slot, the status directory, this supervisor's pid and (with an endpoint) the
    shared Prometheus directory."""
    env = dict(base)
    env[POOL_WORKER_ENV] = str(slot)
    env[POOL_DIR_ENV] = str(status_dir)
    env[SUPERVISOR_ENV] = str(os.getpid())
    if metrics_dir is not None:
        # Before the worker imports prometheus-client: its values then go to files we can sum.
        env[MULTIPROC_DIR_ENV] = str(metrics_dir)
    return env


async def open_worker_process(command: Sequence[str], env: Mapping[str, str]) -> Process:
    """Spawn `command` with `env`; raises `OSError` as the system does (ENOENT, EAGAIN …)."""
    return await anyio.open_process(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=None,
        stderr=None,
        env=dict(env),
        # Its own session: a terminal's Ctrl-C reaches the supervisor only, which forwards it
        # once; otherwise every worker would see it twice and skip draining.
        start_new_session=True,
    )
