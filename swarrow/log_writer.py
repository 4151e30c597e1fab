"""The log handler that writes lines in batches, and to a stuck pipe from a thread of its own.

A worker logs a line per message, and `sys.stderr` is line-buffered: each line was a system call,
measured at 27,615 writes for 20,000 messages and most of the CLI's CPU when stderr is a file or a
pipe. And a pipe nobody reads (a stalled log shipper, a stopped `| tee`) blocked the event loop in
`write(2)`: the worker stopped, and SIGTERM and Ctrl-C were never seen.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import IO, Final

from swarrow._log_streams import Pipe, mode_of, writable

__all__ = ["BatchingStreamHandler"]


class BatchingStreamHandler(logging.StreamHandler[IO[str]]):
    """A stream handler that holds the lines of a burst and writes them together, whole lines at a time.

    On a file or a pipe, lines logged less than 10 ms apart are held and written in chunks of whole
    lines of at most `PIPE_BUF` (4,096) bytes, so the lines of pool workers sharing one pipe never
    tear. A line after a pause, a non-ASCII line, and a WARNING or above (with everything held
    before it) go out at once; held lines at the latest after `flush_interval` (50 ms). On a
    terminal or an in-memory stream each line is written at once, as `StreamHandler` does.

    The logging thread writes the chunks itself, at once, so they keep their place among whatever
    else the process writes there — except to a pipe (or socket) that a reader has let fill up: a
    write there would block (the event loop stopped for good, SIGTERM unseen). To a pipe the logging
    thread only writes without waiting (`RWF_NOWAIT`); what does not fit goes, in order, to a writer
    thread: up to `backlog_limit` bytes wait for the pipe, later lines are dropped and counted, a
    warning says how many once it moves again (or at close), and the logging thread writes itself
    again once nothing waits. `flush()` (`CliError` before its `Error:` line, `close()` at exit)
    waits for the writer while it makes progress (a chunk at least every `flush_timeout`, 10 s in
    all), and only 0.1 s again until a stuck pipe moves. An exit that skips `close()` (kill -9, the
    OOM killer, `os._exit` in a callback) loses what is held: at most the last `flush_interval` of
    INFO lines, never a warning (unless the pipe was stuck).
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
        self._chunks: deque[tuple[int, bytes, IO[str], int]] = deque()  # (descriptor, bytes, stream, lines)
        self._chunk_bytes = 0
        self._handed = 0  # chunks handed to the writer, ever
        self._written = 0  # chunks the writer is done with, ever
        self._dropped = 0  # lines dropped while the backlog was full, not reported yet
        self._writing_since: float | None = None  # when the write in progress began (monotonic)
        self._progress_at = 0.0  # when the writer last wrote a piece (monotonic): a slow reader still moves
        self._gave_up_at = -1.0  # `_progress_at` when a wait last gave up on a stuck pipe
        self._stopping = False
        self._batches, self._pipe = mode_of(stream)
        self._nowait = _RWF_NOWAIT != 0 and hasattr(os, "pwritev")  # else select before each write
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
        self._progress_at = 0.0
        self._gave_up_at = -1.0
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

    def _send(self, text: str, lines: int, *, wake: bool = True, force: bool = False) -> None:
        """Write `text` (handler lock held): at once to a file or a pipe with room, else via the writer.

        At once keeps every line in its place among whatever else the process writes there (a
        `print`, a traceback, a line just before `os._exit`). To a pipe or socket the logging thread
        only ever writes without waiting (`RWF_NOWAIT`: all of it, or what fits); what does not fit,
        and everything after it until the writer has caught up, goes to the writer thread, in order.
        While its backlog is full the logging thread waits for the writer as long as it makes progress
        (back-pressure from a slow reader, as a blocking write gave); a stuck one's lines are dropped.
        `force`: queue whatever the backlog (the end of a line already partly written, a drop count).
        """
        pipe = self._pipe
        if pipe is None:
            self.stream.write(text)
            return
        data = text.encode(pipe.encoding, pipe.errors)  # here: an encoding error is the caller's
        if not self._chunks and self._writing_since is None:
            written = self._write_now(pipe, data)
            if written == len(data):
                return
            if written:
                force = True  # part of it is out: the rest must follow, or the next line tears it
            data = data[written:]
        with self._state:
            full = self._chunk_bytes + len(data) > self.backlog_limit
            if full and not force and not self._room_for(len(data)):
                self._dropped += lines
                return
            self._chunks.append((pipe.fd, data, self.stream, lines))
            self._chunk_bytes += len(data)
            self._handed += 1
            if wake or self._chunk_bytes >= _WAKE_AT:  # else a few chunks per wake-up (~20 µs each)
                self._state.notify()

    def _room_for(self, size: int) -> bool:
        """Wait (`_state` held) until `size` more bytes fit the backlog, while the writer makes progress."""
        if size > self.backlog_limit or self._progress_at == self._gave_up_at:
            return False  # never fits, or the pipe was found stuck and nothing was written since
        state = self._state
        started = _monotonic()
        while self._chunk_bytes + size > self.backlog_limit:
            if _monotonic() - max(started, self._progress_at) > self.flush_timeout:
                self._gave_up_at = self._progress_at
                return False
            state.notify()
            state.wait(self.flush_timeout / 4)
        return True

    def _write_now(self, pipe: Pipe, data: bytes) -> int:
        """Bytes of `data` written to the pipe without waiting: all, part, or none (it is full)."""
        if self._nowait:
            try:
                return _write_nowait(pipe.fd, data)
            except BrokenPipeError:  # nobody will ever read: the lines are gone, as with a failed write
                return len(data)
            except OSError as exc:
                if exc.errno not in _NOWAIT_REFUSED:
                    raise
                self._nowait = False  # an older kernel: ask select instead, below
        if len(data) > _ATOMIC_WRITE or not writable(pipe.fd):
            return 0  # writable means a page free: only a write of at most a page surely fits
        stream = self.stream  # (racy only against other writers)
        stream.write(data.decode(pipe.encoding, pipe.errors))
        stream.flush()
        return len(data)

    def _write_after_close(self, line: str) -> None:
        """A line logged after `close()`: written by the calling thread if the pipe takes it now."""
        pipe = self._pipe
        if pipe is None:
            self.stream.write(line + self.terminator)
            return
        with self._state:
            waiting = self._writing_since is not None or bool(self._chunks)
        data = (line + self.terminator).encode(pipe.encoding, pipe.errors)
        written = 0 if waiting else self._write_now(pipe, data)
        if not written:
            self._dropped += 1  # the writer has stopped, and the pipe is full
        elif written < len(data):
            _write_all(pipe.fd, data[written:], self.stream)  # the rest of a long line: never torn

    def _report_drops(self, *, closing: bool = False) -> None:
        """Say how many lines were dropped, once the pipe moves again or at close (handler lock held)."""
        with self._state:
            if not self._dropped or (self._chunk_bytes > self.backlog_limit // 2 and not closing):
                return
        self._send_held(wake=False)  # first: what it drops is in the count too
        with self._state:
            dropped, self._dropped = self._dropped, 0
        record = logging.LogRecord(
            __name__, logging.WARNING, __file__, 0,
            "%d log line(s) dropped: the log stream was not taking lines (a pipe nobody read?)",
            (dropped,), None,
        )  # fmt: skip
        self._send(self.format(record) + self.terminator, 1, force=True)  # the count is never dropped

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
            # Known stuck (no chunk written since a flush last gave up): look only briefly again.
            patience = _RECHECK if self._progress_at == self._gave_up_at else self.flush_timeout
            started = _monotonic()
            while self._written < target:
                now = _monotonic()
                if self._progress_at > started:
                    patience = self.flush_timeout
                # The reader has stopped (nothing written for `patience`), or it is slow and an exit
                # must not wait for ever: the rest is the writer's.
                if now - max(started, self._progress_at) > patience or now - started > _DRAIN_LIMIT:
                    self._gave_up_at = self._progress_at
                    return
                state.wait(min(patience, self.flush_timeout) / 4)

    def setStream(self, stream: IO[str]) -> IO[str] | None:
        self.flush()
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            previous = super().setStream(stream)
            self._batches, self._pipe = mode_of(stream)
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
            fd, data, stream, _ = chunk
            _write_all(fd, data, stream, self._note_progress)  # the stream it was queued for
            with state:
                self._chunk_bytes -= len(data)
                self._written += 1
                self._writing_since = None
                state.notify_all()

    def _abandon_the_rest(self) -> None:
        """At close, past the flush's wait: what is still queued will not be written before the process
        ends; count its lines as dropped, and send the count of every dropped line, `flush_timeout` to go."""
        state = self._state
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            with state:
                self._dropped += sum(chunk[3] for chunk in self._chunks)
                self._written += len(self._chunks)  # done with, as far as waiting goes
                self._chunks.clear()
                self._chunk_bytes = 0
                if not self._dropped:
                    return
            self._report_drops(closing=True)
        with state:
            target, deadline = self._handed, _monotonic() + self.flush_timeout
            while self._written < target and _monotonic() < deadline:
                state.wait(self.flush_timeout / 4)

    def _note_progress(self) -> None:
        self._progress_at = _monotonic()

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
            if self._pipe is not None:
                self._abandon_the_rest()
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
# At exit, how long a pipe whose reader is slow but moving may hold the flush (a stopped one: flush_timeout).
_DRAIN_LIMIT: Final = 10.0
# How long a flush looks again at a pipe a previous flush found stuck (a writer just unblocked is that quick).
_RECHECK: Final = 0.1
_RWF_NOWAIT: Final[int] = getattr(os, "RWF_NOWAIT", 0)
# What pwritev2 answers where RWF_NOWAIT is not supported (an older kernel, another system).
_NOWAIT_REFUSED: Final = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.ESPIPE})
_now = time.time
_monotonic = time.monotonic
_write = os.write
_LIVE_HANDLERS: weakref.WeakSet[BatchingStreamHandler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in list(_LIVE_HANDLERS):
        handler._forget_after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _write_all(fd: int, data: bytes, stream: IO[str], progress: Callable[[], None] | None = None) -> None:
    """Write all of `data` to `fd` (blocking) a page at a time, calling `progress` after each; a failure (a
    closed pipe, a full disk) drops it.

    `os.write` rather than the stream's own `write`: blocked on a pipe nobody reads, the writer holds
    no lock of the stream's, so the interpreter can still exit (a daemon thread stuck inside a
    buffered stream's lock aborts the interpreter's final flush of stderr). A page at a time, so a
    slow reader's progress shows (a 20 KB line at 5 KB/s is not a stuck pipe).
    """
    if getattr(stream, "closed", False):
        return  # closed under us: its descriptor may belong to another file by now
    view = memoryview(data)
    while view:
        try:
            written = _write(fd, view[:_ATOMIC_WRITE])
        except BlockingIOError:  # a descriptor set non-blocking by whoever shares it
            select.select([], [fd], [], 0.05)
            continue
        except OSError:
            return
        view = view[written:]
        if progress is not None:
            progress()


def _write_nowait(fd: int, data: bytes) -> int:
    """write(2) that never waits (`RWF_NOWAIT`, Linux 5.8+ for pipes): the bytes written, 0 if none fit.

    Whole or nothing for up to `PIPE_BUF` bytes on a pipe; and unlike setting `O_NONBLOCK`, it
    changes nothing for the other writers sharing the descriptor (a `print`, pool workers).
    """
    try:
        return os.pwritev(fd, [data], -1, _RWF_NOWAIT)
    except BlockingIOError:
        return 0
