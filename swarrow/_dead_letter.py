"""What a dead letter says about itself: why it failed, when, where it came from, and its replay copy.

Read from swarrow's `x-swarrow-*` headers when they are there, else from the broker's own `x-death`
(a queue's dead-letter exchange, a quorum queue's delivery limit). Header values are producer data:
every reader here tolerates garbage (wrong types, bytes, naive dates) and never raises.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Final, Literal

from swarrow.message import Message
from swarrow.swarrot import SWARROT_ATTEMPTS_HEADER
from swarrow.topology import (
    ATTEMPTS_HEADER,
    ERROR_MESSAGE_HEADER,
    ERROR_TYPE_HEADER,
    FAILED_AT_HEADER,
    ORIGINAL_QUEUE_HEADER,
    RETRY_ATTEMPT_HEADER,
    header_count,
)

__all__ = [
    "REPLAYED_AT_HEADER",
    "REPLAY_COUNT_HEADER",
    "UNKNOWN",
    "DeadLetter",
    "Origin",
    "Selection",
    "jsonable",
    "replay_copy",
]

REPLAYED_AT_HEADER: Final = "x-swarrow-replayed-at"
REPLAY_COUNT_HEADER: Final = "x-swarrow-replay-count"
UNKNOWN: Final = "unknown"
Origin = Literal["swarrow", "x-death", "unknown"]

# Headers a replayed copy must not carry: retries and the poison guard count afresh from them.
_RESET_ON_REPLAY: Final = frozenset(
    {
        RETRY_ATTEMPT_HEADER,
        SWARROT_ATTEMPTS_HEADER,  # swarrot's retry count (a PHP worker's, or --retry-topology swarrot)
        ERROR_TYPE_HEADER,
        ERROR_MESSAGE_HEADER,
        ATTEMPTS_HEADER,
        FAILED_AT_HEADER,
        ORIGINAL_QUEUE_HEADER,
        "x-death",
        "x-delivery-count",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-first-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-last-death-exchange",
    }
)


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return None


def _instant(value: object) -> datetime | None:
    """A timezone-aware UTC datetime from an ISO string or an AMQP timestamp, else None."""
    if isinstance(value, bytes | bytearray):
        value = _text(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return None


def _latest_death(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The most recent `x-death` entry (RabbitMQ keeps it first), or None."""
    deaths = headers.get("x-death")
    if isinstance(deaths, list | tuple):
        for death in deaths:
            if isinstance(death, Mapping):
                return death
    return None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message read from a dead-letter queue, with what its headers say about its failure.

    `error_type` is swarrow's `x-swarrow-error-type`, or `x-death:<reason>` (`rejected`, `expired`,
    `delivery_limit`, `maxlen`) for a message the broker dead-lettered itself, or `unknown`.
    `original_queue` is where a replay sends it by default: `x-swarrow-original-queue`, else the
    queue the latest `x-death` entry names. `position` counts from 1 at the head of the queue.
    """

    message: Message
    position: int
    origin: Origin
    error_type: str
    error_message: str
    attempts: int | None
    failed_at: datetime | None
    original_queue: str | None
    replay_count: int

    @classmethod
    def from_message(cls, message: Message, position: int = 0) -> DeadLetter:
        """Read a dead letter's story from its headers (garbage headers read as unknown)."""
        h = message.headers
        replays = header_count(h.get(REPLAY_COUNT_HEADER)) or 0
        error_type = _text(h.get(ERROR_TYPE_HEADER))
        death = _latest_death(h)
        if error_type:
            original = _text(h.get(ORIGINAL_QUEUE_HEADER))
            if not original and death is not None:
                original = _text(death.get("queue"))
            return cls(
                message,
                position,
                "swarrow",
                error_type,
                _text(h.get(ERROR_MESSAGE_HEADER)) or "",
                header_count(h.get(ATTEMPTS_HEADER)),
                _instant(h.get(FAILED_AT_HEADER)),
                original or None,
                replays,
            )
        if death is not None:
            reason = _text(death.get("reason")) or UNKNOWN
            queue = _text(death.get("queue")) or None
            count = header_count(death.get("count"))
            detail = f"dead-lettered by the broker ({reason}) from queue {queue!r}"
            if count is not None:
                detail += f", {count} time{'' if count == 1 else 's'}"
            return cls(message, position, "x-death", f"x-death:{reason}", detail, count,
                       _instant(death.get("time")), queue, replays)  # fmt: skip
        return cls(message, position, "unknown", UNKNOWN, "", None, None, None, replays)

    @property
    def message_id(self) -> str | None:
        """The message's `message_id` property."""
        return self.message.message_id

    def summary(self) -> dict[str, Any]:
        """The failure story as JSON-ready data (no body, no headers)."""
        return {
            "position": self.position,
            "message_id": self.message.message_id,
            "origin": self.origin,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "attempts": self.attempts,
            "failed_at": self.failed_at.isoformat() if self.failed_at else None,
            "original_queue": self.original_queue,
            "replay_count": self.replay_count,
            "body_size": len(self.message.body),
        }


def _type_matches(wanted: str, actual: str) -> bool:
    # `ValueError` selects builtins and `myapp.errors.ValueError` alike; a dotted name must match whole.
    return actual == wanted or ("." not in wanted and actual.rsplit(".", 1)[-1] == wanted)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a replay or purge takes; every given criterion must hold (empty: all).

    `error_types` match the whole type or, for a name without a dot, its last part (`ValueError`
    matches `myapp.ValueError`). Times compare to the failure time; a letter without one is only
    selected when no time bound is given. `limit` takes the first N that match, from the head.
    """

    error_types: Collection[str] = ()
    message_ids: Collection[str] = ()
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    _types: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 0):
            raise ValueError(f"limit must be a whole number >= 0, got {self.limit!r}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, datetime):
                raise ValueError(f"{name} must be a datetime, got {value!r}")
            object.__setattr__(self, name, _instant(value))  # naive means UTC
        if isinstance(self.error_types, str) or isinstance(self.message_ids, str):
            raise ValueError("error_types and message_ids take a collection of strings, not one string")
        object.__setattr__(self, "_types", tuple(self.error_types))

    def matches(self, letter: DeadLetter) -> bool:
        """True when `letter` meets every criterion except the limit (the caller counts that)."""
        if self._types and not any(_type_matches(t, letter.error_type) for t in self._types):
            return False
        if self.message_ids and letter.message.message_id not in self.message_ids:
            return False
        if self.since is not None or self.until is not None:
            at = letter.failed_at
            if at is None:
                return False
            if self.since is not None and at < self.since:
                return False
            if self.until is not None and at >= self.until:
                return False
        return True


def replay_copy(message: Message, now: datetime) -> Message:
    """The copy a replay publishes: same body and properties, failure headers dropped, replay stamped.

    The attempt, error and `x-death` headers go (retries and the delivery limit count afresh);
    `x-swarrow-replayed-at` is `now` (ISO-8601 UTC) and `x-swarrow-replay-count` one more than before.
    """
    headers: dict[str, Any] = {k: v for k, v in message.headers.items() if k not in _RESET_ON_REPLAY}
    headers[REPLAY_COUNT_HEADER] = (header_count(message.headers.get(REPLAY_COUNT_HEADER)) or 0) + 1
    headers[REPLAYED_AT_HEADER] = now.astimezone(UTC).isoformat()
    # user_id goes: RabbitMQ refuses (406) a user_id other than the publishing connection's own user.
    m = message  # built directly: `dataclasses.replace` cost more than the rest of a replay's own work
    return Message(m.body, headers, m.content_type, m.content_encoding, m.delivery_mode, m.priority,
                   m.correlation_id, m.reply_to, m.expiration, m.message_id, m.timestamp, m.type)  # fmt: skip


def jsonable(value: Any) -> Any:
    """Header values as JSON data: ISO-8601 dates, bytes as UTF-8 text or base64, decimals as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return repr(value)
