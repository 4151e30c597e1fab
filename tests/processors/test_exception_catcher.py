from __future__ import annotations

import logging

import anyio
import pytest

from processors.exception_catcher import ExceptionCatcherProcessor
from swarrow import Message

pytestmark = pytest.mark.anyio


async def _fail(message: Message) -> bool:
    raise ValueError("bad payload")


async def test_logs_the_exception_and_keeps_the_worker_alive(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="processors.exception_catcher")
    result = await ExceptionCatcherProcessor(_fail)(Message(b"", message_id="m-1", queue="jobs"))
    assert result is True
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    assert record.__dict__["queue"] == "jobs"
    assert record.__dict__["message_id"] == "m-1"
    assert record.__dict__["error_type"] == "ValueError"


async def test_passes_the_inner_result_through() -> None:
    async def stop(message: Message) -> bool:
        return False

    assert await ExceptionCatcherProcessor(stop)(Message()) is False


async def test_uses_the_given_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="mine")
    await ExceptionCatcherProcessor(_fail, logger=logging.getLogger("mine"))(Message())
    assert [r.name for r in caplog.records] == ["mine"]


async def test_does_not_catch_cancellation() -> None:
    started = anyio.Event()
    finished: list[bool] = []

    async def slow(message: Message) -> bool:
        started.set()
        await anyio.sleep(10)
        return True

    catcher = ExceptionCatcherProcessor(slow)

    async def run() -> None:
        finished.append(await catcher(Message()))

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await started.wait()
            tg.cancel_scope.cancel()
    assert finished == []  # cancelled, not swallowed into a True


def test_rejects_a_logger_that_is_not_a_logger() -> None:
    with pytest.raises(ValueError, match="logger"):
        ExceptionCatcherProcessor(_fail, logger="root")  # type: ignore[arg-type]
