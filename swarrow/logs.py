"""Logging set-up for workers: readable text for people, one JSON object per line for collectors."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import IO, Any, Final, Literal

__all__ = ["STANDARD_FIELDS", "BatchingStreamHandler", "JsonFormatter", "TextFormatter", "configure_logging"]

# The `extra` fields swarrow's own log calls use, emitted first and in this order.
STANDARD_FIELDS: Final = (
    "queue",
    "message_id",
    "routing_key",
    "redelivered",
    "attempt",
    "duration",
    "outcome",
    "stop_reason",
    "error_type",
)
# Attributes every LogRecord has: anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO-8601 UTC), level, logger, message, extra fields, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for key in STANDARD_FIELDS:
            if key in fields:
                entry[key] = fields[key]
        for key, value in fields.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # `default=str`: an odd extra value (a datetime, bytes) is shown, never a reason to drop the line.
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The text format, with the timestamp's date-and-second part formatted once per second.

    `strftime` per record was a third of formatting a per-message line.
    """

    def __init__(self, *, worker: int | None = None) -> None:
        super().__init__(
            _TEXT_FORMAT
            if worker is None
            else _TEXT_FORMAT.replace(" %(name)s", f" [worker {worker}] %(name)s")
        )
        self._second = -1
        self._prefix = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._second = second
        return f"{self._prefix},{int(record.msecs):03d}"


class _WorkerTag(logging.Filter):
    """Adds the pool slot to every record (a `worker` key in JSON lines)."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


class BatchingStreamHandler(logging.StreamHandler[IO[str]]):
    """A stream handler that does not flush after every record.

    A worker logs a line per message: flushing each one is a `write(2)` per message, about 6% of a
    busy worker's time. Records below WARNING are flushed every `flush_interval` seconds by a daemon
    thread; WARNING and above are flushed at once; `close()` (and `logging.shutdown()` at exit)
    flushes the rest. A kill -9 may lose the last `flush_interval` of INFO lines, never a warning.
    """

    def __init__(self, stream: IO[str], *, flush_interval: float = 0.2) -> None:
        super().__init__(stream)
        self.flush_interval = flush_interval
        self._pending = False
        self._stopped = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_periodically, name="swarrow-log-flush", daemon=True
        )
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
            else:
                self._pending = True
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self._pending = False
        super().flush()

    def _flush_periodically(self) -> None:
        while not self._stopped.wait(self.flush_interval):
            if self._pending:
                self.flush()

    def close(self) -> None:
        self._stopped.set()
        self.flush()
        super().close()


def configure_logging(
    level: int | str = "INFO",
    fmt: Literal["text", "json"] = "text",
    stream: IO[str] | None = None,
    *,
    worker: int | None = None,
) -> logging.Handler:
    """Send the root logger's records at `level` and above to `stream` (stderr) as text or JSON lines.

    Idempotent: calling it again replaces the handler it installed before and leaves others alone.
    `worker` (a `--workers` pool slot) tags every line, since a pool's workers share one stderr.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"fmt must be 'text' or 'json', got {fmt!r}")
    resolved = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if isinstance(resolved, bool) or not isinstance(resolved, int):
        raise ValueError(f"level must be a logging level such as 'INFO' or logging.DEBUG, got {level!r}")
    handler = BatchingStreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(worker=worker))
    if worker is not None:
        handler.addFilter(_WorkerTag(worker))
    handler._swarrow = True  # type: ignore[attr-defined]  # marks the handler a later call replaces
    root = logging.getLogger()
    for previous in [h for h in root.handlers if getattr(h, "_swarrow", False)]:
        root.removeHandler(previous)
        previous.close()
    root.addHandler(handler)
    root.setLevel(resolved)
    return handler
