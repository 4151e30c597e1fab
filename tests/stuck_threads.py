"""pytest hooks: a thread a test left running fails the run at exit, naming it, instead of hanging it.

CI once spent its whole 5400 s budget after "1213 passed": a non-daemon thread a test had left behind kept the
interpreter from exiting. After the session, non-daemon threads get a grace period to end; any still running
are printed with their stacks and the run exits 1 (or with its own failing status).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

import pytest

GRACE_SECONDS = float(os.environ.get("SWARROW_TEST_THREAD_GRACE", "15"))

_session_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _session_status.append(int(exitstatus))


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _session_status:
        return
    deadline = time.monotonic() + GRACE_SECONDS
    stuck = _left_running()
    for thread in stuck:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread for thread in stuck if thread.is_alive()]
    if not stuck:
        return
    frames = sys._current_frames()
    lines = [f"\nerror: {len(stuck)} thread(s) still running {GRACE_SECONDS:g} s after the tests ended "
             "(a test left them behind; the interpreter would wait for them for ever):"]  # fmt: skip
    for thread in stuck:
        lines.append(f"--- {thread.name} (ident {thread.ident})")
        frame = frames.get(thread.ident or -1)
        if frame is not None:
            lines.append("".join(traceback.format_stack(frame)).rstrip())
    status = _session_status[-1] or 1
    lines.append(f"exiting {status} without waiting for them")
    sys.stdout.flush()
    print("\n".join(lines), file=sys.stderr, flush=True)
    _hard_exit(status)


def _left_running() -> list[threading.Thread]:
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]


def _hard_exit(status: int) -> None:
    # The interpreter's own exit joins every non-daemon thread: only _exit leaves them behind. conftest.py
    # guards os._exit in the pytest process (a CLI run in-process must not end the run); this is the one
    # deliberate use, so it takes the original.
    real_exit = getattr(os._exit, "__swarrow_real_exit__", os._exit)
    real_exit(status)
