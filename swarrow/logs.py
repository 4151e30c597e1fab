"""Logging set-up for workers: readable text for people, one JSON object per line for collectors."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import select
import socket
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any, Final, Literal

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
        if "@" in message or "?" in message:  # a library quoting a URL with its password
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
    if type(value) is str and ("@" in value or "?" in value):
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
        line = self.line(record.asctime, record.levelname, record.name, message)
        if record.exc_info or record.exc_text or record.stack_info:
            line += self._indented_details(record)
        return line

    def line(self, asctime: str, levelname: str, name: str, message: str) -> str:
        """The record's line without its traceback (shared with `DirectLines`, which has no record)."""
        if "@" in message or "?" in message:  # a library quoting a URL with its password or token
            message = mask_text(message)
        key = (levelname, name)
        middle = self._middles.get(key)
        if middle is None:  # the escaped "LEVEL [worker n] name: " part, once per logger and level
            middle = self._middles[key] = escape_control(f" {levelname} {self._tag}{name}: ")
        if not message.isprintable():  # one C-speed scan in the common, clean case
            message = message.translate(_TEXT_ESCAPES)
        # `_TEXT_FORMAT` spelled as an f-string: half the cost of `%` over the record's dict.
        return f"{asctime}{middle}{message}"

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


class BatchingStreamHandler(logging.StreamHandler[IO[str]]):
    """A stream handler that writes lines in batches, from a thread of its own: not a `write(2)` per record.

    A worker logs a line per message, and `sys.stderr` is line-buffered: each line was a system call,
    measured at 27,615 writes for 20,000 messages and most of the CLI's CPU when stderr is a file or
    a pipe. On such a stream (a file descriptor, not a terminal) lines are held and handed in chunks
    of whole lines, at most `PIPE_BUF` (4,096) bytes each, to a writer thread that writes them to the
    descriptor, so the lines of several pool workers sharing one pipe never tear. Only lines in a
    burst are held (a line after a 10 ms pause is handed over at once); held lines are handed over
    every `flush_interval` (50 ms), a WARNING and above at once with everything held before it.

    Why a thread: a pipe nobody reads (a stalled log shipper, a stopped `| tee`) blocks `write(2)`,
    and a worker writing from its event loop then stopped for good: SIGTERM and Ctrl-C were never
    seen. The logging thread never writes now; while the stream is stuck, up to `backlog_limit`
    bytes wait for it, later lines are dropped and counted, and a warning says how many once it
    moves again. `flush()` (`CliError` before its `Error:` line, `close()` at exit) waits for the
    writer at most `flush_timeout` seconds, and not again once the stream is known stuck. An exit that
    skips `close()` (kill -9, the OOM killer, `os._exit` in a callback) loses what was not written
    yet: at most the last `flush_interval` of lines. On a terminal or an in-memory stream each line
    is written at once by the logging thread, as `StreamHandler` does.
    """

    def __init__(
        self,
        stream: IO[str],
        *,
        flush_interval: float = 0.05,
        flush_timeout: float = 1.0,
        backlog_limit: int = 1 << 20,
    ) -> None:
        super().__init__(stream)
        self.flush_interval = flush_interval
        self.flush_timeout = flush_timeout
        self.backlog_limit = backlog_limit
        self._pending = False  # a line went to a stream written at once: flush it in the background
        self._state = threading.Condition(threading.Lock())  # guards what follows; the writer waits on it
        self._held: list[str] = []  # whole ASCII lines not handed to the writer yet
        self._held_size = 0
        self._chunks: deque[tuple[int, bytes]] = deque()  # (descriptor, whole lines) for the writer
        self._chunk_bytes = 0
        self._handed = 0  # chunks handed to the writer, ever
        self._written = 0  # chunks the writer is done with, ever
        self._dropped = 0  # lines dropped because the backlog was full, not reported yet
        self._writing_since: float | None = None  # when the write in progress began (monotonic)
        self._stopping = False
        self._target = _descriptor_of(stream)
        self._last_line_at = 0.0
        self._writer: threading.Thread | None = None
        self._start_writer()
        _LIVE_HANDLERS.add(self)

    def _start_writer(self) -> None:
        self._writer = threading.Thread(target=self._write_forever, name="swarrow-log-writer", daemon=True)
        self._writer.start()

    def _forget_after_fork(self) -> None:
        """In a forked child: the parent writes what was held or queued; the child starts afresh."""
        self._state = threading.Condition(threading.Lock())
        self._held = []
        self._held_size = 0
        self._chunks = deque()
        self._chunk_bytes = 0
        self._handed = self._written = self._dropped = 0
        self._writing_since = None
        self._writer = None  # no thread survives a fork: started again by the next line

    def emit(self, record: logging.LogRecord) -> None:
        try:
            formatter = self.formatter
            self.write_line(formatter.format(record) if formatter is not None else self.format(record))
            if record.levelno >= logging.WARNING:
                self.hand_over()
            else:
                self._pending = True
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_line(self, line: str, now: float | None = None) -> None:
        """Write (or hold) one formatted line; called with the handler's lock held.

        `now`: the line's `time.time()` when the caller has read it already (one clock read per line).
        """
        target = self._target
        if target is None:
            self.stream.write(line + self.terminator)
            return
        if self._writer is None or self._stopping:
            if self._stopping:  # closed (logging.shutdown at exit): a late line goes out at once
                self._write_after_close(line, target)
                return
            self._start_writer()
        if self._dropped:
            self._report_drops()  # before this line: it came after the gap
        if now is None:
            now = _now()
        quiet = now - self._last_line_at > _BURST
        self._last_line_at = now
        state = self._state
        if (quiet and not self._held) or not line.isascii():
            # A line after a quiet spell goes at once; a non-ASCII line's encoded size is not its
            # length: on its own, in order. Encoded here, so an encoding error is the caller's.
            data = (line + self.terminator).encode(target[1], target[2])
            with state:
                self._hand_over_held()
                self._hand_over(data, 1)
                state.notify()
            return
        size = len(line) + 1
        if self._held_size + size > _ATOMIC_WRITE:
            with state:
                self._hand_over_held()
                if self._chunk_bytes >= _WAKE_AT:  # a few chunks per wake-up: a thread switch costs ~20 µs
                    state.notify()
        self._held.append(line)  # the handler lock guards the held lines: no other lock per line
        self._held_size += size

    def _write_after_close(self, line: str, target: tuple[int, str, str]) -> None:
        """A line logged after `close()`: written by the calling thread, unless the stream is stuck."""
        with self._state:
            stuck = self._writing_since is not None or bool(self._chunks)
        if stuck:
            self._dropped += 1
            return
        _write_all(target[0], (line + self.terminator).encode(target[1], target[2]), self.stream)

    def _hand_over_held(self) -> None:
        """Move the held lines to the writer as one chunk (the handler lock and `_state` held)."""
        if self._held:
            data = (self.terminator.join(self._held) + self.terminator).encode("ascii")
            count = len(self._held)
            self._held.clear()
            self._held_size = 0
            self._hand_over(data, count)

    def _hand_over(self, data: bytes, lines: int) -> None:
        """Queue `data` for the writer, or drop its lines while the backlog is full (`_state` held)."""
        target = self._target
        if target is None or self._chunk_bytes + len(data) > self.backlog_limit:
            self._dropped += lines
            return
        self._chunks.append((target[0], data))
        self._chunk_bytes += len(data)
        self._handed += 1

    def _report_drops(self) -> None:
        """Say how many lines were dropped, once the stream takes lines again (handler lock held)."""
        with self._state:
            if self._chunk_bytes > self.backlog_limit // 2:
                return
            dropped, self._dropped = self._dropped, 0
        record = logging.LogRecord(
            __name__, logging.WARNING, __file__, 0,
            "%d log line(s) dropped: the log stream was not taking lines (a pipe nobody read?)",
            (dropped,), None,
        )  # fmt: skip
        self.write_line(self.format(record))
        self.hand_over()

    def hand_over(self) -> None:
        """Give the held lines to the writer now, without waiting for it (a warning: written at once).

        Called with the handler lock held (from `emit`, or a direct line's writer).
        """
        if self._target is None:
            self.flush()
            return
        with self._state:
            self._hand_over_held()
            self._state.notify()

    def flush(self) -> None:
        """Write what is held and wait for it: at most `flush_timeout`, not once the stream is stuck."""
        if self._target is None:
            with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
                self._pending = False
                stream: IO[str] | None = self.stream
                if stream is not None and hasattr(stream, "flush"):
                    stream.flush()
            return
        state = self._state
        with self.lock, state:  # type: ignore[union-attr]  # created by Handler.__init__
            self._hand_over_held()
            state.notify()
            target = self._handed
        with state:
            deadline = _monotonic() + self.flush_timeout
            while self._written < target:
                now = _monotonic()
                since = self._writing_since
                if now >= deadline or (since is not None and now - since > self.flush_timeout):
                    return  # the stream is stuck: leave the rest to the writer
                state.wait(deadline - now)

    def setStream(self, stream: IO[str]) -> IO[str] | None:
        self.flush()
        previous = super().setStream(stream)
        with self._state:
            self._target = _descriptor_of(stream)
        return previous

    def _write_forever(self) -> None:
        state = self._state
        while True:
            with state:
                quiet = False
                if not self._chunks:
                    if self._stopping:
                        return
                    quiet = not state.wait(self.flush_interval)
                if self._chunks:
                    fd, data = self._chunks.popleft()
                    self._writing_since = _monotonic()
                else:
                    fd, data = -1, b""
            if fd < 0:
                if quiet:
                    self._pick_up()
                continue
            _write_all(fd, data, self.stream)
            with state:
                self._chunk_bytes -= len(data)
                self._written += 1
                self._writing_since = None
                state.notify_all()

    def _pick_up(self) -> None:
        """After a quiet `flush_interval`: hand over the burst's held tail, or flush a stream written at once.

        Only if the handler lock is free at once: a thread logging now hands over itself.
        """
        if not (self._held or self._pending) or self.lock is None or not self.lock.acquire(blocking=False):
            return
        try:
            if self._target is not None:
                with self._state:
                    self._hand_over_held()
            elif self._pending:
                self._pending = False
                with contextlib.suppress(OSError, ValueError):  # closed or broken: the next record says so
                    self.stream.flush()
        finally:
            self.lock.release()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._state:
                self._stopping = True
                self._state.notify_all()
            super().close()


# Writes up to this size are atomic on a pipe (POSIX PIPE_BUF; Linux's value): whole lines only.
_ATOMIC_WRITE: Final = 4096
# The writer is woken when this much waits (or after `flush_interval`, a quiet line, a warning, a flush).
_WAKE_AT: Final = 4 * _ATOMIC_WRITE
# Lines closer together than this are a burst (a line per message): held. After a pause: handed over at once.
# Wall clock (a jump only changes whether one line is held or handed over at once; the writer bounds both).
_BURST: Final = 0.01
_now = time.time
_monotonic = time.monotonic
_write = os.write
_LIVE_HANDLERS: weakref.WeakSet[BatchingStreamHandler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in list(_LIVE_HANDLERS):
        handler._forget_after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _write_all(fd: int, data: bytes, stream: IO[str]) -> None:
    """Write all of `data` to `fd` from the writer thread; a failure (a closed pipe, a full disk) drops it.

    `os.write` rather than the stream's own `write`: blocked on a pipe nobody reads, the writer holds
    no lock of the stream's, so the interpreter can still exit (a daemon thread stuck inside a
    buffered stream's lock aborts the interpreter's final flush of stderr).
    """
    if getattr(stream, "closed", False):
        return  # closed under us: its descriptor may belong to another file by now
    view = memoryview(data)
    while view:
        try:
            written = _write(fd, view)
        except BlockingIOError:  # a descriptor set non-blocking by whoever shares it
            select.select([], [fd], [], 0.05)
            continue
        except OSError:
            return
        view = view[written:]


def _descriptor_of(stream: object) -> tuple[int, str, str] | None:
    """(descriptor, encoding, errors) of a stream on a file or a pipe; None for a terminal or in memory."""
    if not _holds_lines(stream):
        return None
    fd = stream.fileno()  # type: ignore[attr-defined]  # _holds_lines checked it
    return fd, getattr(stream, "encoding", None) or "utf-8", getattr(stream, "errors", None) or "strict"


def _holds_lines(stream: object) -> bool:
    """True for a stream on a file descriptor that is not a terminal: a file or a pipe."""
    fileno = getattr(stream, "fileno", None)
    if fileno is None:
        return False
    try:
        return not os.isatty(fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # StringIO, a closed or captured stream
        return False


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
