"""The log handler that writes lines in batches, and to a stuck pipe from a thread of its own.

A worker logs a line per message, and `sys.stderr` is line-buffered: each line was a system call,
measured at 27,615 writes for 20,000 messages and most of the CLI's CPU when stderr is a file or a
pipe. And a pipe nobody reads (a stalled log shipper, a stopped `| tee`) blocked the event loop in
`write(2)`: the worker stopped, and SIGTERM and Ctrl-C were never seen.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import select
import stat
import struct
import threading
import time
import weakref
from collections import deque
from typing import IO, Final, NamedTuple

try:
    import fcntl
    import termios
except ImportError:  # Windows: no FIFO sizes; sockets are checked with select
    fcntl = None  # type: ignore[assignment]
    termios = None  # type: ignore[assignment]

__all__ = ["BatchingStreamHandler"]


class BatchingStreamHandler(logging.StreamHandler[IO[str]]):
    """A stream handler that holds the lines of a burst and writes them together, whole lines at a time.

    On a file or a pipe, lines logged less than 10 ms apart are held and written in chunks of whole
    lines of at most `PIPE_BUF` (4,096) bytes, so the lines of pool workers sharing one pipe never
    tear. A line after a pause, a non-ASCII line, and a WARNING or above (with everything held
    before it) go out at once; held lines at the latest after `flush_interval` (50 ms). On a
    terminal or an in-memory stream each line is written at once, as `StreamHandler` does.

    The logging thread writes the chunks itself, through the stream, so they keep their place among
    whatever else the process writes there — except to a pipe (or socket) that a reader has let
    fill up: a write there would block (the event loop stopped for good, SIGTERM unseen). Then a
    writer thread takes over, in order: up to `backlog_limit` bytes wait for the pipe, later lines
    are dropped and counted, a warning says how many once it takes lines again, and the logging
    thread writes itself again once nothing waits. `flush()` (`CliError` before its `Error:` line,
    `close()` at exit) waits for the writer at most `flush_timeout` seconds, and not again once the
    pipe is known stuck. An exit that skips `close()` (kill -9, the OOM killer, `os._exit` in a
    callback) loses what is held: at most the last `flush_interval` of INFO lines, never a warning
    (unless the pipe was stuck).
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
        self._pending = False  # lines went to the stream since its last flush (written-at-once streams)
        self._held: list[str] = []  # whole ASCII lines of the current burst (guarded by the handler lock)
        self._held_size = 0
        self._last_line_at = 0.0
        # What the writer thread shares with the logging threads, under `_state`:
        self._state = threading.Condition(threading.Lock())
        self._chunks: deque[tuple[int, bytes, IO[str]]] = deque()  # (descriptor, lines, stream) for a pipe
        self._chunk_bytes = 0
        self._handed = 0  # chunks handed to the writer, ever
        self._written = 0  # chunks the writer is done with, ever
        self._dropped = 0  # lines dropped while the backlog was full, not reported yet
        self._writing_since: float | None = None  # when the write in progress began (monotonic)
        self._stopping = False
        self._batches, self._pipe = _mode_of(stream)
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
        if not self._batches:
            self.stream.write(line + self.terminator)
            return
        if self._writer is None or self._stopping:
            if self._stopping:  # closed (logging.shutdown at exit): a late line goes out at once
                self._write_after_close(line)
                return
            self._start_writer()
        if self._dropped:
            self._report_drops()  # before this line: it came after the gap
        if now is None:
            now = _now()
        quiet = now - self._last_line_at > _BURST
        self._last_line_at = now
        if (quiet and not self._held) or not line.isascii():
            # A line after a quiet spell goes at once; a non-ASCII line's encoded size is not its
            # length: on its own, in order.
            self._send_held(wake=False)
            self._send(line + self.terminator, 1)
            return
        size = len(line) + 1
        if self._held_size + size > _ATOMIC_WRITE:
            self._send_held(wake=False)
        self._held.append(line)
        self._held_size += size

    def _send_held(self, *, wake: bool) -> None:
        """Write (a file) or hand to the writer (a pipe) the held lines; handler lock held."""
        if self._held:
            text = self.terminator.join(self._held) + self.terminator
            count = len(self._held)
            self._held.clear()
            self._held_size = 0
            self._send(text, count, wake=wake)
        elif wake and self._pipe is not None:
            with self._state:
                self._state.notify()

    def _send(self, text: str, lines: int, *, wake: bool = True) -> None:
        """Write `text` (handler lock held): at once to a file or a pipe with room, else via the writer.

        At once, through the stream, keeps every line in its place among whatever else the process
        writes there (a `print`, a traceback, a line just before `os._exit`); only while a pipe is
        nearly full, or lines already wait for it, does the writer thread take them, in order.
        """
        pipe = self._pipe
        if pipe is None:
            self.stream.write(text)
            return
        if not self._chunks and self._writing_since is None and _has_room(pipe, len(text)):
            stream = self.stream
            stream.write(text)
            stream.flush()  # nothing left in the stream's buffer to come out of order later
            return
        data = text.encode(pipe.encoding, pipe.errors)  # here: an encoding error is the caller's
        with self._state:
            if self._chunk_bytes + len(data) > self.backlog_limit:
                self._dropped += lines
                return
            self._chunks.append((pipe.fd, data, self.stream))
            self._chunk_bytes += len(data)
            self._handed += 1
            if wake or self._chunk_bytes >= _WAKE_AT:  # else a few chunks per wake-up (~20 µs each)
                self._state.notify()

    def _write_after_close(self, line: str) -> None:
        """A line logged after `close()`: written by the calling thread, unless the pipe is stuck."""
        pipe = self._pipe
        if pipe is None:
            self.stream.write(line + self.terminator)
            return
        with self._state:
            waiting = self._writing_since is not None or bool(self._chunks)
        if waiting or not _has_room(pipe, len(line) + 1):
            self._dropped += 1  # the writer has stopped: it would wait for ever
            return
        self.stream.write(line + self.terminator)
        self.stream.flush()

    def _report_drops(self) -> None:
        """Say how many lines were dropped, once the pipe takes lines again (handler lock held)."""
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
        """Send the held lines now, not waiting for a pipe's writer (after a warning); handler lock held."""
        if self._pipe is None:
            self.flush()
        else:
            self._send_held(wake=True)

    def flush(self) -> None:
        """Write what is held; for a pipe, wait for it at most `flush_timeout`, not once it is known stuck."""
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._pending = False
            self._send_held(wake=True)
            if self._pipe is None:
                stream: IO[str] | None = self.stream
                if stream is not None and hasattr(stream, "flush"):
                    stream.flush()
                return
        state = self._state
        with state:
            target = self._handed
            deadline = _monotonic() + self.flush_timeout
            while self._written < target:
                now = _monotonic()
                since = self._writing_since
                if now >= deadline or (since is not None and now - since > self.flush_timeout):
                    return  # the pipe is stuck: the rest is the writer's
                state.wait(deadline - now)

    def setStream(self, stream: IO[str]) -> IO[str] | None:
        self.flush()
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            previous = super().setStream(stream)
            self._batches, self._pipe = _mode_of(stream)
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
                chunk = None
                if self._chunks:
                    # Set before the pop: a logging thread reads both without the lock, and must never
                    # see an empty queue and no write in progress while this chunk is still to go.
                    self._writing_since = _monotonic()
                    chunk = self._chunks.popleft()
            if chunk is None:
                if quiet:
                    self._pick_up()
                continue
            fd, data, stream = chunk
            _write_all(fd, data, stream)  # the stream it was queued for (setStream may have changed it)
            with state:
                self._chunk_bytes -= len(data)
                self._written += 1
                self._writing_since = None
                state.notify_all()

    def _pick_up(self) -> None:
        """After a quiet `flush_interval`: send a burst's held tail, flush a stream's buffer.

        Only when the handler lock is free at once: a thread logging now sends them itself.
        """
        if not (self._held or self._pending) or self.lock is None or not self.lock.acquire(blocking=False):
            return
        try:
            self._pending = False
            with contextlib.suppress(OSError, ValueError):  # closed or broken: the next record says so
                self._send_held(wake=True)
                if self._pipe is None:
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
# A pipe's writer is woken when this much waits (or after `flush_interval`, a quiet line, a warning, a flush).
_WAKE_AT: Final = 4 * _ATOMIC_WRITE
# Lines closer together than this are a burst (a line per message): held. After a pause: written at once.
# Wall clock (a jump only changes whether one line is held or written at once; the writer bounds both).
_BURST: Final = 0.01
# Free bytes a pipe must keep beyond a chunk for the logging thread to write it itself (see _has_room).
_HEADROOM: Final = 3 * _ATOMIC_WRITE
_GET_PIPE_SIZE: Final[int | None] = getattr(fcntl, "F_GETPIPE_SZ", None)  # Linux
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


class _Pipe(NamedTuple):
    """A stream a reader can stall: its descriptor, how to encode for it, and its size (FIFOs on Linux)."""

    fd: int
    encoding: str
    errors: str
    capacity: int  # bytes a FIFO holds (F_GETPIPE_SZ); 0: a socket, or no way to ask


def _has_room(pipe: _Pipe, size: int) -> bool:
    """Whether `size` bytes go into the pipe now without blocking, with room to spare for other writers.

    A FIFO: its capacity less the unread bytes (FIONREAD), leaving `_HEADROOM` so that pool workers
    sharing the pipe, each checking then writing, cannot together fill it under one of them. Else
    (a socket): writable by `select` (at least a third of its send buffer free).
    """
    fd = pipe.fd
    if pipe.capacity:
        try:
            unread: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return False
        return pipe.capacity - unread >= 4 * size + _HEADROOM  # 4 bytes a character at most
    try:
        _, writable, _ = select.select([], [fd], [], 0)
    except (OSError, ValueError):  # a descriptor past select's limit: the writer thread then
        return False
    return bool(writable)


def _mode_of(stream: object) -> tuple[bool, _Pipe | None]:
    """(whether lines are batched, the pipe when a reader can stall the stream).

    A terminal or an in-memory stream: neither. A regular file or a device (`/dev/null`): batched,
    written by the logging thread (no reader can stall it). A pipe or a socket: both.
    """
    fileno = getattr(stream, "fileno", None)
    if fileno is None:
        return False, None
    try:
        fd = fileno()
        if os.isatty(fd):
            return False, None
        mode = os.fstat(fd).st_mode
        regular = stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
    except (OSError, ValueError, io.UnsupportedOperation):  # StringIO, a closed or captured stream
        return False, None
    if regular:
        return True, None
    capacity = 0
    if stat.S_ISFIFO(mode) and _GET_PIPE_SIZE is not None:
        with contextlib.suppress(OSError):
            capacity = fcntl.fcntl(fd, _GET_PIPE_SIZE)
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return True, _Pipe(fd, encoding, getattr(stream, "errors", None) or "strict", capacity)
