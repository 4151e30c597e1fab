"""Which kind of stream a log handler writes to: a terminal, a file, or a pipe a reader can stall."""

from __future__ import annotations

import io
import os
import select
import stat
from typing import NamedTuple

__all__ = ["Pipe", "mode_of", "writable"]


class Pipe(NamedTuple):
    """A stream a reader can stall (a pipe, a socket): its descriptor and how to encode for it."""

    fd: int
    encoding: str
    errors: str


def writable(fd: int) -> bool:
    """Whether a write of up to `PIPE_BUF` bytes would not wait now (a free page; racy with other writers)."""
    try:
        _, ready, _ = select.select([], [fd], [], 0)
    except (OSError, ValueError):  # a descriptor past select's limit: the writer thread then
        return False
    return bool(ready)


def mode_of(stream: object) -> tuple[bool, Pipe | None]:
    """(whether lines are batched, the pipe when a reader can stall the stream).

    A terminal or an in-memory stream: neither. A regular file or a device (`/dev/null`): batched,
    written by the logging thread (no reader can stall it). A pipe or a socket: both.
    """
    fileno = getattr(stream, "fileno", None)
    if fileno is None:
        return False, None
    try:
        fd = fileno()
        if os.isatty(fd):
            return False, None
        mode = os.fstat(fd).st_mode
        regular = stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
    except (OSError, ValueError, io.UnsupportedOperation):  # StringIO, a closed or captured stream
        return False, None
    if regular:
        return True, None
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return True, Pipe(fd, encoding, getattr(stream, "errors", None) or "strict")
