from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterator

import pytest

from swarrow.logs import (
    BatchingStreamHandler,
    JsonFormatter,
    RecordTemplate,
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
    assert not handler._flusher.is_alive() or handler._stopped.is_set()


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


def test_text_formatter_renders_tracebacks_like_the_standard_one() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 0, "failed %s", ("job",), sys.exc_info())
    standard = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    rendered = TextFormatter().format(record)
    assert rendered == standard.format(record)
    assert "ValueError: boom" in rendered


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
