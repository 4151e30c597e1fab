"""Replay: publish each selected dead letter back with confirms, then ack it in the dead-letter queue.

Copies go out in batches (bounded by count and bytes) and every confirm of a batch is awaited before
its dead letters are acked, so the broker holds each message in its target, in the dead-letter
queue, or in both (after a crash between confirm and ack) — never in neither.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup

from swarrow._dead_letter import DeadLetter, Selection, replay_copy
from swarrow.errors import BrokerUnavailableError, ConfigurationError
from swarrow.message import Message
from swarrow.scan import QueueScan, Scannable, open_scan

__all__ = ["ReplayInterrupted", "ReplayResult", "replay_dead_letters"]

MAX_REASONS: Final = 20
_BATCH_BYTES: Final = 8 * 2**20
# Batches awaiting their confirms while the next one is read and sent: keeps the broker busy.
_WINDOW: Final = 3


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay did: `replayed` confirmed and acked, `kept` not selected, `failed` selected but kept.

    `targets` counts replayed copies per queue; `failures` counts failed ones per reason. With
    `dry_run`, `replayed` is what would have been replayed and nothing was published or acked.
    """

    queue: str
    replayed: int
    kept: int
    failed: int
    dry_run: bool
    elapsed: float
    targets: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """The closing line: `replayed N, kept M, failed K`."""
        verb = "would replay" if self.dry_run else "replayed"
        return f"{verb} {self.replayed}, kept {self.kept}, failed {self.failed}"

    @property
    def rate(self) -> float:
        """Replayed messages per second."""
        return self.replayed / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "queue": self.queue,
            "replayed": self.replayed,
            "kept": self.kept,
            "failed": self.failed,
            "dry_run": self.dry_run,
            "elapsed_seconds": round(self.elapsed, 3),
            "targets": dict(self.targets),
            "failures": dict(self.failures),
        }


class ReplayInterrupted(BrokerUnavailableError):
    """Raised when the broker connection is lost mid-replay; `result` says what was done before.

    Nothing is lost: what was confirmed was acked after its confirm, the rest is still in the
    dead-letter queue. Running the replay again finishes the job.
    """

    def __init__(self, message: str, result: ReplayResult) -> None:
        super().__init__(message)
        self.result = result


class _Replay:
    """The running totals and the pending batch of one replay pass."""

    def __init__(self, scan: QueueScan, *, to: str | None, fallback: str | None, dry_run: bool,
                 now: datetime, batch_size: int, group: TaskGroup,
                 on_replayed: Callable[[Message, str], None] | None = None,
                 otel: bool = False) -> None:  # fmt: skip
        self.scan = scan
        self.otel = otel
        self.on_replayed = on_replayed
        self.to = to
        self.fallback = fallback
        self.dry_run = dry_run
        self.now = now
        self.batch_size = batch_size
        self.replayed = self.kept = self.failed = self.selected = 0
        self.targets: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self._exists: dict[str, bool] = {}
        self._pending: list[tuple[Message, Message, str]] = []
        self._pending_bytes = 0
        self._in_flight: deque[_Batch] = deque()
        self._group = group

    def fail(self, reason: str, count: int = 1) -> None:
        self.failed += count
        if reason in self.failures or len(self.failures) < MAX_REASONS:
            self.failures[reason] = self.failures.get(reason, 0) + count
        else:
            self.failures["(other reasons)"] = self.failures.get("(other reasons)", 0) + count

    async def _target(self, letter: DeadLetter) -> str | None:
        target = self.to or letter.original_queue or self.fallback
        if not target:
            self.fail("no original queue in its headers (give a target queue: --to)")
            return None
        if target == self.scan.queue_name:
            self.fail(f"its target is the dead-letter queue {target!r} itself")
            return None
        if len(target.encode("utf-8", "replace")) > 255:  # a header's garbage, not a queue AMQP can name
            self.fail("its original queue header is not a queue name (longer than 255 bytes)")
            return None
        exists = self._exists.get(target)
        if exists is None:
            if len(self._exists) >= 1000:  # garbage headers must not grow this without bound
                self._exists.clear()
            try:
                exists = self._exists[target] = await self.scan.queue_exists(target)
            except ConfigurationError as exc:  # a name the client refuses: this letter stays
                self.fail(str(exc))
                return None
        if not exists:
            self.fail(f"target queue {target!r} does not exist")
            return None
        return target

    async def take(self, letter: DeadLetter) -> None:
        self.selected += 1
        target = await self._target(letter)
        if target is None:
            return
        if self.dry_run:
            self._count_replayed(target)
            return
        copy = replay_copy(letter.message, self.now)
        self._pending.append((letter.message, copy, target))
        self._pending_bytes += len(copy.body)
        if len(self._pending) >= self.batch_size or self._pending_bytes >= _BATCH_BYTES:
            await self.flush()

    def _count_replayed(self, target: str) -> None:
        self.replayed += 1
        if target in self.targets or len(self.targets) < MAX_REASONS:
            self.targets[target] = self.targets.get(target, 0) + 1

    async def flush(self) -> None:
        """Send the pending batch; settle the oldest batches in flight beyond the window."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if pending:
            batch = _Batch(pending, self.otel)
            self._in_flight.append(batch)
            self._group.start_soon(batch.send, self.scan)
        # Ack what is confirmed as soon as it is (a crash then leaves fewer duplicates), in order.
        while self._in_flight and (len(self._in_flight) > _WINDOW or self._in_flight[0].done.is_set()):
            await self._settle(self._in_flight.popleft())

    async def finish(self) -> None:
        """Send what is pending and settle every batch."""
        await self.flush()
        while self._in_flight:
            await self._settle(self._in_flight.popleft())

    async def _settle(self, batch: _Batch) -> None:
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error
        confirmed = []
        for (original, copy, target), error in zip(batch.items, batch.outcomes, strict=True):
            if error is None:
                confirmed.append(original)
                self._count_replayed(target)
                if self.on_replayed is not None:
                    self.on_replayed(copy, target)
            else:
                self.fail(str(error))
        await self.scan.ack_all(confirmed)  # only now: their copies are confirmed


class _Batch:
    """Copies published together; `done` once every confirm (or the error) is in."""

    def __init__(self, items: list[tuple[Message, Message, str]], otel: bool = False) -> None:
        self.items = items
        self.otel = otel
        self.outcomes: list[Exception | None] = []
        self.error: Exception | None = None
        self.done = anyio.Event()

    async def send(self, scan: QueueScan) -> None:
        copies = [(copy, target) for _, copy, target in self.items]
        spans = None
        if self.otel:  # a PRODUCER span per copy, in the trace the letter's headers carry
            from swarrow.otel import start_send_spans

            copies, spans = start_send_spans(copies)
        try:
            self.outcomes = await scan.publish(copies)
        except Exception as exc:  # re-raised in order by the replay that settles this batch
            self.error = exc
        finally:
            if spans is not None:
                from swarrow.otel import end_send_spans

                end_send_spans(spans, self.outcomes, self.error)
            self.done.set()


async def _pass(
    scan: QueueScan, run: _Replay, selection: Selection, progress: Callable[[int, int], None] | None
) -> None:
    seen = 0
    async for message in scan.messages():
        seen += 1
        if selection.limit is not None and run.selected >= selection.limit:
            run.kept += scan.count - seen + 1  # the rest stays unread, in place
            break
        letter = DeadLetter.from_message(message, seen)
        if selection.matches(letter):
            await run.take(letter)
        else:
            run.kept += 1
        if progress is not None:
            progress(seen, scan.count)
    await run.finish()


async def replay_dead_letters(
    broker: Scannable,
    queue: str,
    *,
    to: str | None = None,
    selection: Selection | None = None,
    fallback_queue: str | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    on_replayed: Callable[[Message, str], None] | None = None,
    batch_size: int = 500,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    clock: Callable[[], float] = time.monotonic,
    otel: bool = False,
) -> ReplayResult:
    """Publish the selected dead letters of `queue` back, confirmed, then ack them; keep the rest in order.

    Each copy goes to `to`, else the letter's original queue (`x-swarrow-original-queue`, else the
    queue its latest `x-death` names), else `fallback_queue`; see `replay_copy` for its headers. A
    letter whose copy cannot go (no target, a missing queue, a nack) stays and counts as failed.
    `progress(done, total)` is called as letters are read; `on_replayed(copy, target)` for each copy
    the broker confirmed (e.g. to record the job as waiting again: `swarrow.jobs.replayed_job`).
    Raises `ReplayInterrupted` (a `BrokerUnavailableError`) if the connection drops: run it again
    to finish. `otel`: each copy is a PRODUCER span `send {target}` in the trace its letter's headers
    carry, its context injected (needs `swarrow[otel]`).
    """
    if otel:
        from swarrow.otel import require_otel

        require_otel()
    if isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if to is not None and not to:
        raise ValueError("to must be a queue name, not empty")
    selection = selection or Selection()
    started = clock()
    run: _Replay | None = None

    def result() -> ReplayResult:
        if run is None:
            raise RuntimeError("replay result asked for before the replay started")
        return ReplayResult(queue, run.replayed, run.kept, run.failed, dry_run, clock() - started,
                            run.targets, run.failures)  # fmt: skip

    try:
        async with open_scan(broker, queue) as scan:
            if to is not None and not await scan.queue_exists(to):
                raise ConfigurationError(f"target queue {to!r} does not exist: declare it first")
            try:
                async with anyio.create_task_group() as group:
                    run = _Replay(scan, to=to, fallback=fallback_queue, dry_run=dry_run, now=now(),
                                  batch_size=batch_size, group=group, on_replayed=on_replayed,
                                  otel=otel)  # fmt: skip
                    await _pass(scan, run, selection, progress)
            except BaseExceptionGroup as grouped:  # the batches never raise: this is the pass's own
                raise grouped.exceptions[0] from None
    except BrokerUnavailableError as exc:
        if run is None:
            raise
        done = result()
        raise ReplayInterrupted(
            f"{exc}; {done.replayed} dead letter(s) were replayed (confirmed, then acked) before it: "
            "the others are still in the dead-letter queue, run the replay again to finish",
            done,
        ) from exc
    return result()
