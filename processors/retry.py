"""Retry later by the broker: republish a failed message to a TTL queue, or dead-letter it."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from processors._republish import RepublishFailed, RepublishState, publish_copy
from swarrow.errors import ConfigurationError, PermanentError, RetryLater, StopConsumer
from swarrow.message import Message
from swarrow.outcome import DEAD_LETTERED, RETRIED, record_error, record_outcome
from swarrow.processor import Processor
from swarrow.publisher import Publisher
from swarrow.swarrot import SWARROT_ATTEMPTS_HEADER, RetryTopologyName, SwarrotTopology, stray_retry_route
from swarrow.topology import (
    ERROR_MESSAGE_HEADER,
    ERROR_TYPE_HEADER,
    RETRY_ATTEMPT_HEADER,
    RetryTopology,
    dead_letter_headers,
    dead_letter_queue_name,
    error_text,
    exponential_delays,
    qualified_name,
    republish_copy,
    retry_queue_name,
)
from swarrow.units import format_duration
from swarrow.validation import require_int, require_seconds

__all__ = ["RepublishFailed", "RetryProcessor"]

logger = logging.getLogger(__name__)

# How much of an exception's message a retry warning shows: enough to tell failures apart, never a flood.
MAX_LOGGED_ERROR = 200


def _short(exc: BaseException) -> str:
    """`Type: message`, the message cut to MAX_LOGGED_ERROR characters with control characters escaped."""
    text = error_text(str(exc), MAX_LOGGED_ERROR + 1)  # one more: whether it was cut
    cut = len(text) > MAX_LOGGED_ERROR
    text = text[:MAX_LOGGED_ERROR]
    if not text.isprintable():  # a newline or escape code from a producer must not forge log lines
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if cut:
        text += "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _require_exception_types(name: str, value: object) -> None:
    valid = isinstance(value, tuple) and all(isinstance(t, type) and issubclass(t, Exception) for t in value)
    if not valid:
        raise ValueError(f"{name} must be a tuple of exception classes, got {value!r}")


class RetryProcessor:
    """On failure, publish a copy to `Q.retry.k` (the broker delays it); the outer ack acks the original.

    `attempts` broker-delayed retries (so the callback runs at most attempts + 1 times), waiting
    `delays[k-1]` seconds before retry k. Past them, for `PermanentError`, a `give_up_on` type or an
    exception outside `retry_on`: a copy with error headers goes to `Q.dead` (dead_letter=True), or
    the exception is re-raised so the outer ack rejects it to the broker's DLX (dead_letter=False).
    `RetryLater(delay)` goes through the retry queue nearest its delay without spending an attempt.
    The copy is always confirmed before the original is acked. While the broker refuses the copy, the
    original is held unacked and the copy published again with backoff (0.2 s doubling to 5 s), never
    re-running the callback; after `republish_hold` seconds (None: never) `RepublishFailed` makes the
    outer ack requeue it. Declare the queues with `topology(queue).declare(broker)`.
    `retry_topology="swarrot"` follows swarrot and BlaBlaCar's toolkit instead (see `swarrow.swarrot`):
    copies go to exchange `retry` with key `Q_retry_{k}` and the header `swarrot_retry_attempts`
    too, dead letters to exchange `dl` (queue `Q_dl`). Both headers are read in either mode.
    """

    def __init__(
        self,
        inner: Processor,
        /,
        *,
        publisher: Publisher,
        attempts: int = 3,
        delays: Sequence[float] | None = None,
        dead_letter: bool = True,
        retry_on: tuple[type[Exception], ...] = (Exception,),
        give_up_on: tuple[type[Exception], ...] = (),
        quorum: bool = False,
        republish_hold: float | None = None,
        retry_topology: RetryTopologyName = "swarrow",
    ) -> None:
        require_int("attempts", attempts)
        if retry_topology not in ("swarrow", "swarrot"):
            raise ValueError(f"retry_topology must be 'swarrow' or 'swarrot', got {retry_topology!r}")
        if republish_hold is not None:
            require_seconds("republish_hold", republish_hold, allow_zero=True)
        delays = exponential_delays(attempts) if delays is None else tuple(delays)
        if len(delays) != attempts:
            raise ValueError(f"delays must hold one delay per attempt ({attempts}), got {list(delays)!r}")
        for delay in delays:
            require_seconds("delay", delay)
        _require_exception_types("retry_on", retry_on)
        _require_exception_types("give_up_on", give_up_on)
        self.inner = inner
        self.publisher = publisher
        self.attempts = attempts
        self.delays: tuple[float, ...] = tuple(float(d) for d in delays)
        self.dead_letter = dead_letter
        self.retry_on = retry_on
        self.give_up_on = give_up_on
        self._give_up: tuple[type[Exception], ...] = (PermanentError, *give_up_on)
        self.quorum = quorum
        self.republish_hold = republish_hold
        self.republish = RepublishState()
        self.retry_topology: RetryTopologyName = retry_topology
        self._strays: set[tuple[str, str]] = set()  # (queue, routing key) already reported

    def topology(self, queue: str) -> RetryTopology | SwarrotTopology:
        """The queues this processor publishes to for `queue`, ready to `declare(broker)`."""
        if self.retry_topology == "swarrot":
            return SwarrotTopology(queue, self.delays, quorum=self.quorum)
        return RetryTopology(queue, self.delays, quorum=self.quorum)

    def _retry_target(self, queue: str, attempt: int) -> tuple[str, str]:
        """(exchange, routing key) of retry number `attempt`."""
        if self.retry_topology == "swarrot":
            return SwarrotTopology(queue, self.delays).retry_target(attempt)
        return "", retry_queue_name(queue, attempt)

    def _dead_target(self, queue: str) -> tuple[str, str]:
        """(exchange, routing key) of the dead-letter queue."""
        if self.retry_topology == "swarrot":
            return SwarrotTopology(queue, self.delays).dead_letter_target()
        return "", dead_letter_queue_name(queue)

    async def __call__(self, message: Message, /) -> bool:
        if self.retry_topology == "swarrot" and "x-death" in message.headers:
            self._check_route(message)
        try:
            return await self.inner(message)
        except StopConsumer:
            raise
        except RetryLater as later:
            target = self._queue_for(later.delay)
            await self._publish(
                message, republish_copy(message, {}), self._retry_target(message.queue, target)
            )
            record_outcome(RETRIED)
            return True
        except Exception as exc:
            # Garbage (not an int, negative) counts as no attempt yet; too many as exhausted. swarrot's
            # header counts the same retries: a PHP worker's retry is one of ours, and the larger wins.
            seen = max(_retries(message.headers.get(RETRY_ATTEMPT_HEADER)),
                       _retries(message.headers.get(SWARROT_ATTEMPTS_HEADER)))  # fmt: skip
            attempt = min(seen, self.attempts) + 1
            queue = message.queue
            extra = {"queue": queue, "message_id": message.message_id, "attempt": attempt}
            give_up = isinstance(exc, self._give_up) or not isinstance(exc, self.retry_on)
            if not give_up and attempt <= self.attempts:
                counts = {RETRY_ATTEMPT_HEADER: attempt}
                if self.retry_topology == "swarrot":
                    counts[SWARROT_ATTEMPTS_HEADER] = attempt
                copy = republish_copy(message, counts)
                await self._publish(message, copy, self._retry_target(message.queue, attempt))
                record_outcome(RETRIED)
                record_error(qualified_name(exc), error_text(str(exc)))
                extra["error_type"] = type(exc).__name__
                # The traceback only at DEBUG: an expected failure (an API down) must not flood the log.
                logger.warning("message %s failed on attempt %d (%s); retry %d of %d in %s",
                               message.message_id, attempt, _short(exc), attempt, self.attempts,
                               format_duration(self.delays[attempt - 1]), extra=extra,
                               exc_info=exc if logger.isEnabledFor(logging.DEBUG) else None)  # fmt: skip
                return True
            if not self.dead_letter:
                raise
            # attempt = calls made so far: the first delivery plus the retries it went through.
            headers = dead_letter_headers(qualified_name(exc), str(exc), attempts=attempt, queue=queue)
            await self._publish(message, republish_copy(message, headers), self._dead_target(message.queue))
            record_outcome(DEAD_LETTERED)
            record_error(headers[ERROR_TYPE_HEADER], headers[ERROR_MESSAGE_HEADER])
            extra["error_type"] = type(exc).__name__
            logger.error("message %s dead-lettered after %d call(s): %s: %s", message.message_id,
                         attempt, type(exc).__name__, exc, extra=extra)  # fmt: skip
            return True

    def _check_route(self, message: Message) -> None:
        """Report (once per queue and key) a retry copy that came back through a queue no delay names."""
        stray = stray_retry_route(message.queue, self.delays, message.headers)
        if stray is None or stray[:2] in self._strays:
            return
        self._strays.add(stray[:2])
        through, key, expected = stray
        logger.error(
            "message %s came back from retry queue %s, bound to exchange retry with key %s, but the retry "
            "queue for that key is %s by the retry delays: a queue left bound to a retry key gets a copy of "
            "every retry (delivered twice when %s is bound too, as after reordered delays); unbind or delete "
            "%s once empty (rabbitmqctl list_bindings shows both)",
            message.message_id, through, key, expected, expected, through,
            extra={"queue": message.queue, "message_id": message.message_id},
        )  # fmt: skip

    def _queue_for(self, delay: float | None) -> int:
        """The retry queue (1-based) with the smallest delay >= `delay`, else the longest; None: the first."""
        if delay is None:
            return 1
        for attempt, queued in enumerate(self.delays, start=1):
            if queued >= delay:
                return attempt
        return len(self.delays)

    async def _publish(self, original: Message, copy: Message, target: tuple[str, str]) -> None:
        if not original.queue:
            raise ConfigurationError("cannot retry a message without a queue name (message.queue is empty)")
        exchange, routing_key = target
        await publish_copy(
            self.publisher,
            original,
            copy,
            routing_key,
            state=self.republish,
            hold=self.republish_hold,
            exchange=exchange,
        )


def _retries(value: object) -> int:
    """A retry count read from a header; garbage (not an int, a bool, negative) is 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
