"""Per-queue message counts kept as plain ints, pushed into the prometheus-client children on flush.

prometheus-client takes a lock per `inc()` and walks the buckets on every `observe()`: about 2 µs a
message for the metrics layer. Here the event loop only does integer and float arithmetic on one
object; `flush()` adds what changed since the last flush. It runs first in every collection of the
registry (so a scrape shows every message so far), on the processor's heartbeat and at its end.

Threads: only the event loop writes the counting fields; only `flush()`, under a lock, writes the
`_pushed_*` ones. Reading an attribute another thread writes is atomic under the GIL.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram

from swarrow.outcome import OUTCOMES, Outcome

__all__ = ["Accumulator", "histogram_values"]

logger = logging.getLogger(__name__)


class _Value(Protocol):
    def inc(self, amount: float) -> None: ...


def histogram_values(child: Histogram, bounds: Sequence[float]) -> tuple[list[_Value], _Value] | None:
    """The child's bucket and sum value objects; None if this prometheus-client lays them out otherwise.

    prometheus-client has no public "add n observations to bucket i"; its private `_buckets` and
    `_sum` (there in 0.26) are checked here, once, rather than trusted on the hot path.
    """
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    upper = getattr(child, "_upper_bounds", None)
    expected = [*bounds, math.inf]
    if (
        not isinstance(buckets, list)
        or len(buckets) != len(expected)
        or upper is None
        or list(upper) != expected
        or not all(callable(getattr(value, "inc", None)) for value in (*buckets, total))
    ):
        return None
    return buckets, total  # type: ignore[return-value]  # checked above: each has a callable inc


class Accumulator:
    """One queue's counts since the start; the processor adds to them, `flush()` pushes the deltas.

    `bucketed` False means the histogram child cannot be written bucket by bucket (another
    prometheus-client layout): the processor then calls `duration.observe()` itself, and
    `buckets` / `duration_sum` stay at zero.
    """

    __slots__ = (
        "_in_flight_gauge",
        "_lock",
        "_processed_counters",
        "_pushed_buckets",
        "_pushed_in_flight",
        "_pushed_processed",
        "_pushed_received",
        "_pushed_sum",
        "_received_counter",
        "_values",
        "bounds",
        "bucketed",
        "buckets",
        "duration",
        "duration_sum",
        "in_flight",
        "processed",
        "queue",
        "received",
    )

    def __init__(
        self,
        queue: str,
        *,
        received: Counter,
        processed: dict[Outcome, Counter],
        duration: Histogram,
        in_flight: Gauge,
        bounds: Sequence[float],
    ) -> None:
        self.queue = queue
        self.bounds = tuple(bounds)  # the finite upper bounds, ascending, as the histogram was made with
        self.received = 0
        self.in_flight = 0
        self.processed: dict[Outcome, int] = dict.fromkeys(OUTCOMES, 0)
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.duration_sum = 0.0
        self.duration = duration
        self._values = histogram_values(duration, bounds)
        self.bucketed = self._values is not None
        if self._values is None:
            logger.info("prometheus-client's histogram internals differ: observing each duration instead")
        self._received_counter = received
        self._processed_counters = processed
        self._in_flight_gauge = in_flight
        self._pushed_received = 0
        self._pushed_in_flight = 0
        self._pushed_processed: dict[Outcome, int] = dict.fromkeys(OUTCOMES, 0)
        self._pushed_buckets = [0] * len(self.buckets)
        self._pushed_sum = 0.0
        self._lock = threading.Lock()

    def flush(self) -> None:
        """Add what was counted since the last flush to the children; any thread may call it."""
        with self._lock:
            received = self.received
            if received != self._pushed_received:
                self._received_counter.inc(received - self._pushed_received)
                self._pushed_received = received
            processed, pushed = self.processed, self._pushed_processed
            for outcome, counter in self._processed_counters.items():
                count = processed[outcome]
                if count != pushed[outcome]:
                    counter.inc(count - pushed[outcome])
                    pushed[outcome] = count
            if self._values is not None:
                bucket_values, sum_value = self._values
                buckets, pushed_buckets = self.buckets, self._pushed_buckets
                for i, value in enumerate(bucket_values):
                    count = buckets[i]
                    if count != pushed_buckets[i]:
                        value.inc(count - pushed_buckets[i])
                        pushed_buckets[i] = count
                # Running total minus what was pushed, not a per-flush partial sum: the exposed sum
                # then lands on the very float observe() would have accumulated (bar the last bit).
                total = self.duration_sum
                if total != self._pushed_sum:
                    sum_value.inc(total - self._pushed_sum)
                    self._pushed_sum = total
            in_flight = self.in_flight
            if in_flight != self._pushed_in_flight:
                self._in_flight_gauge.set(in_flight)
                self._pushed_in_flight = in_flight
