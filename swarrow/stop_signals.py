"""Stop signals, written once: the first one asks for a graceful stop, any later one to stop now.

The consumer (`processors.signal_handler`) and the pool's supervisor both count through it: the first
SIGTERM/SIGINT drains (in-flight work finishes and is acked), a second stops now (in-flight work is
left unacked and redelivered).
"""

from __future__ import annotations

import signal

__all__ = ["StopSignals"]


class StopSignals:
    """Counts the stop signals received; `receive` says what the latest one asks for."""

    __slots__ = ("received",)

    def __init__(self) -> None:
        self.received = 0

    def receive(self, signum: int) -> tuple[str, bool]:
        """Count `signum`: its name, and True when it asks to stop now (it is not the first)."""
        self.received += 1
        return signal.Signals(signum).name, self.received > 1
