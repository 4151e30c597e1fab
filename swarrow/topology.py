"""The retry topology: per-attempt TTL queues that dead-letter back, and a dead-letter queue.

For queue `Q` with delays d1…dn: `Q.retry.k` holds a copy for `d_k` seconds (`x-message-ttl`), then
RabbitMQ dead-letters it back to `Q` through the default exchange; `Q.dead` keeps what gave up.
The broker does the waiting, so a worker never holds a delayed message (no `consumer_timeout`).
Quorum queues (RabbitMQ >= 3.10) support `x-message-ttl`, so the same layout works for them; with
`quorum=True` every queue of the family is a quorum queue. `dead_letter_strategy="at-least-once"`
makes the retry queues' dead-lettering back to `Q` (and `Q`'s own, with `delivery_limit`) confirmed
by the target queue instead of fire-and-forget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal

from swarrow.backoff import Backoff
from swarrow.broker import Broker, QueueInfo
from swarrow.errors import InvalidMessageError
from swarrow.message import Message
from swarrow.publishable import HEADERS_MAX_BYTES, headers_size
from swarrow.urls import mask_text
from swarrow.validation import require_int, require_seconds

__all__ = [
    "ATTEMPTS_HEADER",
    "DEAD_LETTER_STRATEGIES",
    "DROPPED_HEADERS_HEADER",
    "ERROR_MESSAGE_HEADER",
    "ERROR_TYPE_HEADER",
    "FAILED_AT_HEADER",
    "MAX_ERROR_MESSAGE",
    "ORIGINAL_EXPIRATION_HEADER",
    "ORIGINAL_QUEUE_HEADER",
    "RETRY_ATTEMPT_HEADER",
    "UNDECODABLE_HEADER",
    "UNDECODABLE_PROPERTIES_HEADER",
    "DeadLetterStrategy",
    "RetryTopology",
    "dead_letter_headers",
    "dead_letter_queue_name",
    "error_text",
    "exponential_delays",
    "fit_copy",
    "header_count",
    "qualified_name",
    "republish_copy",
    "retry_queue_name",
]

RETRY_ATTEMPT_HEADER: Final = "x-swarrow-attempt"
#: On a delivery whose properties do not decode: why, and the properties' raw bytes (from the flags
#: on, base64).
UNDECODABLE_HEADER: Final = "x-swarrow-undecodable"
UNDECODABLE_PROPERTIES_HEADER: Final = "x-swarrow-undecodable-properties"
ERROR_TYPE_HEADER: Final = "x-swarrow-error-type"
ERROR_MESSAGE_HEADER: Final = "x-swarrow-error-message"
ATTEMPTS_HEADER: Final = "x-swarrow-attempts"
FAILED_AT_HEADER: Final = "x-swarrow-failed-at"
ORIGINAL_QUEUE_HEADER: Final = "x-swarrow-original-queue"
# The producer's `expiration` (its TTL for waiting in Q), kept on a copy that must not expire with it.
ORIGINAL_EXPIRATION_HEADER: Final = "x-swarrow-original-expiration"
MAX_ERROR_MESSAGE: Final = 1000
# On a copy whose headers could not fit one frame: the original's headers left out, comma-separated.
DROPPED_HEADERS_HEADER: Final = "x-swarrow-dropped-headers"
DeadLetterStrategy = Literal["at-most-once", "at-least-once"]
DEAD_LETTER_STRATEGIES: Final[tuple[DeadLetterStrategy, ...]] = ("at-most-once", "at-least-once")
# Broker-managed headers that would lie on a fresh copy (a quorum queue only sets it when > 0).
_STALE_ON_COPY: Final = frozenset({"x-delivery-count"})


def retry_queue_name(queue: str, attempt: int) -> str:
    """The queue holding copies of `queue`'s messages for retry number `attempt` (1-based)."""
    return f"{queue}.retry.{attempt}"


def dead_letter_queue_name(queue: str) -> str:
    """The queue keeping the messages of `queue` that gave up."""
    return f"{queue}.dead"


def exponential_delays(
    attempts: int, initial: float = 1.0, factor: float = 2.0, cap: float = 960.0
) -> tuple[float, ...]:
    """`attempts` delays in seconds: initial, initial·factor, … each capped at `cap` (1, 2, 4, 8 … 960)."""
    require_int("attempts", attempts)
    require_seconds("initial", initial)
    require_seconds("cap", cap)
    return Backoff(initial=min(initial, cap), maximum=cap, factor=factor).delays(attempts)


def header_count(value: object, limit: int = 1_000_000) -> int | None:
    """A count read from a header, or None for garbage (not an int, a bool, negative, above `limit`)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit:
        return value
    return None


def qualified_name(error: type[BaseException] | BaseException) -> str:
    """`module.QualName` of an exception class (builtins unprefixed), for the error-type header."""
    cls = error if isinstance(error, type) else type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def error_text(text: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """An error's text as swarrow stores, sends or logs it (header, job store, RPC reply, retry warning):
    masked, then cut to `limit` characters.

    Masked before it is cut, so a cut cannot leave half a password unrecognised (`…//u:S3cr`).
    """
    return mask_text(text[: 2 * limit])[:limit]


def dead_letter_headers(error_type: str, error_message: str, *, attempts: int, queue: str) -> dict[str, Any]:
    """The headers a dead-lettered copy carries: why, how many tries, when, and from where."""
    return {
        ERROR_TYPE_HEADER: error_type,
        # Escaped if not UTF-8 (a lone surrogate from a decoded body): the copy could never be sent.
        # Masked as a log line is: the letter sits on the broker and `swarrow dead show` prints it.
        ERROR_MESSAGE_HEADER: _utf8(error_text(error_message)),
        ATTEMPTS_HEADER: attempts,
        FAILED_AT_HEADER: datetime.now(UTC).isoformat(),
        ORIGINAL_QUEUE_HEADER: queue,
    }


def _utf8(text: str) -> str:
    """`text` with what UTF-8 cannot encode (a lone surrogate from a decoded body) escaped."""
    return text.encode("utf-8", "backslashreplace").decode()


def republish_copy(message: Message, headers: Mapping[str, Any]) -> Message:
    """A retry or dead-letter copy: `headers` merged in, minus what must not follow the message there.

    Dropped: broker-managed counts that would go stale; `expiration`, the producer's TTL for waiting
    in Q, which would expire a dead copy in `Q.dead` and cut a retry delay short (kept in
    `x-swarrow-original-expiration`); `user_id`, which RabbitMQ refuses (406, channel closed) unless
    it names the publishing connection's own user.
    """
    merged = {k: v for k, v in message.headers.items() if k not in _STALE_ON_COPY}
    if message.expiration is not None:
        merged[ORIGINAL_EXPIRATION_HEADER] = message.expiration
    merged.update(headers)
    return dataclasses.replace(
        message,
        headers=merged,
        expiration=None,
        user_id=None,
        delivery_tag=None,
        consumer_tag=None,
        redelivered=False,
        exchange="",
        routing_key="",
        queue="",
    )


_KEPT_WHEN_FITTING: Final = frozenset({
    RETRY_ATTEMPT_HEADER, ERROR_TYPE_HEADER, ERROR_MESSAGE_HEADER, ATTEMPTS_HEADER, FAILED_AT_HEADER,
    ORIGINAL_QUEUE_HEADER, DROPPED_HEADERS_HEADER, "swarrot_retry_attempts",
})  # fmt: skip


def fit_copy(copy: Message, limit: int = HEADERS_MAX_BYTES) -> Message | None:
    """`copy` cut down to headers that fit one frame, or None when it fits already or cannot be made to.

    A copy adds headers to the original's: an original near the limit gives a copy no publish can
    ever take, held forever. First our error message is shortened, then the original's largest
    headers are left out, named in `x-swarrow-dropped-headers`: the body always survives.
    """
    headers = dict(copy.headers)
    try:
        over = headers_size(headers) - limit
    except InvalidMessageError:
        return None
    if over <= 0:
        return None
    text = headers.get(ERROR_MESSAGE_HEADER)
    if isinstance(text, str) and text:
        encoded = text.encode()
        kept = encoded[: max(0, len(encoded) - over - 3)]  # 3: the UTF-8 bytes of "…"
        headers[ERROR_MESSAGE_HEADER] = kept.decode(errors="ignore") + "…"
        over = headers_size(headers) - limit
    # Any header may go (a producer may name one x-swarrow-…), the small counts and reasons excepted.
    theirs = [k for k in headers if k not in _KEPT_WHEN_FITTING]
    theirs.sort(key=lambda k: headers_size({k: headers[k]}), reverse=True)
    dropped: list[str] = []
    for key in theirs:
        if over <= 0:
            break
        del headers[key]
        dropped.append(key)
        headers[DROPPED_HEADERS_HEADER] = ",".join(dropped)[:MAX_ERROR_MESSAGE]
        over = headers_size(headers) - limit
    return None if over > 0 else dataclasses.replace(copy, headers=headers)


class RetryTopology:
    """Declares `queue`, its `queue.retry.k` TTL queues (one per delay) and `queue.dead`, idempotently.

    Declaring again with the same options is a no-op; with other delays or queue type it raises
    `ConfigurationError` (RabbitMQ refuses to change a queue's arguments: delete the retry queues first).

    Quorum options (`quorum=True` required):
    - `dead_letter_strategy="at-least-once"`: each retry queue keeps an expired copy until `Q` has
      confirmed it (`x-dead-letter-strategy=at-least-once`, which RabbitMQ honours only with
      `x-overflow=reject-publish`, set too). The default `"at-most-once"` drops a copy whose move
      back to `Q` fails (e.g. `Q` has no leader at that moment).
    - `delivery_limit=N`: the broker's own poison guard on `Q` (`x-delivery-limit`): past N
      requeues it dead-letters the message into `Q.dead` (`x-dead-letter-routing-key`) instead of
      dropping it. Keep it above swarrow's `DeliveryLimitProcessor` limit, which dead-letters first
      and says why in headers; a message `Q` rejects without requeue then also lands in `Q.dead`.
    """

    def __init__(
        self,
        queue: str,
        delays: Sequence[float],
        *,
        quorum: bool = False,
        dead_letter_strategy: DeadLetterStrategy = "at-most-once",
        delivery_limit: int | None = None,
    ) -> None:
        if not queue:
            raise ValueError("queue must be a non-empty queue name")
        if not delays:
            raise ValueError(f"delays must list at least one delay in seconds, got {delays!r}")
        for delay in delays:
            require_seconds("delay", delay)
            if round(delay * 1000) < 1:
                raise ValueError(f"delays must be at least 1 ms (TTLs are whole milliseconds), got {delay!r}")
        if dead_letter_strategy not in DEAD_LETTER_STRATEGIES:
            raise ValueError(
                "dead_letter_strategy must be 'at-most-once' or 'at-least-once', "
                f"got {dead_letter_strategy!r}"
            )
        if delivery_limit is not None:
            require_int("delivery_limit", delivery_limit)
        if not quorum and (dead_letter_strategy != "at-most-once" or delivery_limit is not None):
            option = (
                "delivery_limit" if delivery_limit is not None else "dead_letter_strategy='at-least-once'"
            )
            raise ValueError(f"{option} needs quorum queues (quorum=True): classic queues ignore it")
        self.queue = queue
        self.delays = tuple(float(d) for d in delays)
        self.quorum = quorum
        self.dead_letter_strategy: DeadLetterStrategy = dead_letter_strategy
        self.delivery_limit = delivery_limit

    def queues(self) -> list[tuple[str, dict[str, Any]]]:
        """Every queue to declare, in order, with its arguments."""
        base: dict[str, Any] = {"x-queue-type": "quorum"} if self.quorum else {}
        confirmed: dict[str, Any] = (
            {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
            if self.dead_letter_strategy == "at-least-once"
            else {}
        )
        main = dict(base)
        if self.delivery_limit is not None:
            main.update(
                {
                    "x-delivery-limit": self.delivery_limit,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": dead_letter_queue_name(self.queue),
                    **confirmed,
                }
            )
        planned = [(self.queue, main)]
        for attempt, delay in enumerate(self.delays, start=1):
            arguments = {
                **base,
                "x-message-ttl": round(delay * 1000),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.queue,
                **confirmed,
            }
            planned.append((retry_queue_name(self.queue, attempt), arguments))
        planned.append((dead_letter_queue_name(self.queue), dict(base)))
        return planned

    async def declare(self, broker: Broker) -> list[QueueInfo]:
        """Declare every queue (durable); `ConfigurationError` if one exists with other arguments."""
        return [await broker.declare_queue(name, arguments=args or None) for name, args in self.queues()]

    def __repr__(self) -> str:
        options = ""
        if self.dead_letter_strategy != "at-most-once":
            options += f", dead_letter_strategy={self.dead_letter_strategy!r}"
        if self.delivery_limit is not None:
            options += f", delivery_limit={self.delivery_limit}"
        return f"RetryTopology({self.queue!r}, {list(self.delays)!r}, quorum={self.quorum}{options})"
