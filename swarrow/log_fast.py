"""The per-message log call sites' fast paths: records copied from a template, or lines without a record.

A worker logs a line per message; the stdlib's way there costs about as much as the rest of the
default stack. Both paths here give what the stdlib would (the same record, the same bytes) and fall
back to it whenever something could tell the difference.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Final, cast

from swarrow.logs import BatchingStreamHandler, JsonFormatter, TextFormatter, WorkerTag

__all__ = ["DirectLines", "RecordTemplate"]

_TASK_NAMES: Final = sys.version_info >= (3, 12)
# Bound once: the per-record path runs for every message.
_new_record = object.__new__
_LogRecord = logging.LogRecord
_record_factory = logging.getLogRecordFactory
_thread_id = threading.get_ident
_Logger = logging.Logger
_now = time.time
_fork_generation = 0


def _after_fork() -> None:
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork)


class RecordTemplate:
    """Makes the records of one call site (one logger, level and format) at a quarter of `makeRecord`'s cost.

    A `LogRecord` computes the same process, thread and source fields for every record of a call
    site; a worker logging each message paid ~2.5 µs for that. This copies them from one record made
    the normal way and fills in the time, arguments and extra fields. The record is a plain
    `LogRecord` with the same fields, so handlers, filters and formatters see no difference; when a
    custom record factory is installed, or on another thread, or after a fork, it falls back to
    `Logger.makeRecord`.
    """

    __slots__ = (
        "_generation",
        "_start",
        "_template",
        "_thread",
        "fields",
        "level",
        "logger",
        "msg",
        "pathname",
    )

    def __init__(
        self, logger: logging.Logger, level: int, msg: str, *, pathname: str, fields: tuple[str, ...] = ()
    ) -> None:
        self.logger = logger
        self.level = level
        self.msg = msg
        self.pathname = pathname
        # Extra fields every record of the call site sets: in the template (as None) so the copy has room.
        self.fields = fields
        self._template: dict[str, Any] | None = None
        self._thread = 0
        self._generation = -1
        self._start = 0.0

    def _slow(self, args: tuple[object, ...], extra: Mapping[str, object] | None) -> logging.LogRecord:
        logger = self.logger
        return logger.makeRecord(logger.name, self.level, self.pathname, 0, self.msg, args, None, None, extra)

    def make(self, args: tuple[object, ...], extra: Mapping[str, object] | None = None) -> logging.LogRecord:
        """A record of this call site with `args` and `extra` fields (which must not shadow record fields)."""
        template = self._template
        if (
            template is None
            or self._thread != _thread_id()
            or self._generation != _fork_generation
            or _record_factory() is not _LogRecord
        ):
            return self._refresh(args, extra)
        now = _now()
        fields = template.copy()
        fields["created"] = now
        fields["msecs"] = int((now - int(now)) * 1000) + 0.0
        fields["relativeCreated"] = (now - self._start) * 1000
        fields["args"] = args
        if extra:
            fields.update(extra)
        record: logging.LogRecord = _new_record(_LogRecord)
        record.__dict__ = fields
        if _TASK_NAMES:
            record.taskName = _task_name()
        return record

    def _refresh(self, args: tuple[object, ...], extra: Mapping[str, object] | None) -> logging.LogRecord:
        record = self._slow(args, extra)
        if logging.getLogRecordFactory() is logging.LogRecord and type(record) is logging.LogRecord:
            fields = dict(record.__dict__)
            for key in extra or ():
                del fields[key]
            self._start = record.created - record.relativeCreated / 1000
            fields.update(dict.fromkeys(self.fields))
            self._template = fields
            self._thread = threading.get_ident()
            self._generation = _fork_generation
        else:
            self._template = None
        return record


def _task_name() -> str | None:
    if not getattr(logging, "logAsyncioTasks", False):
        return None
    asyncio = sys.modules.get("asyncio")
    try:
        return asyncio.current_task().get_name() if asyncio is not None else None
    except Exception:  # no running loop or no task: what LogRecord itself records
        return None


class DirectLines:
    """Writes a call site's lines straight into swarrow's own handler when nothing else would see the record.

    Why: a worker logs a line per message, and the stdlib's way there — a `LogRecord`, the logger's
    and handler's filters, the walk over the handlers, the handler's lock, `getMessage`, `format` —
    cost about as much as the rest of the default stack. When the record would reach exactly one
    handler, a `BatchingStreamHandler` with swarrow's text or JSON formatter and no filter but the
    pool's worker tag, and nothing could observe it on the way (a plain `Logger` with no filters,
    the default record factory), the same line is made from the message and its fields and written
    under the handler's lock. Any of the record path's methods replaced on its class or instance
    (Sentry's logging integration wraps `Logger.callHandlers`; a redaction hook may wrap `emit` or
    `format`) also means the record path. `handler()` answers anew for each line, so a handler or
    filter added at any time takes effect on the next one; replaced methods are looked for on a
    new handler and then once a second (looking each line cost as much as writing it).
    """

    __slots__ = (
        "_filters",
        "_formatter",
        "_key",
        "_next_check",
        "_verified",
        "_warns",
        "level",
        "levelname",
        "logger",
        "text",
    )

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self.logger = logger
        self.level = level
        self.levelname = logging.getLevelName(level)
        self._key = (self.levelname, logger.name)  # TextFormatter's cache key of the line's middle part
        self._warns = level >= logging.WARNING
        # The handler last found fit for direct lines, with the formatter and filters it had then,
        # until a monotonic time (replaced methods are looked for again after it).
        self._verified: logging.Handler | None = None
        self._formatter: logging.Formatter | None = None
        self._filters: list[object] = []
        self._next_check = 0.0
        #: Whether the handler `handler()` last returned writes text lines (no extra fields shown).
        self.text = True

    def handler(self) -> BatchingStreamHandler | None:
        """The one handler a record of this call site would reach, when the line may be written directly."""
        logger = self.logger
        if logger.filters or logger.disabled or type(logger) is not _Logger:
            return None
        if _record_factory() is not _LogRecord:
            return None
        level = self.level
        found: logging.Handler | None = None
        current: logging.Logger | None = logger
        while current is not None:
            for handler in current.handlers:
                if level >= handler.level:
                    if found is not None:
                        return None
                    found = handler
            current = current.parent if current.propagate else None
        if (
            found is self._verified
            and found is not None
            and found.formatter is self._formatter
            and found.filters == self._filters
            and _monotonic() < self._next_check
        ):
            return found  # type: ignore[return-value]  # verified a BatchingStreamHandler
        return self._verify(logger, found)

    def _verify(self, logger: logging.Logger, found: logging.Handler | None) -> BatchingStreamHandler | None:
        """`found` when it is swarrow's handler with swarrow's formatter, unfiltered and unpatched."""
        self._verified = None
        if type(found) is not BatchingStreamHandler:
            return None
        formatter_type = type(found.formatter)
        if formatter_type not in (TextFormatter, JsonFormatter):
            return None
        for tag in found.filters:
            if type(tag) is not WorkerTag:
                return None
        if not _unpatched(logger, found):
            return None
        self.text = formatter_type is TextFormatter
        self._verified = found
        self._formatter = found.formatter
        self._filters = list(found.filters)
        self._next_check = _monotonic() + 1.0
        return found

    def write(self, handler: BatchingStreamHandler, message: str, fields: dict[str, object] | None) -> bool:
        """Write the line `handler` would write for a record of `message` with extra `fields`.

        `fields` may be None when `text` is True (a text line shows none of them). False when the
        stream refused it: the caller then logs the record the usual way, so the handler's own error
        handling (`handleError`) sees the failure.
        """
        now = _now()
        formatter = handler.formatter
        # Formatted under the lock, as emit() formats: the formatters cache the current second.
        with handler.lock:  # type: ignore[union-attr]  # Handler.handle holds it around emit()
            if type(formatter) is TextFormatter:
                line = formatter.stamped_line(now, self._key, message)
            else:
                json_formatter = cast(JsonFormatter, formatter)
                fields = {} if fields is None else fields
                for tag in handler.filters:  # what WorkerTag.filter adds to the record
                    fields["worker"] = cast(WorkerTag, tag).worker
                pid = os.getpid() if logging.logProcesses else None
                entry = json_formatter.entry(now, self.levelname, self.logger.name, message, pid)
                json_formatter.add_fields(entry, fields)
                line = json_formatter.encode(entry)
            try:
                handler.write_line(line, now)
            except Exception:
                return False
            if self._warns:
                handler.hand_over()
            else:
                handler._pending = True
        return True


# What a record of a direct line would have gone through: replaced on a class (a wrapper installed
# by a monitoring SDK), the line goes the record's way. Compared as one tuple per line.


def _record_path() -> tuple[object, ...]:
    return (
        _Logger.handle,
        _Logger.callHandlers,
        _Logger.makeRecord,
        _Logger.filter,
        BatchingStreamHandler.handle,
        BatchingStreamHandler.filter,
        BatchingStreamHandler.emit,
        BatchingStreamHandler.format,
        TextFormatter.format,
        TextFormatter.formatTime,
        JsonFormatter.format,
    )


_RECORD_PATH: Final = _record_path()
_monotonic = time.monotonic


def _unpatched(logger: logging.Logger, handler: logging.Handler) -> bool:
    """True when none of the record path's methods is replaced, on its classes or on these objects."""
    return (
        _record_path() == _RECORD_PATH
        and _UNPATCHED_LOGGER.isdisjoint(vars(logger))
        and _UNPATCHED_HANDLER.isdisjoint(vars(handler))
        and _UNPATCHED_FORMATTER.isdisjoint(vars(handler.formatter))
    )


# ... and the same names set on the objects themselves.
_UNPATCHED_LOGGER: Final = frozenset({"handle", "callHandlers", "makeRecord", "filter"})
_UNPATCHED_HANDLER: Final = frozenset({"handle", "filter", "emit", "format"})
_UNPATCHED_FORMATTER: Final = frozenset({"format", "formatTime"})
