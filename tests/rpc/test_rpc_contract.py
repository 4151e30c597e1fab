"""Request and reply, one contract for both brokers: the worker answers, the client waits for it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from processors.ack import AckProcessor
from processors.reply import ReplyProcessor
from processors.retry import RetryProcessor
from swarrow import Broker, Consumer, Layer, MemoryBroker, Message, PermanentError, PublishError, Stack
from swarrow.errors import RemoteError, RpcTimeout
from swarrow.outcome import EXPIRED, get_outcome
from swarrow.rpc import DEADLINE_HEADER, ReplyBody, RpcClient
from swarrow.topology import RetryTopology

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serving(
    broker: Broker,
    queue: str,
    callback: Callable[[Message], Awaitable[Any]],
    *,
    concurrency: int = 10,
    attempts: int = 1,
) -> AsyncIterator[Consumer]:
    """A worker on `queue`: reply → ack → retry (short delays) → callback, until the block ends."""
    publisher = broker.publisher()
    # The real retry topology, so failures take the real paths.
    await RetryTopology(queue, [0.05] * attempts).declare(broker)
    provider = broker.provider(queue, prefetch=100)
    stack = Stack(
        Layer(ReplyProcessor, publisher=publisher, provider=provider),
        Layer(AckProcessor, provider=provider),
        Layer(RetryProcessor, publisher=publisher, attempts=attempts, delays=[0.05] * attempts),
        callback=callback,
    )
    consumer = Consumer(provider, stack, concurrency=concurrency, grace_period=2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        try:
            yield consumer
        finally:
            consumer.control.stop("test", "done")
    await publisher.close()


async def test_many_concurrent_calls_each_get_their_own_answer(broker: Broker, queue_name: str) -> None:
    async def double(message: Message) -> dict[str, int]:
        await anyio.sleep(0.001)
        return {"n": int(message.body) * 2}

    answers: dict[int, Any] = {}
    async with serving(broker, queue_name, double), RpcClient(broker) as client:

        async def caller(first: int) -> None:
            for n in range(first, first + 20):
                answers[n] = (await client.call(queue_name, str(n).encode(), timeout=20)).json()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for task in range(50):
                    tg.start_soon(caller, task * 20)
    assert len(answers) == 1000
    assert all(answers[n] == {"n": n * 2} for n in range(1000))


async def test_values_are_encoded_by_type(broker: Broker, queue_name: str) -> None:
    async def answer(message: Message) -> Any:
        kind = message.body.decode()
        values: dict[str, Any] = {"bytes": b"\x00\xff", "str": "héllo", "none": None, "json": [1, "a"]}
        values |= {"false": False, "exact": ReplyBody.json(False), "custom": ReplyBody(b"<x/>", "text/xml")}
        return values[kind]

    async with serving(broker, queue_name, answer), RpcClient(broker) as client:
        raw = await client.call(queue_name, "bytes", timeout=10)
        assert (raw.body, raw.content_type) == (b"\x00\xff", None)
        text = await client.call(queue_name, "str", timeout=10)
        assert (text.text(), text.content_type) == ("héllo", "text/plain; charset=utf-8")
        assert (await client.call(queue_name, "none", timeout=10)).body == b""
        assert (await client.call(queue_name, "json", timeout=10)).json() == [1, "a"]
        exact = await client.call(queue_name, "exact", timeout=10)
        assert (exact.body, exact.content_type) == (b"false", "application/json")
        custom = await client.call(queue_name, "custom", timeout=10)
        assert (custom.body, custom.content_type) == (b"<x/>", "text/xml")


async def test_returning_false_replies_empty_and_stops_the_worker(broker: Broker, queue_name: str) -> None:
    async def stop(message: Message) -> bool:
        return False

    async with serving(broker, queue_name, stop, concurrency=1) as consumer, RpcClient(broker) as client:
        reply = await client.call(queue_name, b"x", timeout=10)
        assert reply.body == b""
        with anyio.fail_after(10):
            await consumer.control.wait_stop_requested()
        assert consumer.control.reason is not None and consumer.control.reason.code == "callback"


async def test_a_value_that_cannot_be_encoded_is_an_error_reply_naming_its_type(
    broker: Broker, queue_name: str
) -> None:
    async def odd(message: Message) -> object:
        return {1, 2}

    async with serving(broker, queue_name, odd), RpcClient(broker) as client:
        with pytest.raises(RemoteError) as caught:
            await client.call(queue_name, b"x", timeout=10)
    assert caught.value.error_type == "TypeError"
    assert "'set'" in caught.value.error_message


async def test_a_permanent_failure_raises_remote_error_with_type_and_message(
    broker: Broker, queue_name: str
) -> None:
    async def refuse(message: Message) -> None:
        raise PermanentError("card declined")

    async with serving(broker, queue_name, refuse), RpcClient(broker) as client:
        with pytest.raises(RemoteError) as caught:
            await client.call(queue_name, b"x", timeout=10)
    assert caught.value.error_type == "swarrow.errors.PermanentError"
    assert caught.value.error_message == "card declined"
    dead = await broker.inspect_queue(f"{queue_name}.dead")
    assert dead is not None and dead.message_count == 1


async def test_a_retried_request_answers_from_its_next_attempt(broker: Broker, queue_name: str) -> None:
    calls: list[int] = []

    async def flaky(message: Message) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")
        return "second time lucky"

    async with serving(broker, queue_name, flaky, attempts=2), RpcClient(broker) as client:
        reply = await client.call(queue_name, b"x", timeout=10)
    assert reply.text() == "second time lucky"
    assert len(calls) == 2


async def test_attempts_spent_raise_remote_error(broker: Broker, queue_name: str) -> None:
    async def always(message: Message) -> None:
        raise ValueError("still broken")

    async with serving(broker, queue_name, always, attempts=2), RpcClient(broker) as client:
        with pytest.raises(RemoteError, match="still broken") as caught:
            await client.call(queue_name, b"x", timeout=10)
    assert caught.value.error_type == "ValueError"


async def test_a_call_times_out_and_its_late_reply_is_dropped(broker: Broker, queue_name: str) -> None:
    release = anyio.Event()

    async def slow(message: Message) -> str:
        if message.body == b"slow":
            await release.wait()
        return message.body.decode()

    async with serving(broker, queue_name, slow, concurrency=2), RpcClient(broker) as client:
        started = time.monotonic()
        with pytest.raises(RpcTimeout):
            await client.call(queue_name, b"slow", timeout=0.3)
        assert time.monotonic() - started < 5
        release.set()
        # The late answer to "slow" arrives and is dropped; the next call gets its own answer.
        assert (await client.call(queue_name, b"fast", timeout=10)).text() == "fast"


async def test_a_call_to_a_missing_queue_fails_at_once(broker: Broker, queue_name: str) -> None:
    async with RpcClient(broker) as client:
        started = time.monotonic()
        with pytest.raises(PublishError):
            await client.call(f"{queue_name}.nobody", b"x", timeout=10)
        assert time.monotonic() - started < 5


async def test_an_expired_request_is_acked_without_running_the_callback(
    broker: Broker, queue_name: str
) -> None:
    ran: list[bytes] = []
    outcomes: list[str | None] = []

    async def work(message: Message) -> str:
        ran.append(message.body)
        return "done"

    class Observe:
        def __init__(self, inner: Any, /) -> None:
            self.inner = inner

        async def __call__(self, message: Message, /) -> bool:
            keep = bool(await self.inner(message))
            outcomes.append(get_outcome())
            return keep

    await broker.declare_queue(queue_name)
    publisher = broker.publisher()
    past = int((time.time() - 5) * 1000)
    await publisher.publish(
        Message(b"late", reply_to="nobody", correlation_id="c1", headers={DEADLINE_HEADER: past}), queue_name
    )
    provider = broker.provider(queue_name, prefetch=10)
    stack = Stack(
        Layer(Observe),
        Layer(ReplyProcessor, publisher=publisher, provider=provider),
        Layer(AckProcessor, provider=provider),
        callback=work,
    )
    consumer = Consumer(provider, stack, concurrency=1, grace_period=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(10):
            while not outcomes:
                await anyio.sleep(0.01)
        consumer.control.stop("test", "done")
    await publisher.close()
    assert ran == []
    assert outcomes == [EXPIRED]
    info = await broker.inspect_queue(queue_name)
    assert info is not None and info.message_count == 0


async def test_a_reply_to_a_caller_that_is_gone_is_lost_and_the_request_acked(
    broker: Broker, queue_name: str
) -> None:
    done = anyio.Event()

    async def work(message: Message) -> str:
        done.set()
        return "nobody listens"

    async with serving(broker, queue_name, work, concurrency=1) as consumer:
        publisher = broker.publisher()
        await publisher.publish(Message(b"x", reply_to=f"{queue_name}.gone", correlation_id="c1"), queue_name)
        await publisher.close()
        with anyio.fail_after(10):
            await done.wait()
            while consumer.in_flight:
                await anyio.sleep(0.01)
        assert not consumer.control.stop_requested
    info = await broker.inspect_queue(queue_name)
    assert info is not None and info.message_count == 0


async def test_an_expired_tracked_request_ends_expired_in_the_job_store(
    memory_broker: MemoryBroker, tmp_path: Path
) -> None:
    from processors.defaults import default_stack
    from swarrow.jobs import JobStore

    queue = "expiring"
    await memory_broker.declare_queue(queue)
    publisher = memory_broker.publisher()
    past = int((time.time() - 1) * 1000)
    late = Message(b"late", reply_to="nobody", message_id="job-1", headers={DEADLINE_HEADER: past})
    await publisher.publish(late, queue)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    provider = memory_broker.provider(queue, prefetch=10)
    layers = default_stack(
        provider=provider, publisher=publisher, signals=False, retry=False, track_jobs=url, max_messages=1
    )
    consumer = Consumer(provider, Stack(*layers, callback=lambda m: None), concurrency=1, grace_period=1)
    with anyio.fail_after(10):
        reason = await consumer.run()
    assert reason.code == "max_messages"
    store = JobStore.open(url)
    try:
        job = (await store.status(["job-1"]))["job-1"]
    finally:
        await store.close()
    assert job is not None and job.state == "expired"


async def test_an_error_raised_in_the_client_block_leaves_it_as_itself(
    broker: Broker, queue_name: str
) -> None:
    with pytest.raises(PublishError):  # not an ExceptionGroup: `except` around the block works
        async with RpcClient(broker) as client:
            await client.call(f"{queue_name}.nobody", b"x", timeout=5)
    with pytest.raises(KeyError):
        async with RpcClient(broker):
            raise KeyError("mine")


async def test_replies_are_counted_sent_error_and_lost(broker: Broker, queue_name: str) -> None:
    from prometheus_client import CollectorRegistry

    from processors.defaults import default_stack

    async def work(message: Message) -> str:
        if message.body == b"refuse":
            raise PermanentError("no")
        return "ok"

    await RetryTopology(queue_name, [0.05]).declare(broker)
    registry = CollectorRegistry()
    publisher = broker.publisher()
    provider = broker.provider(queue_name, prefetch=10)
    layers = default_stack(
        provider=provider, publisher=publisher, signals=False, metrics=True, registry=registry,
        retry_attempts=1, retry_delays=[0.05],
    )  # fmt: skip
    consumer = Consumer(provider, Stack(*layers, callback=work), concurrency=2, grace_period=1)

    def count(result: str) -> float:
        value = registry.get_sample_value("swarrow_replies_total", {"queue": queue_name, "result": result})
        return value or 0.0

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        async with RpcClient(broker) as client:
            assert (await client.call(queue_name, b"hi", timeout=10)).text() == "ok"
            with pytest.raises(RemoteError):
                await client.call(queue_name, b"refuse", timeout=10)
        await publisher.publish(Message(b"x", reply_to=f"{queue_name}.gone", correlation_id="c"), queue_name)
        with anyio.fail_after(10):
            while count("lost") < 1:
                await anyio.sleep(0.02)
        consumer.control.stop("test", "done")
    await publisher.close()
    assert (count("sent"), count("error"), count("lost")) == (1, 1, 1)
