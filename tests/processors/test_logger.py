from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from processors.logger import LoggerProcessor
from swarrow import Message
from swarrow.logs import JsonFormatter
from swarrow.outcome import record_outcome

pytestmark = pytest.mark.anyio

LOGGER = "processors.logger"


def _message(**fields: Any) -> Message:
    defaults: dict[str, Any] = {
        "body": b"secret-card-number",
        "message_id": "m-7",
        "queue": "jobs",
        "routing_key": "jobs",
        "redelivered": True,
        "headers": {"x-swarrow-attempt": 2},
    }
    return Message(**{**defaults, **fields})


async def _acked(message: Message) -> bool:
    record_outcome("acked")
    return True


async def test_one_record_with_the_structured_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert await LoggerProcessor(_acked)(_message()) is True
    (record,) = caplog.records
    fields = record.__dict__
    assert record.levelno == logging.INFO
    assert fields["queue"] == "jobs"
    assert fields["message_id"] == "m-7"
    assert fields["routing_key"] == "jobs"
    assert fields["redelivered"] is True
    assert fields["attempt"] == 3  # retry 2's copy: the third attempt
    assert fields["outcome"] == "acked"
    assert isinstance(fields["duration"], float) and 0 <= fields["duration"] < 1
    assert "\n" not in record.getMessage() and "m-7" in record.getMessage()


async def test_body_is_not_logged_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    await LoggerProcessor(_acked)(_message())
    assert "secret" not in caplog.text
    assert "body" not in caplog.records[0].__dict__


async def test_body_logged_on_request_truncated_and_decoded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    await LoggerProcessor(_acked, log_body=True, max_body=8)(_message(body=b"\xffabcdefghijkl"))
    body = caplog.records[0].__dict__["body"]
    assert body == "\ufffdabcdefg"
    assert "abcdefg" in caplog.records[0].getMessage()


async def test_processed_when_no_layer_recorded_an_outcome(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def plain(message: Message) -> bool:
        return False

    assert await LoggerProcessor(plain)(_message()) is False
    assert caplog.records[0].__dict__["outcome"] == "processed"


async def test_failed_and_reraised_when_an_exception_passes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def boom(message: Message) -> bool:
        raise KeyError("k")

    with pytest.raises(KeyError):
        await LoggerProcessor(boom)(_message())
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.__dict__["outcome"] == "failed"
    assert record.__dict__["error_type"] == "KeyError"


@pytest.mark.parametrize("garbage", ["3", -1, 10**40, 2.5, True, None, [1]])
async def test_garbage_attempt_header_counts_as_the_first_attempt(
    caplog: pytest.LogCaptureFixture, garbage: Any
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    await LoggerProcessor(_acked)(_message(headers={"x-swarrow-attempt": garbage}))
    assert caplog.records[0].__dict__["attempt"] == 1


async def test_first_delivery_is_attempt_one(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    await LoggerProcessor(_acked)(_message(headers={}))
    assert caplog.records[0].__dict__["attempt"] == 1
    assert "(attempt 1)" in caplog.records[0].getMessage()


async def test_nothing_logged_below_the_logger_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    await LoggerProcessor(_acked, level=logging.INFO)(_message())
    assert caplog.records == []


async def test_json_formatter_output_has_the_fields() -> None:
    logger = logging.getLogger("test.logger.json")
    logger.propagate = False
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        await LoggerProcessor(_acked, logger=logger)(_message())
    finally:
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["queue"] == "jobs" and entry["message_id"] == "m-7" and entry["outcome"] == "acked"
    assert entry["attempt"] == 3 and entry["redelivered"] is True and entry["level"] == "INFO"
    assert "secret" not in stream.getvalue()


@pytest.mark.parametrize("options", [{"level": -1}, {"max_body": -5}, {"logger": "x"}])
def test_rejects_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LoggerProcessor(_acked, **options)
