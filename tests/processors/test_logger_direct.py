"""The logger layer's direct lines (`swarrow.logs.DirectLines`): the record path's bytes, or that path."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import processors.logger as logger_module
import swarrow.log_fast as log_fast
import swarrow.logs as logs
from processors.logger import LoggerProcessor
from swarrow.logs import BatchingStreamHandler, configure_logging
from swarrow.message import Message
from swarrow.outcome import record_outcome

LOGGER = logging.getLogger("processors.logger")
NOW = 1_795_000_000.25  # a fixed clock for both paths: 2026-11-18, 250 ms


@pytest.fixture
def quiet_root() -> Iterator[None]:
    """Root with no handler but the ones a test configures; everything restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, LOGGER.filters[:], LOGGER.propagate, LOGGER.handlers[:])
    root.handlers.clear()
    yield
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    LOGGER.filters[:], LOGGER.propagate, LOGGER.handlers[:] = saved[2], saved[3], saved[4]


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_fast, "_now", lambda: NOW)
    monkeypatch.setattr(logger_module, "perf_counter", lambda: 7.0)


@pytest.fixture
def handled(monkeypatch: pytest.MonkeyPatch) -> list[logging.LogRecord]:
    """The records the logger layer made (the stdlib's way), which a direct line skips.

    Spied on the record template, not on `logging`: a replaced `Logger` method turns the direct
    lines off (see the monitoring SDK test).
    """
    seen: list[logging.LogRecord] = []
    original = log_fast.RecordTemplate.make

    def spy(self: log_fast.RecordTemplate, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = original(self, *args, **kwargs)
        seen.append(record)
        return record

    monkeypatch.setattr(log_fast.RecordTemplate, "make", spy)
    return seen


async def _acked(message: Message, /) -> bool:
    record_outcome("acked")
    return True


def _log_one(message: Message, **options: Any) -> None:
    anyio.run(LoggerProcessor(_acked, **options), message)


def _only_swarrow_handlers() -> None:
    """Drop the handlers pytest's logging plugin adds to root for each test phase (after the fixtures)."""
    root = logging.getLogger()
    root.handlers[:] = [handler for handler in root.handlers if getattr(handler, "_swarrow", False)]


def _lines(stream: io.StringIO, handler: logging.Handler) -> list[str]:
    handler.flush()
    return stream.getvalue().splitlines()


class _PassThrough(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return True


MESSAGES = {
    "plain": Message(
        b"x", message_id="m-1", queue="jobs", routing_key="jobs.k", headers={"x-swarrow-attempt": 2}
    ),
    "no id": Message(b"x", queue="jobs", routing_key="", redelivered=True),
    "url in the id": Message(b"x", message_id="amqp://u:s3cret@h/?password=p", queue="q", routing_key="r"),
    "forged line": Message(
        b"x", message_id="m\n2026-01-01 INFO x: forged\u2028\u202e", queue="q", routing_key="r\rk"
    ),
    "unicode": Message(b"x", message_id="caf\u00e9-\u4e2d", queue="q\u00e9", routing_key="\u00e9"),
}


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("worker", [None, 3])
@pytest.mark.parametrize("log_body", [False, True])
@pytest.mark.parametrize("name", list(MESSAGES))
def test_a_direct_line_is_the_line_the_record_path_writes(
    fmt: str,
    worker: int | None,
    log_body: bool,
    name: str,
    quiet_root: None,
    fixed_clock: None,
    handled: list[logging.LogRecord],
) -> None:
    message = MESSAGES[name]
    direct_stream = io.StringIO()
    handler = configure_logging("INFO", fmt, direct_stream, worker=worker)  # type: ignore[arg-type]
    _only_swarrow_handlers()
    _log_twice(message, log_body=log_body)
    direct = _lines(direct_stream, handler)
    assert handled == []  # no record was made: the lines went straight to the handler

    LOGGER.addFilter(_PassThrough())  # anything that could see a record turns the direct lines off
    record_stream = io.StringIO()
    handler = configure_logging("INFO", fmt, record_stream, worker=worker)  # type: ignore[arg-type]
    _only_swarrow_handlers()
    _log_twice(message, log_body=log_body)
    assert len(handled) == 2
    # The second: the record path's first record takes the real time (it is made by makeRecord).
    assert direct[1] == _lines(record_stream, handler)[1]
    assert len(direct) == 2 and direct[0] == direct[1]
    if fmt == "text":  # JSON masks its "message"; the message_id field is kept as the producer sent it
        assert all("s3cret" not in line for line in direct)


def _log_twice(message: Message, **options: Any) -> None:
    processor = LoggerProcessor(_acked, **options)
    anyio.run(processor, message)
    anyio.run(processor, message)


def _fallback_cases() -> dict[str, Any]:
    def second_handler(stream: io.StringIO) -> None:
        logging.getLogger().addHandler(logging.StreamHandler(io.StringIO()))

    def logger_filter(stream: io.StringIO) -> None:
        LOGGER.addFilter(_PassThrough())

    def handler_filter(stream: io.StringIO) -> None:
        logging.getLogger().handlers[0].addFilter(_PassThrough())

    def stdlib_handler_not_propagating(stream: io.StringIO) -> None:
        LOGGER.addHandler(logging.StreamHandler(stream))
        LOGGER.propagate = False  # root's swarrow handler is not reached

    def plain_formatter(stream: io.StringIO) -> None:
        logging.getLogger().handlers[0].setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    return {
        "a second handler": second_handler,
        "a logger filter": logger_filter,
        "a handler filter": handler_filter,
        "a stdlib formatter": plain_formatter,
        "a stdlib handler on the logger, not propagating": stdlib_handler_not_propagating,
    }


@pytest.mark.parametrize("case", list(_fallback_cases()))
def test_the_record_path_whenever_something_else_could_see_the_record(
    case: str, quiet_root: None, handled: list[logging.LogRecord]
) -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", "text", stream)
    _only_swarrow_handlers()
    _fallback_cases()[case](stream)
    _log_one(MESSAGES["plain"])
    assert len(handled) == 1
    (line,) = _lines(stream, handler)
    assert "message m-1 from jobs acked" in line


def test_a_custom_record_factory_gets_its_records(quiet_root: None, handled: list[logging.LogRecord]) -> None:
    class Tagged(logging.LogRecord):
        pass

    stream = io.StringIO()
    configure_logging("INFO", "text", stream)
    _only_swarrow_handlers()
    previous = logging.getLogRecordFactory()
    logging.setLogRecordFactory(Tagged)
    try:
        _log_one(MESSAGES["plain"])
    finally:
        logging.setLogRecordFactory(previous)
    assert [type(record) for record in handled] == [Tagged]


def test_a_handler_added_later_sees_the_next_message(
    quiet_root: None, handled: list[logging.LogRecord]
) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "text", stream)
    _only_swarrow_handlers()
    processor = LoggerProcessor(_acked)
    anyio.run(processor, MESSAGES["plain"])
    assert handled == []
    capture = io.StringIO()
    logging.getLogger().addHandler(logging.StreamHandler(capture))
    anyio.run(processor, MESSAGES["no id"])
    assert len(handled) == 1 and "from jobs acked" in capture.getvalue()


def test_a_logger_whose_class_is_swapped_gets_the_next_message_at_once(quiet_root: None) -> None:
    # A monitoring SDK may swap a live logger's class for a subclass that handles records itself:
    # the very next line must go the record's way, not a second later (attack, session 9).
    stream = io.StringIO()
    configure_logging("INFO", "text", stream)
    _only_swarrow_handlers()
    processor = LoggerProcessor(_acked)
    anyio.run(processor, MESSAGES["plain"])  # direct, and the handler verified for the next second
    seen: list[str] = []

    class Watching(logging.Logger):
        def handle(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    LOGGER.__class__ = Watching
    try:
        anyio.run(processor, MESSAGES["no id"])
    finally:
        LOGGER.__class__ = logging.Logger
    assert len(seen) == 1 and "from jobs acked" in seen[0]


def test_nothing_is_written_below_the_level_or_when_disabled(quiet_root: None) -> None:
    stream = io.StringIO()
    handler = configure_logging("WARNING", "text", stream)
    _only_swarrow_handlers()
    _log_one(MESSAGES["plain"])
    logging.getLogger().setLevel(logging.INFO)
    logging.disable(logging.INFO)
    try:
        _log_one(MESSAGES["plain"])
    finally:
        logging.disable(logging.NOTSET)
    assert _lines(stream, handler) == []


def test_a_warning_level_line_is_flushed_at_once(quiet_root: None) -> None:
    flushed: list[str] = []

    class Stream(io.StringIO):
        def flush(self) -> None:
            flushed.append(self.getvalue())

    stream = Stream()
    configure_logging("INFO", "text", stream)
    _only_swarrow_handlers()
    _log_one(MESSAGES["plain"], level=logging.WARNING)
    assert flushed and "WARNING processors.logger: message m-1" in flushed[-1]


def test_a_stream_that_fails_reaches_the_handlers_error_handling(
    quiet_root: None, handled: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("disk full")

    handler = configure_logging("INFO", "text", Broken())
    _only_swarrow_handlers()
    errors: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", errors.append)
    _log_one(MESSAGES["plain"])
    assert len(handled) == 1 and errors == handled  # the direct write failed: the record path reported it


def test_a_swarrow_handler_on_the_logger_itself_gets_the_direct_line_and_root_none(
    quiet_root: None, handled: list[logging.LogRecord]
) -> None:
    root_stream, own_stream = io.StringIO(), io.StringIO()
    root_handler = configure_logging("INFO", "text", root_stream)
    _only_swarrow_handlers()
    own = BatchingStreamHandler(own_stream)
    own.setFormatter(logs.JsonFormatter())
    LOGGER.addHandler(own)
    LOGGER.propagate = False
    try:
        _log_one(MESSAGES["plain"])
    finally:
        LOGGER.removeHandler(own)
        own.close()
    assert handled == []
    assert '"outcome": "acked"' in own_stream.getvalue() and _lines(root_stream, root_handler) == []


def test_a_monitoring_sdk_wrapping_logger_methods_sees_every_line(
    quiet_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sentry's logging integration replaces Logger.callHandlers on the class to collect breadcrumbs.
    stream = io.StringIO()
    handler = configure_logging("INFO", "text", stream)
    _only_swarrow_handlers()
    processor = LoggerProcessor(_acked)
    anyio.run(processor, MESSAGES["plain"])  # direct, and the handler now verified for a second
    seen: list[str] = []
    original = logging.Logger.callHandlers

    def breadcrumbs(self: logging.Logger, record: logging.LogRecord) -> None:
        seen.append(record.getMessage())
        original(self, record)

    monkeypatch.setattr(logging.Logger, "callHandlers", breadcrumbs)
    monkeypatch.setattr(log_fast, "_monotonic", lambda: 10.0**9)  # a second later: looked for again
    anyio.run(processor, MESSAGES["no id"])
    assert len(seen) == 1 and seen[0].startswith("message None from jobs acked in")
    assert len(_lines(stream, handler)) == 2


@pytest.mark.parametrize("where", ["emit", "format"])
def test_a_hook_set_on_the_handler_or_its_formatter_is_not_bypassed(
    where: str, quiet_root: None, handled: list[logging.LogRecord]
) -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", "json", stream)
    _only_swarrow_handlers()
    owner: Any = handler if where == "emit" else handler.formatter
    original = getattr(owner, where)
    hooked: list[str] = []

    def redact(record: logging.LogRecord) -> Any:
        hooked.append(record.getMessage())
        return original(record)

    setattr(owner, where, redact)  # on the object: a new handler is looked at before its first line
    _log_one(MESSAGES["plain"])
    assert len(hooked) == 1 and len(handled) == 1
    assert '"outcome": "acked"' in _lines(stream, handler)[0]


def test_json_fields_carrying_a_url_password_are_masked(quiet_root: None) -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", "json", stream)
    _only_swarrow_handlers()
    message = Message(b"see amqp://u:body-pw@h/", message_id="amqp://u:id-pw@h/", queue="q",
                      routing_key="https://h/?token=rk-tok")  # fmt: skip
    _log_one(message, log_body=True)
    (line,) = _lines(stream, handler)
    for secret in ("body-pw", "id-pw", "rk-tok"):
        assert secret not in line
    assert '"message_id": "amqp://u:***@h/"' in line


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_credentials_without_a_url_query_are_masked_in_the_per_message_line(
    quiet_root: None, fmt: str
) -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", fmt, stream)
    _only_swarrow_handlers()
    message = Message(b"x", message_id="job&token=S3cretTok3", queue="q",
                      routing_key="amqp://u:S3c\nret6@h/")  # fmt: skip
    _log_one(message)
    (line,) = _lines(stream, handler)
    assert "S3cretTok3" not in line and "ret6" not in line
