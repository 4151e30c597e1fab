"""The supervisor's temporary directory: created locked, and removed by the next start if its owner died.

A supervisor killed with SIGKILL cannot remove its directory (status files, metric files). Each one
holds an exclusive `flock` on `supervisor.lock` inside it for its whole life; the kernel drops the
lock when the process dies, however it dies. At start, a supervisor removes every `swarrow-pool-*`
directory of the same user in the temporary directory whose lock it can take. The lock file is
locked before it gets its name, so a directory being created is never mistaken for an abandoned one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from swarrow.pool.status import MULTIPROC_DIR_ENV, clean_multiproc_dir

__all__ = [
    "LOCK_NAME",
    "PREFIX",
    "create_locked_directory",
    "metrics_directory",
    "remove_abandoned_directories",
]

logger = logging.getLogger(__name__)

PREFIX: Final = "swarrow-pool-"
LOCK_NAME: Final = "supervisor.lock"


def create_locked_directory() -> tuple[Path, int]:
    """A new private temporary directory and the descriptor holding its lock (close it to release)."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX))
    partial = path / f"{LOCK_NAME}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.replace(partial, path / LOCK_NAME)
    except BaseException:
        os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path, fd


def remove_abandoned_directories(base: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the pool directories in `base` (the temporary directory) whose supervisor is gone."""
    removed: list[Path] = []
    uid = os.getuid()
    for entry in Path(tempfile.gettempdir() if base is None else base).glob(PREFIX + "*"):
        try:
            info = entry.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
                continue  # a symlink, a file, or someone else's
            fd = os.open(entry / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # no lock file: being created, or made by an older swarrow; leave it
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its supervisor is alive
        else:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        finally:
            os.close(fd)
    if removed:
        logger.info(
            "removed %d directory(ies) left by a supervisor that was killed: %s",
            len(removed),
            ", ".join(str(path) for path in removed),
        )
    return removed


def metrics_directory(directory: Path, env: Mapping[str, str]) -> Path:
    """Where the workers write their metric values (`PROMETHEUS_MULTIPROC_DIR` if the environment sets
    it, else inside the pool's `directory`), cleared of a previous run's files."""
    given = env.get(MULTIPROC_DIR_ENV)
    path = Path(given) if given else directory / "metrics"
    removed = clean_multiproc_dir(path)
    if removed:
        logger.info("removed %d stale metric files from %s", removed, path)
    return path
