"""One structured log record per message: where it came from, how long it took, what became of it."""

from __future__ import annotations

import logging
from time import perf_counter

from swarrow.log_fast import DirectLines, RecordTemplate
from swarrow.message import Message
from swarrow.outcome import FAILED, get_outcome, reset_outcome
from swarrow.processor import Processor
from swarrow.topology import RETRY_ATTEMPT_HEADER, header_count
from swarrow.validation import require_int

__all__ = ["LoggerProcessor"]

_logger = logging.getLogger(__name__)

_FORMAT = "message %s from %s %s in %.3fs (attempt %d)"
_FIELDS = ("queue", "message_id", "routing_key", "redelivered", "attempt", "duration", "outcome")
_FORMAT_BODY = "message %s from %s %s in %.3fs (attempt %d) body=%r"


class LoggerProcessor:
    """Log each message once, after the inner layers, with `extra` fields a JSON formatter turns into keys.

    Fields: queue, message_id, routing_key, redelivered, attempt, duration (seconds), outcome (what
    ack / retry / delivery_limit recorded; `processed` when none did, `failed` when an exception
    passes through, which is logged at ERROR with `error_type` and re-raised). `attempt` is the
    delivery's attempt number: 1 for the first delivery, k + 1 for the copy retry k republished with
    `x-swarrow-attempt: k` (the number the retry and delivery_limit layers log; garbage counts as 1).
    The body is logged only with `log_body=True`, cut to `max_body` bytes.
    """

    def __init__(
        self,
        inner: Processor,
        /,
        *,
        logger: logging.Logger | None = None,
        level: int = logging.INFO,
        log_body: bool = False,
        max_body: int = 1024,
    ) -> None:
        require_int("level", level, minimum=0)
        require_int("max_body", max_body, minimum=0)
        if logger is not None and not isinstance(logger, logging.Logger):
            raise ValueError(f"logger must be a logging.Logger or None, got {logger!r}")
        self.inner = inner
        self.logger = logger if logger is not None else _logger
        self.level = level
        self.log_body = log_body
        self.max_body = max_body
        self._format = _FORMAT_BODY if log_body else _FORMAT
        # The per-message record of the usual outcome, made from a template (a quarter of makeRecord).
        self._records = RecordTemplate(self.logger, level, self._format, pathname=__file__, fields=_FIELDS)
        # ... or no record at all, when swarrow's handler alone would see it (`DirectLines`).
        self._lines = DirectLines(self.logger, level)

    async def __call__(self, message: Message, /) -> bool:
        reset_outcome()
        start = perf_counter()
        try:
            keep_going = await self.inner(message)
        except Exception as exc:
            if self.logger.isEnabledFor(logging.ERROR):
                self._log(max(self.level, logging.ERROR), message, start, get_outcome() or FAILED, exc)
            raise
        if self.logger.isEnabledFor(self.level):
            self._log(self.level, message, start, get_outcome() or "processed", None)
        return keep_going

    def _log(self, level: int, message: Message, start: float, outcome: str, exc: Exception | None) -> None:
        duration = perf_counter() - start
        headers = message.headers
        attempt = (header_count(headers.get(RETRY_ATTEMPT_HEADER)) or 0) + 1 if headers else 1
        args: tuple[object, ...] = (message.message_id, message.queue, outcome, duration, attempt)
        body = None
        if self.log_body:
            body = message.body[: self.max_body].decode("utf-8", errors="replace")
            args = (*args, body)
        if level == self.level:
            handler = self._lines.handler()
            if handler is not None:
                fields: dict[str, object] | None = None
                if not self._lines.text:
                    fields = {
                        "queue": message.queue,
                        "message_id": message.message_id,
                        "routing_key": message.routing_key,
                        "redelivered": message.redelivered,
                        "attempt": attempt,
                        "duration": duration,
                        "outcome": outcome,
                    }
                    if body is not None:
                        fields["body"] = body
                if self._lines.write(handler, self._format % args, fields):
                    return
            record = self._records.make(args)
        else:  # a failure: rare, made the standard way (findCaller skipped: the caller is this line)
            logger = self.logger
            record = logger.makeRecord(logger.name, level, __file__, 0, self._format, args, None, None)
        # The `extra` fields, set the way makeRecord sets them (none of them is a LogRecord attribute).
        fields = record.__dict__
        fields["queue"] = message.queue
        fields["message_id"] = message.message_id
        fields["routing_key"] = message.routing_key
        fields["redelivered"] = message.redelivered
        fields["attempt"] = attempt
        fields["duration"] = duration
        fields["outcome"] = outcome
        if exc is not None:
            fields["error_type"] = type(exc).__name__
        if body is not None:
            fields["body"] = body
        self.logger.handle(record)
