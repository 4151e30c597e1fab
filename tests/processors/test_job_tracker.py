"""JobTrackerProcessor: states from the settling layers, one id per job, tracking that never blocks acks."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from processors.ack import AckProcessor
from processors.defaults import default_stack
from processors.job_tracker import JobTrackerProcessor
from swarrow import ConfigurationError, Consumer, Layer, MemoryBroker, Message, PermanentError, Stack
from swarrow.jobs import JOB_ID_HEADER, JobStore
from swarrow.topology import ERROR_TYPE_HEADER, RetryTopology

pytestmark = pytest.mark.anyio

Q = "tracked"
BOOM = "test_job_tracker.Boom"
DELAYS = (0.01, 0.01, 0.01)


class Boom(Exception):
    pass


def _declare(broker: MemoryBroker) -> None:
    for name, args in RetryTopology(Q, DELAYS).queues():
        broker.declare_queue_nowait(name, arguments=args or None)


async def _run(
    broker: MemoryBroker,
    url: str,
    callback: Callable[[Message], Awaitable[None]],
    done: Callable[[], bool],
    *,
    registry: CollectorRegistry | None = None,
    **options: Any,
) -> Consumer:
    """The default stack with tracking, consumed until `done()` and nothing is in flight (bounded)."""
    provider = broker.provider(Q)
    layers = default_stack(
        provider=provider,
        publisher=broker.publisher(),
        signals=False,
        log=False,
        retry_attempts=len(DELAYS),
        retry_delays=DELAYS,
        registry=registry or CollectorRegistry(),
        **options,
    )
    if "track_jobs" not in options:
        layers.insert(0, Layer(JobTrackerProcessor, store=url, registry=registry or CollectorRegistry()))
    consumer = Consumer(provider, Stack(*layers, callback=callback), concurrency=4)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(10):
            while not (done() and consumer.in_flight == 0):
                await anyio.sleep(0.005)  # polling a condition, bounded by fail_after
        consumer.control.stop("test")
    return consumer


async def test_records_each_job_final_state_attempts_and_last_error(
    memory_broker: MemoryBroker, sqlite_url: str
) -> None:
    _declare(memory_broker)
    for name in ("ok", "flaky", "poison", "permanent"):
        memory_broker.publish_nowait(Message(name.encode(), message_id=name), Q)
    calls: dict[str, int] = {}

    async def callback(message: Message) -> None:
        name = message.body.decode()
        calls[name] = calls.get(name, 0) + 1
        if name == "flaky" and calls[name] == 1:
            raise Boom("first time only")
        if name == "poison":
            raise Boom(f"always ({calls[name]})")
        if name == "permanent":
            raise PermanentError("no point retrying")

    await _run(memory_broker, sqlite_url, callback, lambda: sum(calls.values()) == 1 + 2 + 4 + 1)
    async with JobStore.open(sqlite_url) as store:
        jobs = await store.status(["ok", "flaky", "poison", "permanent"])
    summary = {i: (j.state, j.attempts, j.error_type) for i, j in jobs.items() if j}
    assert summary == {
        "ok": ("succeeded", 1, None),
        "flaky": ("succeeded", 2, BOOM),  # the last error sticks
        "poison": ("dead_lettered", 4, BOOM),
        "permanent": ("dead_lettered", 1, "swarrow.errors.PermanentError"),
    }
    poison = jobs["poison"]
    assert poison is not None and poison.error_message == "always (4)"
    assert poison.queue == Q and poison.pid > 0 and poison.host
    assert poison.rss_before and poison.rss_after and poison.duration is not None and poison.finished


async def test_a_message_without_an_id_keeps_one_generated_id_across_retries_and_dead_letter(
    memory_broker: MemoryBroker, sqlite_url: str
) -> None:
    _declare(memory_broker)
    memory_broker.publish_nowait(Message(b"anonymous"), Q)
    seen: list[Any] = []

    async def callback(message: Message) -> None:
        seen.append(message.headers.get(JOB_ID_HEADER))
        raise Boom("never works")

    await _run(memory_broker, sqlite_url, callback, lambda: len(seen) == 4)
    job_id = seen[0]
    assert isinstance(job_id, str) and len(job_id) == 32
    assert seen == [job_id] * 4  # the header rode on every retry copy
    dead = memory_broker.get_nowait(f"{Q}.dead")
    assert dead is not None and dead.headers[JOB_ID_HEADER] == job_id
    assert dead.message_id  # the publisher's client gives an id-less copy one, on RabbitMQ (aiormq) as here
    assert dead.headers[ERROR_TYPE_HEADER].endswith("Boom")
    async with JobStore.open(sqlite_url) as store:
        (job,) = await store.list()
    assert (job.id, job.state, job.attempts) == (job_id, "dead_lettered", 4)


async def test_rejected_is_failed_and_requeued_is_retrying(
    memory_broker: MemoryBroker, sqlite_url: str
) -> None:
    memory_broker.declare_queue_nowait(Q)
    memory_broker.publish_nowait(Message(b"x", message_id="rejected"), Q)
    calls: list[str] = []

    async def fail(message: Message) -> None:
        calls.append(message.message_id or "")
        raise Boom("nope")

    await _run(memory_broker, sqlite_url, fail, lambda: len(calls) == 1, retry=False)
    memory_broker.publish_nowait(Message(b"x", message_id="requeued"), Q)
    # requeue_on_error puts it back: stop after its first call, before it loops forever
    provider = memory_broker.provider(Q)
    stack = Stack(
        Layer(JobTrackerProcessor, store=sqlite_url, registry=CollectorRegistry()),
        Layer(AckProcessor, provider=provider, requeue_on_error=True),
        callback=fail,
    )
    consumer = Consumer(provider, stack)
    with pytest.raises(Boom):  # no exception catcher: the failure stops the consumer after the reject
        await consumer.run()
    async with JobStore.open(sqlite_url) as store:
        jobs = await store.status(["rejected", "requeued"])
    assert {i: (j.state, j.error_type) for i, j in jobs.items() if j} == {
        "rejected": ("failed", BOOM),
        "requeued": ("retrying", BOOM),
    }


async def test_an_unreachable_store_drops_and_counts_records_while_every_message_is_acked(
    memory_broker: MemoryBroker, tmp_path: Path
) -> None:
    memory_broker.declare_queue_nowait(Q)
    url = f"sqlite:///{tmp_path}/not-yet/jobs.db"  # the directory appears later: the store "comes back"
    registry = CollectorRegistry()
    for n in range(300):
        memory_broker.publish_nowait(Message(b"x", message_id=f"m{n}"), Q)
    done: list[str] = []

    async def callback(message: Message) -> None:
        done.append(message.message_id or "")

    provider = memory_broker.provider(Q)
    tracker = Layer(JobTrackerProcessor, store=url, registry=registry, buffer_size=100, flush_interval=0.01)
    stack = Stack(tracker, Layer(AckProcessor, provider=provider), callback=callback)
    consumer = Consumer(provider, stack, concurrency=4)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(10):
            while len(done) < 300:
                await anyio.sleep(0.005)
            (tmp_path / "not-yet").mkdir()  # the store is reachable from now on
            while not registry.get_sample_value("swarrow_job_records_written_total", {"queue": Q}):
                await anyio.sleep(0.005)
            for n in range(300, 310):
                memory_broker.publish_nowait(Message(b"x", message_id=f"m{n}"), Q)
            while len(done) < 310:
                await anyio.sleep(0.005)
        consumer.control.stop("test")
    assert await memory_broker.inspect_queue(Q) is not None
    assert memory_broker.message_count(Q) == 0 and provider.unsettled_count == 0  # every message acked
    dropped = registry.get_sample_value("swarrow_job_records_dropped_total", {"queue": Q})
    assert dropped is not None and dropped >= 600 - 2 * 100  # at most the buffer survived the outage
    async with JobStore.open(url) as store:
        late = await store.status([f"m{n}" for n in range(300, 310)])
    assert all(job is not None and job.state == "succeeded" for job in late.values())  # tracking resumed
    written = registry.get_sample_value("swarrow_job_records_written_total", {"queue": Q})
    assert written is not None and written >= 10


async def test_a_locked_database_fills_the_buffer_and_messages_still_flow(
    memory_broker: MemoryBroker, sqlite_url: str, tmp_path: Path
) -> None:
    async with JobStore.open(sqlite_url):
        pass  # schema in place
    memory_broker.declare_queue_nowait(Q)
    for n in range(500):
        memory_broker.publish_nowait(Message(b"x", message_id=f"m{n}"), Q)
    done: list[str] = []

    async def callback(message: Message) -> None:
        done.append(message.message_id or "")

    blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # every write now waits on SQLite's busy timeout
    registry = CollectorRegistry()
    provider = memory_broker.provider(Q)
    tracker = Layer(
        JobTrackerProcessor, store=sqlite_url, registry=registry, buffer_size=50, flush_interval=0.01,
        close_timeout=0.5,
    )  # fmt: skip
    stack = Stack(tracker, Layer(AckProcessor, provider=provider), callback=callback)
    consumer = Consumer(provider, stack, concurrency=2)
    try:
        with anyio.fail_after(5):  # 500 messages while the store is stuck: no message waits for it
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer.run)
                while len(done) < 500:
                    await anyio.sleep(0.005)
                consumer.control.stop("test")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert provider.unsettled_count == 0 and memory_broker.message_count(Q) == 0
    dropped = registry.get_sample_value("swarrow_job_records_dropped_total", {"queue": Q})
    assert dropped is not None and dropped >= 1000 - 2 * 50 - 2 * 5_000  # bounded buffer: most were dropped
    assert dropped >= 500


async def test_the_lifespan_writes_what_is_left_before_the_consumer_returns(
    memory_broker: MemoryBroker, sqlite_url: str
) -> None:
    memory_broker.declare_queue_nowait(Q)
    for n in range(50):
        memory_broker.publish_nowait(Message(b"x", message_id=f"m{n}"), Q)
    done: list[str] = []

    async def callback(message: Message) -> None:
        done.append(message.message_id or "")

    # A flush interval longer than the test: only the lifespan's last flush can have written these.
    provider = memory_broker.provider(Q)
    tracker = Layer(JobTrackerProcessor, store=sqlite_url, registry=CollectorRegistry(), flush_interval=60)
    consumer = Consumer(provider, Stack(tracker, Layer(AckProcessor, provider=provider), callback=callback))
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(5):
            while len(done) < 50:
                await anyio.sleep(0.005)
        consumer.control.stop("test")
    async with JobStore.open(sqlite_url) as store:
        assert await store.unfinished([f"m{n}" for n in range(50)]) == []


async def test_default_stack_puts_the_tracker_between_logger_and_exception_catcher(
    memory_broker: MemoryBroker,
) -> None:
    from processors.exception_catcher import ExceptionCatcherProcessor
    from processors.logger import LoggerProcessor

    provider = memory_broker.provider(Q)
    layers = default_stack(provider=provider, retry=False, track_jobs="sqlite:///jobs.db")
    factories = [layer.factory for layer in layers]
    index = factories.index(JobTrackerProcessor)
    assert factories[index - 1] is LoggerProcessor and factories[index + 1] is ExceptionCatcherProcessor
    assert JobTrackerProcessor not in [
        layer.factory for layer in default_stack(provider=provider, retry=False)
    ]


def test_bad_options_are_errors_naming_them(memory_broker: MemoryBroker) -> None:
    async def callback(message: Message) -> None:
        pass

    with pytest.raises(ValueError, match="buffer_size"):
        JobTrackerProcessor(callback, store="sqlite:///jobs.db", buffer_size=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flush_interval"):
        JobTrackerProcessor(callback, store="sqlite:///jobs.db", flush_interval=-1)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"redis://u:\*\*\*@h"):
        JobTrackerProcessor(callback, store="redis://u:pw@h/0")  # type: ignore[arg-type]


async def test_a_retry_by_a_php_swarrot_worker_counts_as_an_attempt(
    memory_broker: MemoryBroker, sqlite_url: str
) -> None:
    _declare(memory_broker)
    # A PHP worker sharing the queue (swarrot's RetryProcessor) retried it twice: only its own header.
    memory_broker.publish_nowait(Message(b"x", message_id="php", headers={"swarrot_retry_attempts": 2}), Q)
    done: list[str] = []

    async def callback(message: Message) -> None:
        done.append(message.message_id or "")

    await _run(memory_broker, sqlite_url, callback, lambda: len(done) == 1)
    async with JobStore.open(sqlite_url) as store:
        job = (await store.status(["php"]))["php"]
    assert job is not None and (job.state, job.attempts) == ("succeeded", 3)
