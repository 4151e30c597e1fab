"""A pool worker never outlives its supervisor, even one SIGKILLed while the worker imports or connects.

The supervisor passes its pid explicitly (`SWARROW_POOL_SUPERVISOR`): a worker that finds another
parent was orphaned before it could look. On Linux the kernel's parent-death signal delivers SIGTERM
the moment the supervisor dies; everywhere, a daemon thread compares the parent with that pid twice a
second from the first line of the worker's start-up, long before its consumer (and the status layer's
own check) exists. An orphan is sent SIGTERM (a graceful drain once it consumes) and, should that not
end it within `grace`, leaves with `os._exit`: its unacked messages are redelivered.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from typing import Final

__all__ = ["watch_supervisor"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG: Final = 1
_EXIT_ORPHANED: Final = 1


def _set_parent_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0)
    return False


def watch_supervisor(pid: int, *, interval: float = 0.5, grace: float = 40.0) -> threading.Thread:
    """Stop this process once `pid` (its supervisor) is no longer its parent; call it first thing.

    Returns the daemon thread that watches (it ends the process, never itself).
    """
    _set_parent_death_signal(signal.SIGTERM)
    sleep = threading.Event().wait  # never set: an interruptible sleep

    def watch() -> None:
        while os.getppid() == pid:
            sleep(interval)
        logger.error("the pool supervisor (pid %d) is gone: stopping this worker", pid)
        os.kill(os.getpid(), signal.SIGTERM)
        sleep(grace)  # still here: SIGTERM did not end it (a handler that only noted it, say)
        logger.error("orphaned worker still running %.0fs after SIGTERM: exiting now", grace)
        logging.shutdown()
        os._exit(_EXIT_ORPHANED)

    thread = threading.Thread(target=watch, name="swarrow-supervisor-watch", daemon=True)
    thread.start()
    return thread
