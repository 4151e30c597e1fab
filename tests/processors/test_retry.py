from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from processors.ack import AckProcessor
from processors.exception_catcher import ExceptionCatcherProcessor
from processors.logger import LoggerProcessor
from processors.retry import RepublishFailed, RetryProcessor
from swarrow import Consumer, Layer, MemoryBroker, Message, PermanentError, RetryLater, Stack
from swarrow.outcome import get_outcome, reset_outcome
from swarrow.topology import RETRY_ATTEMPT_HEADER, RetryTopology

pytestmark = pytest.mark.anyio

Q = "jobs"


class Boom(Exception):
    pass


def _declare(broker: MemoryBroker, delays: tuple[float, ...]) -> None:
    for name, args in RetryTopology(Q, delays).queues():
        broker.declare_queue_nowait(name, arguments=args or None)


async def _consume_until(
    broker: MemoryBroker, delays: tuple[float, ...], callback: Any, done: Callable[[], bool], **retry: Any
) -> None:
    """Run a real consumer (catcher → ack → retry, the default order) until `done()`; bounded."""
    provider = broker.provider(Q)
    stack = Stack(
        Layer(ExceptionCatcherProcessor),
        Layer(AckProcessor, provider=provider),
        Layer(RetryProcessor, publisher=broker.publisher(), attempts=len(delays), delays=delays, **retry),
        callback=callback,
    )
    consumer = Consumer(provider, stack)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(3):
            while not done():
                await anyio.sleep(0.005)  # polling a condition, bounded by fail_after
        consumer.control.stop("test")


async def test_fails_twice_then_succeeds_once_after_two_delayed_retries(memory_broker: MemoryBroker) -> None:
    delays = (0.05, 0.1, 0.2)
    _declare(memory_broker, delays)
    memory_broker.publish_nowait(Message(b"job", message_id="m1"), Q)
    calls: list[tuple[float, Any]] = []
    succeeded: list[Message] = []

    async def callback(message: Message) -> None:
        calls.append((time.monotonic(), message.headers.get(RETRY_ATTEMPT_HEADER)))
        if len(calls) <= 2:
            raise Boom(f"fail {len(calls)}")
        succeeded.append(message)

    await _consume_until(memory_broker, delays, callback, lambda: bool(succeeded))
    assert len(calls) == 3
    assert [attempt for _, attempt in calls] == [None, 1, 2]
    assert calls[1][0] - calls[0][0] >= 0.05
    assert calls[2][0] - calls[1][0] >= 0.1
    assert len(succeeded) == 1 and succeeded[0].body == b"job" and succeeded[0].message_id == "m1"
    assert memory_broker.message_count(f"{Q}.dead") == 0
    assert all(memory_broker.message_count(f"{Q}.retry.{k}") == 0 for k in (1, 2, 3))


async def test_always_failing_message_lands_in_dead_letter_queue_with_error_headers(
    memory_broker: MemoryBroker,
) -> None:
    delays = (0.02, 0.04)
    _declare(memory_broker, delays)
    memory_broker.publish_nowait(Message(b"bad"), Q)
    calls: list[Message] = []

    async def callback(message: Message) -> None:
        calls.append(message)
        raise Boom("x" * 5000)

    await _consume_until(
        memory_broker, delays, callback, lambda: memory_broker.message_count(f"{Q}.dead") > 0
    )
    assert len(calls) == len(delays) + 1
    dead = memory_broker.get_nowait(f"{Q}.dead")
    assert dead is not None and dead.body == b"bad"
    assert dead.headers["x-swarrow-error-type"] == f"{__name__}.Boom"
    assert dead.headers["x-swarrow-error-message"] == "x" * 1000
    assert dead.headers["x-swarrow-attempts"] == 3
    assert dead.headers["x-swarrow-original-queue"] == Q
    assert dead.headers["x-swarrow-failed-at"].endswith("+00:00")
    assert memory_broker.message_count(Q) == 0


async def test_permanent_error_goes_straight_to_dead_letter_queue(memory_broker: MemoryBroker) -> None:
    delays = (0.02,)
    _declare(memory_broker, delays)
    memory_broker.publish_nowait(Message(b"p"), Q)
    calls: list[Message] = []

    async def callback(message: Message) -> None:
        calls.append(message)
        raise PermanentError("cannot parse")

    await _consume_until(
        memory_broker, delays, callback, lambda: memory_broker.message_count(f"{Q}.dead") > 0
    )
    assert len(calls) == 1
    dead = memory_broker.get_nowait(f"{Q}.dead")
    assert dead is not None
    assert dead.headers["x-swarrow-error-type"] == "swarrow.errors.PermanentError"
    assert dead.headers["x-swarrow-attempts"] == 1


async def test_retry_later_does_not_spend_an_attempt(memory_broker: MemoryBroker) -> None:
    delays = (0.02, 0.1)
    _declare(memory_broker, delays)
    memory_broker.publish_nowait(Message(b"later"), Q)
    calls: list[tuple[float, Any]] = []
    done: list[bool] = []

    async def callback(message: Message) -> None:
        calls.append((time.monotonic(), message.headers.get(RETRY_ATTEMPT_HEADER)))
        if len(calls) <= 3:  # more postponements than attempts: none of them may count
            raise RetryLater(0.05)
        done.append(True)

    await _consume_until(memory_broker, delays, callback, lambda: bool(done))
    assert len(calls) == 4
    assert [a for _, a in calls] == [None, None, None, None]
    # 0.05 s asked: the smallest delay >= 0.05 is Q.retry.2 (0.1 s)
    assert all(b[0] - a[0] >= 0.1 for a, b in itertools.pairwise(calls))
    assert memory_broker.message_count(f"{Q}.dead") == 0


def test_retry_later_picks_the_nearest_retry_queue() -> None:
    retry = RetryProcessor(_never, publisher=MemoryBroker().publisher(), attempts=3, delays=(1, 5, 30))
    assert retry._queue_for(None) == 1
    assert retry._queue_for(0) == 1
    assert retry._queue_for(1) == 1
    assert retry._queue_for(2) == 2
    assert retry._queue_for(30) == 3
    assert retry._queue_for(3600) == 3


async def _never(message: Message) -> bool:
    raise AssertionError("not called")


def _retry(broker: MemoryBroker, callback: Any, **options: Any) -> RetryProcessor:
    options.setdefault("attempts", 2)
    options.setdefault("delays", (0.5, 1.0))
    _declare(broker, options["delays"])
    return RetryProcessor(callback, publisher=broker.publisher(), **options)


def _raising(exc: Exception) -> Any:
    async def callback(message: Message) -> bool:
        raise exc

    return callback


async def test_give_up_on_types_are_dead_lettered_without_retry(memory_broker: MemoryBroker) -> None:
    retry = _retry(memory_broker, _raising(KeyError("k")), give_up_on=(KeyError,))
    reset_outcome()
    assert await retry(Message(b"", queue=Q)) is True
    assert get_outcome() == "dead_lettered"
    assert memory_broker.message_count(f"{Q}.dead") == 1
    assert memory_broker.message_count(f"{Q}.retry.1") == 0


async def test_only_retry_on_types_are_retried(memory_broker: MemoryBroker) -> None:
    retry = _retry(memory_broker, _raising(ValueError("v")), retry_on=(ConnectionError,))
    await retry(Message(b"", queue=Q))
    assert memory_broker.message_count(f"{Q}.dead") == 1
    retry = RetryProcessor(
        _raising(ConnectionError()), publisher=memory_broker.publisher(), attempts=2, delays=(0.5, 1.0),
        retry_on=(ConnectionError,),
    )  # fmt: skip
    reset_outcome()
    await retry(Message(b"", queue=Q))
    assert get_outcome() == "retried"
    copy = memory_broker.get_nowait(f"{Q}.retry.1")
    assert copy is not None and copy.headers[RETRY_ATTEMPT_HEADER] == 1


async def test_dead_letter_false_reraises_for_the_broker_dlx(memory_broker: MemoryBroker) -> None:
    retry = _retry(memory_broker, _raising(PermanentError("no")), dead_letter=False)
    with pytest.raises(PermanentError):
        await retry(Message(b"", queue=Q))
    assert memory_broker.message_count(f"{Q}.dead") == 0


@pytest.mark.parametrize(
    ("header", "expected_queue"),
    [("2", "retry.1"), (-5, "retry.1"), (True, "retry.1"), (None, "retry.1"), (1, "retry.2"),
     (2, "dead"), (2**62, "dead")],
)  # fmt: skip
async def test_garbage_attempt_headers_are_sanitized(
    memory_broker: MemoryBroker, header: Any, expected_queue: str
) -> None:
    retry = _retry(memory_broker, _raising(Boom()))
    await retry(Message(b"g", headers={RETRY_ATTEMPT_HEADER: header}, queue=Q))
    copy = memory_broker.get_nowait(f"{Q}.{expected_queue}")
    assert copy is not None and copy.body == b"g"
    if expected_queue == "dead":
        assert copy.headers["x-swarrow-attempts"] == 3


async def test_stale_delivery_count_is_not_copied(memory_broker: MemoryBroker) -> None:
    retry = _retry(memory_broker, _raising(Boom()))
    await retry(Message(b"", headers={"x-delivery-count": 4, "keep": "me"}, queue=Q))
    copy = memory_broker.get_nowait(f"{Q}.retry.1")
    assert copy is not None
    assert "x-delivery-count" not in copy.headers and copy.headers["keep"] == "me"


async def test_a_failed_republish_raises_republish_failed_once_the_hold_is_over(
    memory_broker: MemoryBroker,
) -> None:
    retry = _retry(memory_broker, _raising(Boom("first")), republish_hold=0)
    memory_broker.fail_next_publishes(1)
    with pytest.raises(RepublishFailed) as caught:
        await retry(Message(b"", queue=Q))
    assert caught.value.requeue is True
    assert memory_broker.message_count(f"{Q}.retry.1") == 0


async def test_a_publisher_nack_during_retry_loses_nothing(memory_broker: MemoryBroker) -> None:
    delays = (0.02, 0.02)
    _declare(memory_broker, delays)
    memory_broker.publish_nowait(Message(b"keep"), Q)
    memory_broker.fail_next_publishes(1)
    calls: list[Message] = []
    done: list[Message] = []

    async def callback(message: Message) -> None:
        calls.append(message)
        if len(calls) <= 1:
            raise Boom()
        done.append(message)

    await _consume_until(memory_broker, delays, callback, lambda: bool(done))
    # call 1: the retry copy is nacked -> original held, copy published again; call 2: the retry, ok
    assert len(calls) == 2
    assert calls[1].headers.get(RETRY_ATTEMPT_HEADER) == 1 and not calls[1].redelivered
    assert done[0].body == b"keep"
    assert memory_broker.message_count(Q) == 0
    assert memory_broker.message_count(f"{Q}.dead") == 0


@pytest.mark.parametrize(
    "options",
    [{"attempts": 0}, {"attempts": 2, "delays": (1.0,)}, {"attempts": 1, "delays": (-1,)},
     {"retry_on": [Exception]}, {"give_up_on": ("KeyError",)}],
)  # fmt: skip
def test_rejects_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryProcessor(_never, publisher=MemoryBroker().publisher(), **options)


def test_default_delays_are_exponential() -> None:
    retry = RetryProcessor(_never, publisher=MemoryBroker().publisher(), attempts=4)
    assert retry.delays == (1.0, 2.0, 4.0, 8.0)
    assert retry.topology(Q).delays == retry.delays


async def test_a_refused_copy_holds_the_original_and_is_published_again(memory_broker: MemoryBroker) -> None:
    calls: list[Message] = []

    async def callback(message: Message) -> bool:
        calls.append(message)
        raise Boom("fails")

    retry = _retry(memory_broker, callback)
    retry.republish.first_backoff = 0.01
    memory_broker.fail_next_publishes(3)
    reset_outcome()
    assert await retry(Message(b"", message_id="m", queue=Q)) is True
    assert len(calls) == 1  # the callback is not run again while the copy is refused
    assert get_outcome() == "retried"
    assert memory_broker.message_count(f"{Q}.retry.1") == 1
    assert retry.republish.failures == 3 and retry.republish.held == 0
    assert "retry.1" in retry.republish.last_error


async def test_a_held_original_is_left_unsettled_when_cancelled(memory_broker: MemoryBroker) -> None:
    retry = _retry(memory_broker, _raising(Boom("fails")))
    memory_broker.fail_next_publishes(1000)
    with anyio.move_on_after(0.3):
        await retry(Message(b"", queue=Q))
    assert retry.republish.held == 0 and retry.republish.failures >= 1


def test_rejects_a_negative_republish_hold(memory_broker: MemoryBroker) -> None:
    with pytest.raises(ValueError, match="republish_hold"):
        RetryProcessor(_never, publisher=memory_broker.publisher(), republish_hold=-1)


async def test_a_retried_failure_logs_the_message_of_the_exception_cut_and_escaped(
    memory_broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="processors.retry")
    retry = _retry(memory_broker, _raising(Boom("upstream said 503\n" + "x" * 500)))
    await retry(Message(b"", message_id="m-1", queue=Q))
    (record,) = caplog.records
    line = record.getMessage()
    assert "failed on attempt 1 (Boom: upstream said 503\\n" in line
    assert "retry 1 of 2 in 500ms" in line
    assert "\n" not in line and "x" * 200 not in line and "…" in line
    assert record.exc_info is None  # the traceback only at DEBUG
    assert record.__dict__["attempt"] == 1 and record.__dict__["error_type"] == "Boom"


async def test_a_retried_failure_carries_its_traceback_at_debug(
    memory_broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="processors.retry")
    retry = _retry(memory_broker, _raising(Boom("deep")))
    await retry(Message(b"", headers={RETRY_ATTEMPT_HEADER: 1}, queue=Q))
    (record,) = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is Boom
    assert "failed on attempt 2 (Boom: deep); retry 2 of 2 in 1s" in record.getMessage()
    assert "Traceback" in caplog.text


async def test_the_logger_and_retry_records_agree_on_the_attempt(
    memory_broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    retry = _retry(memory_broker, _raising(Boom("x")))
    stack = LoggerProcessor(AcklessOutcome(retry))
    await stack(Message(b"", headers={RETRY_ATTEMPT_HEADER: 1}, message_id="m-2", queue=Q))
    attempts = {r.name: r.__dict__["attempt"] for r in caplog.records}
    assert attempts == {"processors.retry": 2, "processors.logger": 2}


class AcklessOutcome:
    """Passes through: the retry layer records the outcome the logger reads."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, message: Message) -> bool:
        return bool(await self.inner(message))


async def test_refused_copies_are_counted_in_metrics_and_make_readyz_fail_while_held() -> None:
    from prometheus_client import CollectorRegistry

    from processors.metrics import MetricsProcessor

    broker = MemoryBroker()
    broker.declare_queue_nowait(Q)  # no Q.retry.1 yet: every retry copy is unroutable
    broker.publish_nowait(Message(b"", message_id="m"), Q)
    provider = broker.provider(Q)
    registry = CollectorRegistry()
    metrics: list[MetricsProcessor] = []
    calls: list[Message] = []

    def metrics_layer(inner: Any) -> MetricsProcessor:
        metrics.append(MetricsProcessor(inner, registry=registry, provider=provider, heartbeat_interval=0.05))
        return metrics[0]

    async def callback(message: Message) -> None:
        calls.append(message)
        if RETRY_ATTEMPT_HEADER not in message.headers:
            raise Boom("first call fails")

    stack = Stack(
        metrics_layer,
        Layer(AckProcessor, provider=provider),
        Layer(RetryProcessor, publisher=broker.publisher(), attempts=1, delays=(0.01,)),
        callback=callback,
    )
    consumer = Consumer(provider, stack)

    def refused() -> float:
        return registry.get_sample_value("swarrow_republish_failures_total", {"queue": Q}) or 0.0

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(5):
            while refused() < 2:
                await anyio.sleep(0.01)  # polling a condition, bounded by fail_after
        ready, why = metrics[0].health.readiness()
        assert not ready and "held" in why and f"{Q}.retry.1" in why
        _declare(broker, (0.01,))  # the topology comes back: the held copy goes through
        with anyio.fail_after(5):
            while len(calls) < 2:
                await anyio.sleep(0.01)
        assert metrics[0].health.readiness() == (True, "consuming")
        consumer.control.stop("test")
    assert len(calls) == 2
