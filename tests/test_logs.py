from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from swarrow import log_writer
from swarrow.log_fast import RecordTemplate
from swarrow.logs import (
    BatchingStreamHandler,
    JsonFormatter,
    TextFormatter,
    configure_logging,
)


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("swarrow.x", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    record.__dict__.update(extra)
    return record


def test_json_formatter_emits_one_object_with_the_standard_fields() -> None:
    line = JsonFormatter().format(
        _record(queue="q", message_id="m", outcome="acked", duration=0.25, stop_reason="signal", custom=1)
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "hello world"
    assert entry["level"] == "WARNING" and entry["logger"] == "swarrow.x"
    assert entry["time"].endswith("+00:00") and "T" in entry["time"]
    assert entry["queue"] == "q" and entry["outcome"] == "acked" and entry["duration"] == 0.25
    assert entry["stop_reason"] == "signal" and entry["custom"] == 1
    assert "args" not in entry and "msg" not in entry


def test_json_lines_name_the_process_and_the_host() -> None:
    entry = json.loads(JsonFormatter().format(_record()))
    assert entry["pid"] == os.getpid()
    assert entry["host"] == socket.gethostname() and entry["host"]


def test_json_formatter_includes_the_traceback_as_a_string() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), exc_info=__import__("sys").exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: bad" in entry["exc_info"]


def test_configure_logging_json_to_a_stream(restore_root: None) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream)
    logging.getLogger("swarrow.test").debug("x=%d", 5, extra={"queue": "q"})
    entry = json.loads(stream.getvalue().splitlines()[-1])
    assert entry["message"] == "x=5" and entry["queue"] == "q" and entry["level"] == "DEBUG"


def test_configure_logging_is_idempotent(restore_root: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "text", first)
    handler = configure_logging("INFO", "text", second)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_swarrow", False)]
    assert ours == [handler]
    logging.getLogger("swarrow.test").info("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1
    assert "INFO swarrow.test: once" in second.getvalue()


def test_configure_logging_sets_the_level(restore_root: None) -> None:
    stream = io.StringIO()
    configure_logging(logging.WARNING, "text", stream)
    logging.getLogger("swarrow.test").info("hidden")
    assert stream.getvalue() == ""


@pytest.mark.parametrize(("level", "fmt"), [("LOUD", "text"), ("INFO", "xml")])
def test_configure_logging_rejects_bad_options(level: str, fmt: str, restore_root: None) -> None:
    with pytest.raises(ValueError):
        configure_logging(level, fmt)  # type: ignore[arg-type]


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_batching_handler_flushes_warnings_at_once_and_info_in_the_background() -> None:
    stream = _CountingStream()
    handler = BatchingStreamHandler(stream, flush_interval=0.05)
    log = logging.getLogger("tests.batching")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        for i in range(100):
            log.info("line %d", i)
        assert stream.flushes == 0  # no flush per record
        log.warning("now")
        assert stream.flushes == 1
        log.info("later")
        deadline = time.monotonic() + 5
        while stream.flushes < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stream.flushes == 2  # the background flusher picked up the pending line
        assert stream.getvalue().count("\n") == 102
    finally:
        log.removeHandler(handler)
        handler.close()
    assert handler._writer is not None
    handler._writer.join(timeout=5)  # close() set the stop: the writer thread ends, it does not linger
    assert not handler._writer.is_alive()


def test_text_formatter_matches_the_standard_timestamp() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 0, "hello %s", ("world",), None)
    standard = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    assert TextFormatter().format(record) == standard.format(record)
    later = logging.LogRecord("x", logging.INFO, __file__, 0, "again", (), None)
    later.created += 1.5
    later.msecs = (later.created - int(later.created)) * 1000
    assert TextFormatter().format(later) == standard.format(later)


def test_pool_workers_tag_their_lines_in_text_and_json() -> None:
    for fmt in ("text", "json"):
        stream = io.StringIO()
        handler = configure_logging("INFO", fmt, stream=stream, worker=2)  # type: ignore[arg-type]
        try:
            logging.getLogger("tests.worker").info("hello")
            handler.flush()
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
        line = stream.getvalue().strip()
        if fmt == "json":
            assert json.loads(line)["worker"] == 2
        else:
            assert "[worker 2] tests.worker: hello" in line


def test_text_formatter_renders_tracebacks_like_the_standard_one_indented() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 0, "failed %s", ("job",), sys.exc_info())
    standard = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    rendered = TextFormatter().format(record)
    first, *rest = standard.format(record).split("\n")
    assert rendered == "\n".join([first, *("  " + line for line in rest)])
    assert "\n  ValueError: boom" in rendered


def test_json_time_is_iso_utc_with_milliseconds() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 0, "hi", (), None)
    record.created = 1_700_000_000.0429
    entry = json.loads(JsonFormatter().format(record))
    assert entry["time"] == "2023-11-14T22:13:20.042+00:00"


def _template(logger: logging.Logger) -> RecordTemplate:
    return RecordTemplate(logger, logging.INFO, "message %s took %.3fs", pathname=__file__)


def test_record_template_makes_the_same_record_as_make_record() -> None:
    logger = logging.getLogger("tests.template")
    template = _template(logger)
    extra = {"queue": "jobs", "outcome": "acked"}
    first = template.make(("a", 0.5), extra)  # made the standard way; becomes the template
    fast = template.make(("b", 0.25), extra)
    standard = logger.makeRecord(
        logger.name, logging.INFO, __file__, 0, "message %s took %.3fs", ("b", 0.25), None, None, extra
    )
    assert type(fast) is logging.LogRecord
    timing = {"created", "msecs", "relativeCreated"}
    assert {k: v for k, v in vars(fast).items() if k not in timing} == {
        k: v for k, v in vars(standard).items() if k not in timing
    }
    assert fast.getMessage() == "message b took 0.250s"
    assert first.created <= fast.created <= standard.created
    assert abs(fast.relativeCreated - standard.relativeCreated) < 50  # ms, both from logging's start time
    assert fast.msecs == int((fast.created - int(fast.created)) * 1000)


def test_record_template_honours_a_custom_record_factory() -> None:
    logger = logging.getLogger("tests.template")
    template = _template(logger)
    template.make(("a", 0.5), {})
    previous = logging.getLogRecordFactory()

    class Tagged(logging.LogRecord):
        tagged = True

    logging.setLogRecordFactory(Tagged)
    try:
        record = template.make(("b", 0.5), {})
    finally:
        logging.setLogRecordFactory(previous)
    assert isinstance(record, Tagged)
    assert type(template.make(("c", 0.5), {})) is logging.LogRecord


def test_record_template_records_the_thread_that_logs() -> None:
    import threading

    logger = logging.getLogger("tests.template")
    template = _template(logger)
    template.make(("main", 0.1), {})
    seen: list[logging.LogRecord] = []
    thread = threading.Thread(
        target=lambda: seen.append(template.make(("other", 0.1), {})), name="other-thread"
    )
    thread.start()
    thread.join(timeout=10)
    assert seen[0].threadName == "other-thread"
    assert seen[0].thread == thread.ident
    assert template.make(("main", 0.1), {}).thread == threading.get_ident()


def test_text_formatter_with_a_worker_tag_matches_the_standard_one() -> None:
    record = logging.LogRecord("x.y", logging.WARNING, __file__, 0, "hello %s", ("world",), None)
    standard = logging.Formatter("%(asctime)s %(levelname)s [worker 3] %(name)s: %(message)s")
    assert TextFormatter(worker=3).format(record) == standard.format(record)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_record_template_records_the_pid_of_a_forked_child() -> None:
    logger = logging.getLogger("tests.template")
    template = _template(logger)
    assert template.make(("parent", 0.1)).process == os.getpid()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what a record made here says, then leave without cleanup
        try:
            os.write(write, str(template.make(("child", 0.1)).process).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        reported = pipe.read()
    os.waitpid(pid, 0)
    assert reported == str(pid)


# --- producer-controlled text cannot forge a log line (hardening item 10) -----------------------------------

_FORGED = "m-1\n2026-01-01 00:00:00,000 INFO swarrow.consumer: forged line"


def _text_lines(record: logging.LogRecord, *, worker: int | None = None) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter(worker=worker))
    handler.handle(record)
    return stream.getvalue().splitlines()


@pytest.mark.parametrize("worker", [None, 1])
def test_text_formatter_escapes_a_newline_in_a_message_id(worker: int | None) -> None:
    record = logging.LogRecord(
        "processors.logger", logging.INFO, __file__, 0, "message %s from %s", (_FORGED, "q"), None
    )
    lines = _text_lines(record, worker=worker)
    assert len(lines) == 1, lines
    assert "m-1\\n2026-01-01 00:00:00,000 INFO swarrow.consumer: forged line from q" in lines[0]


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a\rb", "a\\rb"),
        ("a\tb", "a\\tb"),
        ("a\x1b[31mred", "a\\x1b[31mred"),
        ("a\x00b\x7fc", "a\\x00b\\x7fc"),
        ("a\x85b", "a\\x85b"),
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
        ("a\x0bb\x0cc\x1cd", "a\\x0bb\\x0cc\\x1cd"),
        ("admin\u202etxt.exe", "admin\\u202etxt.exe"),
        ("plain é ü 日本 ok", "plain é ü 日本 ok"),
    ],
)
def test_text_formatter_escapes_every_control_and_line_breaking_character(raw: str, escaped: str) -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 0, "key=%s", (raw,), None)
    rendered = TextFormatter().format(record)
    assert rendered.endswith(f"WARNING x: key={escaped}")
    assert len(rendered.splitlines()) == 1


def test_text_formatter_escapes_the_logger_name_and_a_custom_level_name() -> None:
    record = logging.LogRecord("evil\nname", logging.INFO, __file__, 0, "hi", (), None)
    record.levelname = "IN\rFO"
    assert TextFormatter().format(record).endswith(" IN\\rFO evil\\nname: hi")


def test_a_traceback_in_text_logs_cannot_start_a_line_of_its_own() -> None:
    try:
        raise ValueError(_FORGED)
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 0, "failed %s", (_FORGED,), sys.exc_info())
    lines = _text_lines(record)
    assert lines[0].endswith(
        "ERROR x: failed m-1\\n2026-01-01 00:00:00,000 INFO swarrow.consumer: forged line"
    )
    # Every further line of the record (the traceback) is indented: only a real record starts at column 0.
    assert len(lines) > 2 and all(line.startswith("  ") for line in lines[1:])
    assert "  Traceback (most recent call last):" in lines
    assert (
        "  ValueError: m-1" in lines
        and "  2026-01-01 00:00:00,000 INFO swarrow.consumer: forged line" in lines
    )


def test_a_stack_info_in_text_logs_is_indented_too() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 0, "here", (), None, sinfo="Stack (most recent call last):\n  a\x1bb"
    )
    lines = _text_lines(record)
    assert lines[1:] == ["  Stack (most recent call last):", "    a\\x1bb"]


def test_json_lines_stay_one_line_and_lossless_whatever_a_producer_sends() -> None:
    nasty = _FORGED + "\r\x1b\x85\u2028\u2029\u202e end"
    record = _record(message_id=nasty, routing_key=nasty, error="x\ny")
    record.msg, record.args = "failed %s", (nasty,)
    line = JsonFormatter().format(record)
    assert len(line.splitlines()) == 1 and "\n" not in line
    entry = json.loads(line)
    assert (
        entry["message_id"] == nasty
        and entry["routing_key"] == nasty
        and entry["message"] == f"failed {nasty}"
    )


def test_the_logger_processor_line_of_a_forged_message_id_is_one_line(restore_root: None) -> None:
    import anyio

    from processors.logger import LoggerProcessor
    from swarrow.message import Message

    async def ok(message: Message, /) -> bool:
        return True

    stream = io.StringIO()
    handler = configure_logging("INFO", "text", stream)
    anyio.run(LoggerProcessor(ok), Message(b"x", message_id=_FORGED, queue="q", routing_key="r\nk"))
    handler.flush()
    lines = [line for line in stream.getvalue().splitlines() if "processors.logger" in line]
    assert len(stream.getvalue().splitlines()) == 1 and len(lines) == 1
    assert "m-1\\n2026-01-01" in lines[0]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_url_with_a_password_is_masked_in_any_log_record(fmt: str) -> None:
    # aio-pika and others log their URL; swarrow masks it whoever wrote the line.
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    record = logging.LogRecord(
        "aio_pika.robust_connection", logging.WARNING, __file__, 0,
        "Reconnect attempt failed %s: %s", ("amqp:/svc:s3cr/et@rabbit/", "refused"), None,
    )  # fmt: skip
    line = formatter.format(record)
    assert "s3cr" not in line and "svc:***@rabbit/" in line
    try:
        raise ConnectionError("cannot reach amqp://svc:hunter2@rabbit:5672/")
    except ConnectionError:
        import sys

        failed = logging.LogRecord("x", logging.ERROR, __file__, 0, "failed", (), sys.exc_info())
    assert "hunter2" not in formatter.format(failed) and "svc:***@rabbit" in formatter.format(failed)


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("query", ["?token=Zqtok", "?api-key=Zqtok&region=eu", "?x=1&access_token=Zqtok"])
def test_a_credential_in_a_url_query_is_masked_in_any_log_record(fmt: str, query: str) -> None:
    # The OTLP exporter (through urllib3) quotes its endpoint's path and query at every failed export:
    # `?token=…` of an OTEL_EXPORTER_OTLP_ENDPOINT was printed at each retry.
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    record = logging.LogRecord(
        "opentelemetry.exporter.otlp.proto.http.trace_exporter", logging.WARNING, __file__, 0,
        "Transient error %s encountered while exporting spans batch, retrying in %.2fs.",
        (f"HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: /v1/traces{query}", 1.0),
        None,
    )  # fmt: skip
    line = formatter.format(record)
    assert "Zqtok" not in line and "/v1/traces?" in line and "=***" in line


class _FileLike(io.StringIO):
    """An in-memory stream claiming a real file descriptor (a terminal's, a file's); it records its writes."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.writes: list[str] = []

    def fileno(self) -> int:
        return self.fd

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


class _RecordingText(io.TextIOWrapper):
    """A text stream on a real descriptor that records each write: the logging thread's, written at once."""

    def __init__(self, raw: IO[bytes], writes: list[str]) -> None:
        super().__init__(raw, encoding="utf-8", line_buffering=True)  # type: ignore[arg-type]
        self.writes = writes

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


class _Sink:
    """Where a handler writes, read back: a regular file (written by the logging thread) or a pipe (the
    logging thread's writes that never wait, the writer thread's `os.write`); `writes` lists each write."""

    def __init__(self, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kind = kind
        self.writes: list[str] = []
        self.received = bytearray()
        if kind == "file":
            self._fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT)
            self.stream: IO[str] = _FileLike(self._fd)
            self.writes = self.stream.writes  # type: ignore[attr-defined]
            return
        read_fd, write_fd = os.pipe()
        self._read_fd = read_fd
        self.stream = _RecordingText(open(write_fd, "wb"), self.writes)  # noqa: SIM115

        def recording(fd: int, data: Any) -> int:
            self.writes.append(bytes(data).decode())
            return os.write(fd, data)

        def recording_nowait(fd: int, data: bytes) -> int:
            written = nowait(fd, data)
            self.writes.append(data[:written].decode())
            return written

        nowait = log_writer._write_nowait
        monkeypatch.setattr(log_writer, "_write", recording)
        monkeypatch.setattr(log_writer, "_write_nowait", recording_nowait)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := os.read(self._read_fd, 65536):
            self.received.extend(chunk)

    def text(self) -> str:
        if self.kind == "file":
            return self.stream.getvalue()  # type: ignore[attr-defined, no-any-return]
        return self.received.decode()

    def close(self) -> None:
        self.stream.close()
        if self.kind == "file":
            os.close(self._fd)
        else:
            self._reader.join(timeout=5)
            os.close(self._read_fd)


@pytest.fixture(params=["file", "pipe"])
def sink(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Sink]:
    opened = _Sink(request.param, tmp_path, monkeypatch)
    yield opened
    opened.close()


def _info(handler: logging.Handler, text: str, level: int = logging.INFO) -> None:
    handler.handle(logging.LogRecord("t", level, __file__, 0, text, (), None))


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_on_a_file_or_pipe_lines_are_written_together_in_whole_lines_of_at_most_pipe_buf(sink: _Sink) -> None:
    # Before: sys.stderr is line-buffered, so each line was a write(2): 27,615 writes for 20,000 messages.
    handler = BatchingStreamHandler(sink.stream, flush_interval=3600)
    assert handler._batches and (handler._pipe is not None) == (sink.kind == "pipe")
    handler.setFormatter(logging.Formatter("%(message)s"))
    lines = [f"message m-{n} from jobs acked in 0.001s (attempt 1)" for n in range(300)]
    for line in lines:
        _info(handler, line)
    _info(handler, "a warning sends everything held before it", logging.WARNING)
    expected = [*lines, "a warning sends everything held before it"]
    _wait_for(lambda: sink.text().splitlines() == expected, "the warning was not written")
    assert 4 <= len(sink.writes) <= 6  # ~15 KB in 4 KB writes, not 301
    assert all(w.endswith("\n") and len(w.encode()) <= 4096 for w in sink.writes)
    _info(handler, "caf\u00e9 \u4e2d")  # not ASCII: written on its own, in order
    _info(handler, "held")
    handler.flush()  # waits for the writer: to the pipe (its reader thread may not have read it yet)
    assert handler._written == handler._handed
    _wait_for(lambda: sink.text().splitlines()[-2:] == ["caf\u00e9 \u4e2d", "held"], "not in order")
    handler.close()


def test_held_lines_are_written_within_the_flush_interval(sink: _Sink) -> None:
    handler = BatchingStreamHandler(sink.stream, flush_interval=0.05)
    _info(handler, "first")  # after a quiet spell: at once
    _info(handler, "soon")  # in a burst: held, then sent by the writer thread's round
    _wait_for(lambda: "soon" in sink.text(), "the held line was never written")
    handler.close()


def test_on_a_terminal_or_in_memory_each_line_is_written_at_once() -> None:
    memory = io.StringIO()
    handler = BatchingStreamHandler(memory, flush_interval=3600)
    _info(handler, "now")
    assert memory.getvalue() == "now\n"
    handler.close()
    controller, terminal = os.openpty()
    try:
        tty = _FileLike(terminal)
        handler = BatchingStreamHandler(tty, flush_interval=3600)
        _info(handler, "now")
        assert tty.writes == ["now\n"]
        handler.close()
    finally:
        os.close(controller)
        os.close(terminal)


def test_a_cli_error_prints_after_the_log_lines_held_before_it(sink: _Sink, restore_root: None) -> None:
    from swarrow.cli.errors import CliError

    handler = configure_logging("INFO", "text", sink.stream)
    for n in range(5):  # a burst: the first goes at once, the rest are held
        logging.getLogger("swarrow.cli").info("line %d", n)
    CliError("cannot listen on 127.0.0.1:9: address already in use", 2).show(file=sink.stream)
    sink.stream.flush()
    _wait_for(lambda: sink.text().endswith("in use\n"), "the Error: line was not written")
    out = sink.text().splitlines()
    assert [line.rsplit(": ", 1)[-1] for line in out[:5]] == [f"line {n}" for n in range(5)]
    assert out[-1] == "Error: cannot listen on 127.0.0.1:9: address already in use"
    handler.close()


def test_a_pipe_nobody_reads_never_blocks_the_logging_thread_and_drops_are_counted() -> None:
    # Before: the event loop blocked in write(2) once the pipe was full, and then never saw SIGTERM.
    import fcntl
    import re
    import threading

    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)  # a full pipe after ~40 lines
    stream = os.fdopen(write_fd, "w", encoding="utf-8")
    handler = BatchingStreamHandler(stream, flush_interval=0.01, flush_timeout=0.2, backlog_limit=16_384)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        started = time.monotonic()
        for n in range(5_000):  # ~250 KB: the pipe and the backlog hold a tenth of it
            _info(handler, f"line {n:05d} " + "x" * 40)
        _info(handler, "a warning while stuck", logging.WARNING)
        handler.flush()  # waits flush_timeout at most ...
        handler.flush()  # ... and not again once the stream is known stuck
        assert time.monotonic() - started < 3.0
        received = bytearray()
        reader_done = threading.Event()

        def drain() -> None:
            while chunk := os.read(read_fd, 65536):
                received.extend(chunk)
            reader_done.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()  # someone reads again: what waited is written, then the count of what was dropped
        _wait_for(lambda: handler._chunk_bytes == 0, "the backlog was never written")
        _info(handler, "after")
        _info(handler, "after, held")
        handler.flush()
    finally:
        handler.close()
        stream.close()
    assert reader_done.wait(5)
    os.close(read_fd)
    lines = received.decode().splitlines()
    numbered = [int(line.split()[1]) for line in lines if line.startswith("line ")]
    assert numbered == sorted(numbered) and len(set(numbered)) == len(numbered)  # in order, none twice
    dropped = sum(int(m.group(1)) for line in lines if (m := re.match(r"(\d+) log line\(s\) dropped", line)))
    warning = int("a warning while stuck" in lines)
    assert len(numbered) + warning + dropped == 5_001
    assert dropped > 0 and lines[-3].endswith("(a pipe nobody read?)")  # said before the next line
    assert lines[-2:] == ["after", "after, held"]


def test_a_forked_child_writes_its_own_lines_and_none_of_its_parents() -> None:
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w", encoding="utf-8")
    handler = BatchingStreamHandler(stream, flush_interval=3600)
    handler.setFormatter(logging.Formatter("%(message)s"))
    _info(handler, "parent, at once")
    _info(handler, "parent, held at the fork")
    pid = os.fork()
    if pid == 0:  # the child: its writer thread did not survive the fork
        try:
            _info(handler, "child, at once")
            _info(handler, "child, held")
            handler.flush()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    handler.flush()
    handler.close()
    stream.close()
    with os.fdopen(read_fd, encoding="utf-8") as pipe:
        lines = pipe.read().splitlines()
    expected = ["parent, at once", "parent, held at the fork", "child, at once", "child, held"]
    assert sorted(lines) == sorted(expected)  # each once: the parent's queued lines are not the child's


def test_a_line_logged_after_close_is_still_written(sink: _Sink) -> None:
    # logging.shutdown() closes the handler at exit, while a late record (a daemon thread's) may follow.
    handler = BatchingStreamHandler(sink.stream, flush_interval=3600)
    _info(handler, "before")
    handler.close()
    assert handler._writer is not None
    handler._writer.join(timeout=5)
    _info(handler, "after close")
    _wait_for(lambda: sink.text().splitlines() == ["before", "after close"], "the late line was not written")


def _pipe_handler() -> tuple[int, IO[str], BatchingStreamHandler]:
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w", encoding="utf-8", buffering=1)
    handler = BatchingStreamHandler(stream, flush_interval=3600)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return read_fd, stream, handler


def test_on_a_pipe_with_room_a_warning_is_written_before_os_exit() -> None:
    # Attack on the writer thread (2026-11-29): a WARNING logged just before os._exit (a callback's, a
    # multiprocessing fork child's) was handed to the writer thread and never written.
    read_fd, stream, handler = _pipe_handler()
    pid = os.fork()
    if pid == 0:
        try:
            _info(handler, "quiet line")
            _info(handler, "held line")
            _info(handler, "fatal, exiting", logging.WARNING)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3
    handler.close()
    stream.close()
    with os.fdopen(read_fd, encoding="utf-8") as pipe:
        assert pipe.read().splitlines() == ["quiet line", "held line", "fatal, exiting"]


def test_on_a_pipe_log_lines_keep_their_place_among_other_writes_to_the_stream() -> None:
    # The same attack: lines went out after later print()s and tracebacks, one glued into a print's line.
    read_fd, stream, handler = _pipe_handler()
    expected = []
    for n in range(200):
        handler.write_line(f"log {n}", now=1.0 + n)  # a second apart: each after a quiet spell
        stream.write(f"print {n}")  # print() writes the text, then the newline
        stream.write("\n")
        expected += [f"log {n}", f"print {n}"]
    handler.write_line("held 1", now=500.0)
    handler.write_line("held 2", now=500.001)  # in a burst: held ...
    handler.handle(logging.LogRecord("t", logging.ERROR, __file__, 0, "an error", (), None))  # ... then sent
    stream.write("Traceback (most recent call last):\n")
    expected += ["held 1", "held 2", "an error", "Traceback (most recent call last):"]
    handler.close()
    stream.close()
    with os.fdopen(read_fd, encoding="utf-8") as pipe:
        assert pipe.read().splitlines() == expected


def _fill_fragmented(write_fd: int) -> int:
    """Fill a pipe as a mix of long and short writes does: full with ~33 KB unread, not 64 KB (pages)."""
    written = 0
    try:
        while True:
            for size in (4000, 200):
                written += os.pwritev(write_fd, [b"f" * (size - 1) + b"\n"], -1, os.RWF_NOWAIT)
    except BlockingIOError:
        pass
    try:
        while True:  # the last page's room too: then no write of any size fits
            written += os.pwritev(write_fd, [b"\n"], -1, os.RWF_NOWAIT)
    except BlockingIOError:
        return written


def _in_a_thread_or_fail(work: Callable[[], None], what: str, timeout: float = 10.0) -> None:
    """Run `work`; fail (instead of hanging the suite) if it blocks."""
    done = threading.Event()

    def run() -> None:
        work()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout), what


@pytest.mark.parametrize("nowait", [True, False], ids=["rwf-nowait", "select"])
def test_a_full_pipe_never_blocks_the_logging_thread_however_its_pages_are_filled(nowait: bool) -> None:
    # Attack 2 on the writer (2026-11-29): a pipe full of short writes, one per page, held only ~33 KB, so a
    # room check by unread bytes let the logging thread write, and it blocked for ever (SIGTERM unseen).
    read_fd, write_fd = os.pipe()
    filled = _fill_fragmented(write_fd)
    assert 0 < filled < 40_000
    stream = os.fdopen(write_fd, "w", encoding="utf-8", buffering=1)
    handler = BatchingStreamHandler(stream, flush_interval=0.01, flush_timeout=0.2)
    handler._nowait = nowait  # False: a kernel without RWF_NOWAIT for pipes (select, then write)
    handler.setFormatter(logging.Formatter("%(message)s"))

    def log() -> None:
        for n in range(300):
            _info(handler, f"line {n}", logging.WARNING if n % 50 == 0 else logging.INFO)
        handler.flush()

    _in_a_thread_or_fail(log, "a log call blocked on the full pipe")
    received = bytearray()
    while len(received) < filled:
        received.extend(os.read(read_fd, 65536))
    _in_a_thread_or_fail(handler.close, "close() blocked")
    stream.close()
    with os.fdopen(read_fd, "rb") as pipe:
        received.extend(pipe.read())
    lines = [line for line in received.decode().splitlines() if line and not line.startswith("f")]
    assert lines == [f"line {n}" for n in range(300)]  # waited for the reader, in order, none lost


def test_at_close_a_slow_reader_gets_every_line_and_the_count_of_what_was_dropped() -> None:
    # Attack 2: close() waited 1 s in all, then the queued lines died with the process, uncounted.
    read_fd, write_fd = os.pipe()
    filled = _fill_fragmented(write_fd)
    stream = os.fdopen(write_fd, "w", encoding="utf-8", buffering=1)
    handler = BatchingStreamHandler(stream, flush_interval=0.01, flush_timeout=0.3, backlog_limit=60_000)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for n in range(6_000):  # ~96 KB: 60 KB waits, the rest is dropped
        _info(handler, f"line {n:05d} " + "x" * 4)
    received = bytearray()

    def read_slowly() -> None:  # ~200 KB/s: the close takes ~0.5 s, longer than flush_timeout
        while chunk := os.read(read_fd, 4096):
            received.extend(chunk)
            time.sleep(0.02)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    handler.close()
    stream.close()
    reader.join(timeout=10)
    lines = received.decode()[filled:].splitlines()
    numbered = [int(line.split()[1]) for line in lines if line.startswith("line ")]
    dropped = sum(int(line.split()[0]) for line in lines if "log line(s) dropped" in line)
    assert dropped > 0 and len(numbered) + dropped == 6_000
    assert numbered == sorted(numbered)


def _drain(read_fd: int, into: bytearray) -> threading.Thread:
    def read() -> None:
        while chunk := os.read(read_fd, 65536):
            into.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def test_a_line_longer_than_the_backlog_is_written_whole_never_torn() -> None:
    # Attack 3 (2026-11-29): a 2 MB line went out as its first 64 KB (what fitted the pipe), the rest was
    # dropped for the 1 MiB backlog, and the next line was glued onto it.
    read_fd, stream, handler = _pipe_handler()
    handler.backlog_limit = 100_000
    received = bytearray()
    big = "a" * 300_000
    _info(handler, big)  # nobody reads yet: 64 KB fits, the rest must follow
    reader = _drain(read_fd, received)
    _info(handler, "after")
    handler.close()
    stream.close()
    reader.join(timeout=10)
    assert received.decode().splitlines() == [big, "after"]


def test_a_long_line_logged_after_close_is_written_whole() -> None:
    read_fd, stream, handler = _pipe_handler()
    received = bytearray()
    reader = _drain(read_fd, received)
    handler.close()
    big = "b" * 100_000
    _info(handler, big)
    _info(handler, "short")
    stream.close()
    reader.join(timeout=10)
    assert received.decode().splitlines() == [big, "short"]


def test_without_rwf_nowait_a_long_line_to_a_full_pipe_goes_to_the_writer_thread() -> None:
    # Attack 3: select calls a pipe with a free page writable; a 100 KB line then blocked the logging thread.
    read_fd, stream, handler = _pipe_handler()
    handler._nowait = False
    filled = _fill_fragmented(stream.fileno()) - len(os.read(read_fd, 4000))  # one page free: "writable"
    handler.flush_timeout = 0.2
    _in_a_thread_or_fail(lambda: _info(handler, "c" * 100_000), "the logging thread blocked on a long line")
    received = bytearray()
    reader = _drain(read_fd, received)
    handler.close()
    stream.close()
    reader.join(timeout=10)
    assert received[filled:].decode().splitlines()[-1] == "c" * 100_000


def test_a_slow_reader_slows_the_logging_thread_down_instead_of_losing_lines() -> None:
    # Attack 3: --workers with long lines and a reader that kept up overall dropped hundreds of lines, where
    # a blocking write had slowed them down. Lines are dropped only while the pipe is stuck.
    read_fd, stream, handler = _pipe_handler()
    handler.backlog_limit = 20_000
    received = bytearray()

    def read_slowly() -> None:
        while chunk := os.read(read_fd, 4096):
            received.extend(chunk)
            time.sleep(0.001)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    for n in range(2_000):
        _info(handler, f"line {n:04d} " + "x" * 200)  # ~420 KB: 20 times the backlog
    handler.close()
    stream.close()
    reader.join(timeout=30)
    lines = received.decode().splitlines()
    assert [int(line.split()[1]) for line in lines] == list(range(2_000))


def test_at_close_the_drop_count_is_written_even_with_a_full_backlog() -> None:
    # Attack 3: the closing count went into the full backlog and was itself dropped.
    read_fd, stream, handler = _pipe_handler()
    handler.backlog_limit = 10_000
    handler.flush_timeout = 0.2
    filled = _fill_fragmented(stream.fileno())
    for n in range(1_000):
        _info(handler, f"line {n:04d} " + "x" * 40)
    handler.close()  # the pipe is stuck: gives up after flush_timeout, with the count queued
    received = bytearray()
    reader = _drain(read_fd, received)  # then the reader comes back
    _wait_for(lambda: b"dropped" in received, "the count of dropped lines was never written")
    stream.close()
    reader.join(timeout=10)
    lines = received[filled:].decode().splitlines()
    numbered = [line for line in lines if line.startswith("line ")]
    dropped = sum(int(line.split()[0]) for line in lines if "log line(s) dropped" in line)
    assert len(numbered) + dropped == 1_000


def test_a_slow_reader_at_exit_gets_the_count_of_what_could_not_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attack 4 (2026-11-29): with a slow reader the exit's flush gave up with up to 1 MiB still queued, and
    # those lines died with the process, uncounted; a 20 KB line at 5 KB/s also looked like a stuck pipe.
    monkeypatch.setattr(log_writer, "_DRAIN_LIMIT", 0.5)
    read_fd, stream, handler = _pipe_handler()
    handler.flush_timeout = 0.5
    received = bytearray()

    def read_slowly() -> None:  # 4 KB every 20 ms: ~200 KB/s, a page at a time
        while chunk := os.read(read_fd, 4096):
            received.extend(chunk)
            time.sleep(0.02)

    for n in range(3_000):
        _info(handler, f"line {n:04d} " + "x" * 90)  # ~300 KB: more than half a second of reading
    _info(handler, "big " + "y" * 20_000)
    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    started = time.monotonic()
    handler.close()
    assert time.monotonic() - started < 3.0  # the drain limit, then the count's own short wait
    assert handler._writer is not None
    handler._writer.join(timeout=10)  # a process would end here; the test lets the writer finish its piece
    stream.close()
    reader.join(timeout=10)
    lines = received.decode().splitlines()
    numbered = [line for line in lines if line.startswith("line ")]
    big = [line for line in lines if line.startswith("big ")]
    dropped = sum(int(line.split()[0]) for line in lines if "log line(s) dropped" in line)
    assert dropped > 0 and len(numbered) + len(big) + dropped == 3_001
    assert all(len(line) == 100 for line in numbered) and all(line == "big " + "y" * 20_000 for line in big)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_credential_written_as_name_colon_value_is_masked_in_any_log_record(fmt: str) -> None:
    # `password: …` has no `@` or `=`: the formatters' quick check must still send it to masking.
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    record = logging.LogRecord(
        "app", logging.WARNING, __file__, 0, "login failed, password: %s", ("Pw9zz",), None,
    )  # fmt: skip
    record.secret_field = "client_secret: Cs9zz"
    line = formatter.format(record)
    assert "Pw9zz" not in line and "password: ***" in line
    if fmt == "json":
        assert "Cs9zz" not in line
