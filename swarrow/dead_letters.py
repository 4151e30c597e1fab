"""Dead letters you can read and bring back: list, show, replay and purge a dead-letter queue safely.

Every operation is one `QueueScan` pass: messages are read with manual acks and only the ones an
operation takes are acked, so whatever happens (an error, kill -9, a broker restart) every other
message is back in the dead-letter queue, in its order. A replay publishes a copy and waits for the
broker's confirm *before* it acks the dead letter: a crash between the two leaves a duplicate, never
a loss. Memory stays bounded: letters are streamed and aggregated, bodies are not kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, get_args

from swarrow._dead_letter import (
    REPLAY_COUNT_HEADER,
    REPLAYED_AT_HEADER,
    UNKNOWN,
    DeadLetter,
    Origin,
    Selection,
    jsonable,
    replay_copy,
)
from swarrow._replay import ReplayInterrupted, ReplayResult, replay_dead_letters
from swarrow.scan import QueueScan, Scannable, open_scan
from swarrow.topology import dead_letter_queue_name

__all__ = [
    "GROUP_BY",
    "REPLAYED_AT_HEADER",
    "REPLAY_COUNT_HEADER",
    "DeadLetter",
    "DeadLetterGroup",
    "DeadLetterSummary",
    "GroupBy",
    "Origin",
    "PurgeResult",
    "QueueScan",
    "ReplayInterrupted",
    "ReplayResult",
    "Selection",
    "dead_letter_queue_name",
    "jsonable",
    "list_dead_letters",
    "purge_dead_letters",
    "replay_copy",
    "replay_dead_letters",
    "show_dead_letters",
]

GroupBy = Literal["error-type", "error-message", "day"]
GROUP_BY: Final[tuple[str, ...]] = get_args(GroupBy)
# Bounds that keep a listing of any size in constant memory (error messages often embed ids).
MAX_GROUPS: Final = 1000
MAX_GROUP_KEY: Final = 200
OTHER_GROUP: Final = "(other groups)"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class DeadLetterGroup:
    """Dead letters sharing a key: how many, their bytes, first and last failure, one sample id."""

    key: str
    count: int = 0
    body_bytes: int = 0
    first_failed_at: datetime | None = None
    last_failed_at: datetime | None = None
    sample_message_id: str | None = None

    def add(self, letter: DeadLetter) -> None:
        """Count `letter` in this group."""
        self.count += 1
        self.body_bytes += len(letter.message.body)
        at = letter.failed_at
        if at is not None:
            if self.first_failed_at is None or at < self.first_failed_at:
                self.first_failed_at = at
            if self.last_failed_at is None or at > self.last_failed_at:
                self.last_failed_at = at
        if self.sample_message_id is None and letter.message_id:
            self.sample_message_id = letter.message_id

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "key": self.key,
            "count": self.count,
            "body_bytes": self.body_bytes,
            "first_failed_at": self.first_failed_at.isoformat() if self.first_failed_at else None,
            "last_failed_at": self.last_failed_at.isoformat() if self.last_failed_at else None,
            "sample_message_id": self.sample_message_id,
        }


@dataclass(frozen=True, slots=True)
class DeadLetterSummary:
    """What `list_dead_letters` found: the total, the groups (largest first) and how long it took."""

    queue: str
    group_by: GroupBy
    total: int
    groups: tuple[DeadLetterGroup, ...]
    elapsed: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "queue": self.queue,
            "group_by": self.group_by,
            "total": self.total,
            "elapsed_seconds": round(self.elapsed, 3),
            "groups": [g.as_dict() for g in self.groups],
        }


def _group_key(letter: DeadLetter, group_by: GroupBy) -> str:
    if group_by == "error-type":
        return letter.error_type
    if group_by == "day":
        return letter.failed_at.date().isoformat() if letter.failed_at else UNKNOWN
    text = " ".join(letter.error_message.split())  # one line: messages may hold tracebacks
    if len(text) > MAX_GROUP_KEY:
        text = text[: MAX_GROUP_KEY - 1] + "…"
    return f"{letter.error_type}: {text}" if text else letter.error_type


async def list_dead_letters(
    broker: Scannable,
    queue: str,
    *,
    group_by: GroupBy = "error-type",
    clock: Callable[[], float] = time.monotonic,
) -> DeadLetterSummary:
    """Count the dead letters in `queue`, grouped; every one is back in the queue afterwards.

    `queue` is the dead-letter queue itself (`dead_letter_queue_name("emails")` is `emails.dead`).
    At most `MAX_GROUPS` groups are kept; letters past that are counted under `(other groups)`.
    """
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}, got {group_by!r}")
    started = clock()
    groups: dict[str, DeadLetterGroup] = {}
    total = 0
    async with open_scan(broker, queue) as scan:
        async for message in scan.messages():
            total += 1
            letter = DeadLetter.from_message(message, total)
            key = _group_key(letter, group_by)
            group = groups.get(key)
            if group is None:
                if len(groups) >= MAX_GROUPS:
                    key = OTHER_GROUP
                group = groups.get(key) or groups.setdefault(key, DeadLetterGroup(key))
            group.add(letter)
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.key))
    return DeadLetterSummary(queue, group_by, total, tuple(ordered), clock() - started)


async def show_dead_letters(
    broker: Scannable, queue: str, *, message_id: str | None = None, limit: int | None = 10
) -> list[DeadLetter]:
    """The first `limit` dead letters of `queue` (None: all), or those with `message_id`; none is taken.

    Bodies are kept for what is returned, so keep `limit` modest on queues of large messages.
    """
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a whole number >= 1 or None, got {limit!r}")
    found: list[DeadLetter] = []
    position = 0
    async with open_scan(broker, queue) as scan:
        async for message in scan.messages():
            position += 1
            if message_id is None or message.message_id == message_id:
                found.append(DeadLetter.from_message(message, position))
                if limit is not None and len(found) >= limit:
                    break
    return found


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What a purge dropped and kept (`dry_run`: what it would have dropped)."""

    queue: str
    purged: int
    kept: int
    dry_run: bool
    elapsed: float
    by_error_type: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """`purged N, kept M` (or `would purge N, keep M`)."""
        if self.dry_run:
            return f"would purge {self.purged}, keep {self.kept}"
        return f"purged {self.purged}, kept {self.kept}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "queue": self.queue,
            "purged": self.purged,
            "kept": self.kept,
            "dry_run": self.dry_run,
            "elapsed_seconds": round(self.elapsed, 3),
            "by_error_type": dict(self.by_error_type),
        }


async def purge_dead_letters(
    broker: Scannable,
    queue: str,
    *,
    selection: Selection | None = None,
    older_than: timedelta | float | None = None,
    dry_run: bool = False,
    now: Callable[[], datetime] = _utcnow,
    clock: Callable[[], float] = time.monotonic,
) -> PurgeResult:
    """Drop the selected dead letters of `queue` for good; the others stay, in order.

    `older_than` (seconds or a timedelta) keeps letters that failed more recently than that, and
    letters whose failure time is unknown. Only selected messages are ever acked.
    """
    selection = selection or Selection()
    if older_than is not None:
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else float(older_than)
        if seconds < 0:
            raise ValueError(f"older_than must be >= 0 seconds, got {older_than!r}")
        cutoff = now() - timedelta(seconds=seconds)
        until = cutoff if selection.until is None else min(cutoff, selection.until)
        selection = Selection(selection.error_types, selection.message_ids, selection.since, until,
                              selection.limit)  # fmt: skip
    started = clock()
    purged = kept = 0
    by_type: dict[str, int] = {}
    async with open_scan(broker, queue) as scan:
        async for message in scan.messages():
            letter = DeadLetter.from_message(message, purged + kept + 1)
            full = selection.limit is not None and purged >= selection.limit
            if full or not selection.matches(letter):
                kept += 1
                continue
            if not dry_run:
                await scan.ack(message)
            purged += 1
            if letter.error_type in by_type or len(by_type) < MAX_GROUPS:
                by_type[letter.error_type] = by_type.get(letter.error_type, 0) + 1
    return PurgeResult(queue, purged, kept, dry_run, clock() - started, by_type)
