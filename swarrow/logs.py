"""Logging set-up for workers: readable text for people, one JSON object per line for collectors."""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any, Final, Literal

from swarrow.log_writer import BatchingStreamHandler
from swarrow.urls import mask_text

__all__ = [
    "STANDARD_FIELDS",
    "BatchingStreamHandler",
    "JsonFormatter",
    "TextFormatter",
    "WorkerTag",
    "configure_logging",
    "escape_control",
]

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
# The millisecond part of a timestamp, formatted once: a table lookup instead of a format per record.
_MILLISECONDS: Final = tuple(f",{ms:03d}" for ms in range(1000))
_ISO_MILLISECONDS: Final = tuple(f".{ms:03d}+00:00" for ms in range(1000))


# Characters that could forge a line or fool a terminal: C0 and C1 controls, DEL, Unicode line and
# paragraph separators, and the bidirectional overrides ("Trojan Source").
_UNSAFE: Final = (
    *range(0x20),
    0x7F,
    *range(0x80, 0xA0),
    0x200E,
    0x200F,
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
)
_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_TEXT_ESCAPES: Final = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}") for code in _UNSAFE
}
# In JSON, `json` escapes what is below 0x20; the rest of the set, kept raw with ensure_ascii=False,
# would still split a line for `str.splitlines` and many collectors: written as JSON escapes (lossless).
_JSON_ESCAPES: Final = {code: f"\\u{code:04x}" for code in _UNSAFE if code > 0x7F}


def escape_control(text: str) -> str:
    r"""`text` with control, line-breaking and bidi characters written as `\n`, `\x1b`, `\u2028`: inert."""
    return text if text.isprintable() else text.translate(_TEXT_ESCAPES)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message, pid, host, extra fields, exc_info.

    `pid` and `host` tell apart the lines of several workers, pods or hosts shipped to one collector.
    """

    def __init__(self) -> None:
        super().__init__()
        self._host = socket.gethostname()
        self._second = -1
        self._prefix = ""
        # `default=str`: an odd extra value (a datetime, bytes) is shown, never a reason to drop the line.
        self._encode = json.JSONEncoder(default=str, ensure_ascii=False).encode

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # the date-and-second part once per second, as TextFormatter does
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return self._prefix + _ISO_MILLISECONDS[int((created - second) * 1000)]

    def format(self, record: logging.LogRecord) -> str:
        entry = self.entry(record.created, record.levelname, record.name, record.getMessage(), record.process)
        self.add_fields(entry, record.__dict__)
        if record.exc_info:
            entry["exc_info"] = mask_text(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return self.encode(entry)

    def entry(
        self, created: float, levelname: str, name: str, message: str, pid: int | None
    ) -> dict[str, Any]:
        """The keys every line starts with (shared with `DirectLines`, which has no record)."""
        if "@" in message or "=" in message or ":" in message:  # a library quoting a URL with its password
            message = mask_text(message)
        return {
            "time": self._time(created),
            "level": levelname,
            "logger": name,
            "message": message,
            "pid": pid,
            "host": self._host,
        }

    @staticmethod
    def add_fields(entry: dict[str, Any], fields: Mapping[str, Any]) -> None:
        """swarrow's own fields first, in their order, then the other extra fields; text fields masked."""
        for key in STANDARD_FIELDS:
            if key in fields:
                entry[key] = _masked(fields[key])
        for key, value in fields.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = _masked(value)

    def encode(self, entry: dict[str, Any]) -> str:
        """One line of JSON, the line separators json leaves raw escaped."""
        line: str = self._encode(entry)
        return line if line.isascii() else line.translate(_JSON_ESCAPES)


def _masked(value: Any) -> Any:
    """A text field with a URL's password or a credential parameter masked (a producer's message id, a
    routing key, a logged body); anything else as it is."""
    if type(value) is str and ("@" in value or "=" in value or ":" in value):
        return mask_text(value)
    return value


class TextFormatter(logging.Formatter):
    """The text format, one line per record whatever a producer put in a message id, key or error.

    Control, line-breaking and bidi characters in the line are escaped (`escape_control`); a
    traceback or stack follows on lines indented by two spaces, so only a real record starts at
    column 0. The timestamp's date-and-second part is formatted once per second (`strftime` per
    record was a third of formatting a per-message line).
    """

    def __init__(self, *, worker: int | None = None) -> None:
        line = _TEXT_FORMAT
        if worker is not None:
            line = line.replace(" %(name)s", f" [worker {worker}] %(name)s")
        super().__init__(line)
        self._tag = "" if worker is None else f"[worker {worker}] "
        self._second = -1
        self._prefix = ""
        self._middles: dict[tuple[str, str], str] = {}

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.time_text(record.created, int(record.msecs))

    def time_text(self, created: float, msecs: int) -> str:
        """The local time of `created` with its milliseconds, the date-and-second part once per second."""
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(created))
            self._second = second
        return self._prefix + _MILLISECONDS[msecs]

    def format(self, record: logging.LogRecord) -> str:
        message = record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        line = self.stamped_line(record.created, (record.levelname, record.name), message)
        if record.exc_info or record.exc_text or record.stack_info:
            line += self._indented_details(record)
        return line

    def stamped_line(self, created: float, key: tuple[str, str], message: str) -> str:
        """The line of a record created at `created` for (levelname, logger name) `key`, without its
        traceback: what `format` writes, and `DirectLines` without a record (one call a line: a worker
        writes one per message). Producer text is masked (a URL's password, a token) and escaped.
        """
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(created))
            self._second = second
        middle = self._middles.get(key)
        if middle is None:
            middle = self._middle(key)
        if "@" in message or "=" in message or ":" in message:
            message = mask_text(message)
        if not message.isprintable():
            message = message.translate(_TEXT_ESCAPES)
        return f"{self._prefix}{_MILLISECONDS[int((created - second) * 1000)]}{middle}{message}"

    def _middle(self, key: tuple[str, str]) -> str:
        """The escaped " LEVEL [worker n] name: " part, made once per logger and level."""
        levelname, name = key
        middle = self._middles[key] = escape_control(f" {levelname} {self._tag}{name}: ")
        return middle

    def _indented_details(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)  # cached, as Formatter.format does
        details = [
            text
            for text in (record.exc_text, record.stack_info and self.formatStack(record.stack_info))
            if text
        ]
        return "".join(
            "\n  " + escape_control(mask_text(line)) for text in details for line in text.split("\n")
        )


class WorkerTag(logging.Filter):
    """Adds the pool slot to every record (a `worker` key in JSON lines)."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


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
        handler.addFilter(WorkerTag(worker))
    handler._swarrow = True  # type: ignore[attr-defined]  # marks the handler a later call replaces
    root = logging.getLogger()
    for previous in [h for h in root.handlers if getattr(h, "_swarrow", False)]:
        root.removeHandler(previous)
        previous.close()
    root.addHandler(handler)
    root.setLevel(resolved)
    return handler
