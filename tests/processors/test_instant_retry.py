from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from processors.instant_retry import InstantRetryProcessor
from swarrow import Message, PermanentError, RetryLater, StopConsumer

pytestmark = pytest.mark.anyio


def _flaky(failures: int, exc: Exception) -> tuple[list[float], Any]:
    calls: list[float] = []

    async def callback(message: Message) -> bool:
        calls.append(time.monotonic())
        if len(calls) <= failures:
            raise exc
        return True

    return calls, callback


async def test_succeeds_after_transient_failures_sleeping_between_calls() -> None:
    calls, callback = _flaky(2, ConnectionError("reset"))
    assert await InstantRetryProcessor(callback, attempts=3, delay=0.03)(Message()) is True
    assert len(calls) == 3
    assert all(b - a >= 0.03 for a, b in itertools.pairwise(calls))


async def test_reraises_the_last_failure_after_all_attempts_without_a_final_sleep() -> None:
    calls, callback = _flaky(10, ConnectionError("down"))
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="down"):
        await InstantRetryProcessor(callback, attempts=3, delay=0.05)(Message())
    elapsed = time.monotonic() - start
    assert len(calls) == 3
    assert 0.1 <= elapsed < 0.15  # two sleeps, not three


@pytest.mark.parametrize("exc", [RetryLater(1.0), PermanentError("no"), StopConsumer()])
async def test_control_flow_exceptions_are_never_retried(exc: Exception) -> None:
    calls, callback = _flaky(10, exc)
    with pytest.raises(type(exc)):
        await InstantRetryProcessor(callback, attempts=5, delay=0)(Message())
    assert len(calls) == 1


async def test_only_retry_on_types_are_retried() -> None:
    calls, callback = _flaky(10, ValueError("bug"))
    with pytest.raises(ValueError):
        await InstantRetryProcessor(callback, attempts=5, delay=0, retry_on=(ConnectionError,))(Message())
    assert len(calls) == 1


async def test_attempts_one_calls_once() -> None:
    calls, callback = _flaky(1, ConnectionError())
    with pytest.raises(ConnectionError):
        await InstantRetryProcessor(callback, attempts=1)(Message())
    assert len(calls) == 1


@pytest.mark.parametrize(
    "options", [{"attempts": 0}, {"attempts": 2.5}, {"delay": -1}, {"retry_on": ValueError}]
)
async def test_rejects_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        InstantRetryProcessor(_flaky(0, ValueError())[1], **options)
