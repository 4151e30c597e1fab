"""Exit codes, all defined here: the contract between a `swarrow` command (a pool too) and its caller."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = [
    "EXIT_BROKER",
    "EXIT_CODES",
    "EXIT_CRASH",
    "EXIT_IMPORT",
    "EXIT_JOBS_UNFINISHED",
    "EXIT_JOBS_UNKNOWN",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
]

EXIT_OK: Final = 0
EXIT_CRASH: Final = 1
EXIT_USAGE: Final = 2
EXIT_IMPORT: Final = 3
EXIT_BROKER: Final = 4
EXIT_TIMEOUT: Final = 5  # swarrow call: no reply in time
EXIT_JOBS_UNKNOWN: Final = 6  # swarrow jobs status: an id the store has never seen
EXIT_JOBS_UNFINISHED: Final = 7  # swarrow jobs status/wait: a job still running or retrying
# `swarrow consume`'s (and the pool's); the other commands list their own subset in their --help.
EXIT_CODES: Final[Mapping[int, str]] = {
    EXIT_OK: "graceful stop: a limit, a signal (SIGTERM/SIGINT), --stop-when-idle, or the callback asked",
    EXIT_CRASH: "the consumer crashed: an exception escaped the stack (--no-catch), or a publish was nacked",
    EXIT_USAGE: "usage: a bad flag, value or config file, a missing queue, conflicting queue arguments "
    "or a queue the user may not declare",
    EXIT_IMPORT: "the callable cannot be imported (missing module or attribute, error while importing)",
    EXIT_BROKER: "the broker is unreachable or refused the credentials",
}
