"""Exponential backoff: how long to wait after the n-th failure in a row."""

from __future__ import annotations

from dataclasses import dataclass

from swarrow.validation import require_seconds

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before restarting a crashed worker: `initial`·2^(n-1) after the n-th crash in a row, at most
    `maximum`; a worker that lived `reset_after` seconds starts the count again."""

    initial: float = 1.0
    maximum: float = 30.0
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        require_seconds("initial", self.initial)
        require_seconds("maximum", self.maximum)
        require_seconds("reset_after", self.reset_after, allow_zero=True)
        if self.maximum < self.initial:
            raise ValueError(f"maximum must be >= initial ({self.initial!r}), got {self.maximum!r}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` crashes in a row (0 for none)."""
        if failures <= 0:
            return 0.0
        # Capped exponent: 2.0**1100 overflows a float.
        return min(self.maximum, self.initial * 2.0 ** min(failures - 1, 64))
