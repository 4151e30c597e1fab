"""Stop signals, written once: the first one asks for a graceful stop, any later one to stop now.

The consumer (`processors.signal_handler`) and the pool's supervisor both count through it: the first
SIGTERM/SIGINT drains (in-flight work finishes and is acked), a second stops now (in-flight work is
left unacked and redelivered).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterable
from contextvars import ContextVar

__all__ = ["StopSignals", "exiting_after_the_watch", "ignore_stop_signals", "watch_closing"]

# Set by a process that exits once its consumer or pool stops (the CLI): see `watch_closing`.
_exiting_after_the_watch: ContextVar[bool] = ContextVar("swarrow_exiting_after_the_watch", default=False)


def exiting_after_the_watch() -> None:
    """Say, for the current task and those it starts, that the process exits once its signal watch ends."""
    _exiting_after_the_watch.set(True)


def ignore_stop_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on (a process that is leaving); only the main thread can."""
    if threading.current_thread() is threading.main_thread():
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, signal.SIG_IGN)


def watch_closing(watched: Iterable[int]) -> None:
    """Called just before a signal watch closes: hand SIGINT and SIGTERM straight to "ignore".

    Closing the watch removes the loop's handlers, which puts Python's own back (a Ctrl-C is a
    KeyboardInterrupt, a SIGTERM death), and `signal.signal` runs a signal still pending with the
    handler it has just installed: a Ctrl-C that came a moment earlier became a KeyboardInterrupt
    inside the loop's teardown. So: ignore first (what is pending is dropped, what comes is
    discarded), then remove the loop's handler and ignore again on the next line; the watch's own
    close then finds nothing to restore (`remove_signal_handler` returns False).
    """
    if not _exiting_after_the_watch.get() or threading.current_thread() is not threading.main_thread():
        return
    ignore_stop_signals()
    loop = asyncio.get_running_loop()
    for stop_signal in (s for s in (signal.SIGINT, signal.SIGTERM) if s in watched):
        loop.remove_signal_handler(stop_signal)
        signal.signal(stop_signal, signal.SIG_IGN)


class StopSignals:
    """Counts the stop signals received; `receive` says what the latest one asks for."""

    __slots__ = ("received",)

    def __init__(self) -> None:
        self.received = 0

    def receive(self, signum: int) -> tuple[str, bool]:
        """Count `signum`: its name, and True when it asks to stop now (it is not the first)."""
        self.received += 1
        return signal.Signals(signum).name, self.received > 1
