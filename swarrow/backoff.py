"""Exponential backoff, written once: how long to wait after the n-th failure in a row.

Every wait that grows after each failure uses it: the pool's worker restarts and spawn retries, the
consumer's re-consume after a reconnect, a refused retry copy's republish, the job store's writes, and
the retry topology's delays (`swarrow.topology.exponential_delays`, `exp:1s..16m`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from swarrow.validation import require_seconds

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """`initial`·`factor`^(n-1) seconds after the n-th failure in a row, at most `maximum`.

    `reset_after` (the pool): a worker that lived that many seconds starts the count again.
    """

    initial: float = 1.0
    maximum: float = 30.0
    reset_after: float = 30.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        require_seconds("initial", self.initial)
        require_seconds("maximum", self.maximum)
        require_seconds("reset_after", self.reset_after, allow_zero=True)
        if self.maximum < self.initial:
            raise ValueError(f"maximum must be >= initial ({self.initial!r}), got {self.maximum!r}")
        if isinstance(self.factor, bool) or not math.isfinite(self.factor) or self.factor < 1:
            raise ValueError(f"factor must be a finite number >= 1, got {self.factor!r}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` failures in a row (0 for none)."""
        if failures <= 0:
            return 0.0
        try:
            grown = self.initial * self.factor ** (failures - 1)
        except OverflowError:  # 2.0**1100: far past any maximum
            return self.maximum
        return min(self.maximum, grown)

    def delays(self, count: int) -> tuple[float, ...]:
        """The first `count` delays: after one failure, two, … `count`."""
        return tuple(self.delay(n) for n in range(1, count + 1))
