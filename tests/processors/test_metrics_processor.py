"""MetricsProcessor: every outcome counter, in flight, duration, consumer_up, stops, the endpoint's life."""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request

import anyio
import pytest
from prometheus_client import CollectorRegistry

from processors.metrics import MetricsProcessor
from swarrow import (
    CallbackProcessor,
    ConfigurationError,
    Consumer,
    Layer,
    MemoryBroker,
    MemoryMessageProvider,
    Message,
    Processor,
    Stack,
)
from swarrow.outcome import OUTCOMES, Outcome, record_outcome

pytestmark = pytest.mark.anyio

Q = "orders"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def aget(url: str) -> tuple[int, str]:
    return await anyio.to_thread.run_sync(get, url)


def processed(registry: CollectorRegistry, outcome: str, queue: str = Q) -> float | None:
    return registry.get_sample_value("swarrow_messages_processed_total", {"queue": queue, "outcome": outcome})


def sample(registry: CollectorRegistry, name: str, queue: str = Q) -> float | None:
    return registry.get_sample_value(name, {"queue": queue})


class Settle:
    """Stands in for the settling layers: acks, and records the outcome the message body names."""

    def __init__(self, inner: Processor, /, *, provider: MemoryMessageProvider) -> None:
        self.inner = inner
        self.provider = provider

    async def __call__(self, message: Message, /) -> bool:
        keep_going = await self.inner(message)
        outcome = message.body.decode()
        if outcome in OUTCOMES:
            record_outcome(outcome)
        await self.provider.ack(message)
        return keep_going


def setup(*bodies: bytes) -> tuple[MemoryBroker, MemoryMessageProvider]:
    broker = MemoryBroker("metrics")
    broker.declare_queue_nowait(Q)
    for body in bodies:
        broker.publish_nowait(Message(body), Q)
    return broker, broker.provider(Q, prefetch=10)


class Direct:
    """Calls the processor with no consumer, recording `outcome` (or raising) in the innermost layer."""

    def __init__(self, outcome: Outcome | None = None, raises: bool = False) -> None:
        self.outcome = outcome
        self.raises = raises

    async def __call__(self, message: Message, /) -> bool:
        if self.outcome is not None:
            record_outcome(self.outcome)
        if self.raises:
            raise RuntimeError("boom")
        return True


@pytest.mark.parametrize("outcome", OUTCOMES)
async def test_each_recorded_outcome_moves_only_its_counter(outcome: Outcome) -> None:
    registry = CollectorRegistry()
    processor = MetricsProcessor(Direct(outcome), registry=registry)
    assert await processor(Message(b"x", queue=Q)) is True
    assert await processor(Message(b"x", queue=Q)) is True
    for other in OUTCOMES:
        assert processed(registry, other) == (2 if other == outcome else 0), other
    assert sample(registry, "swarrow_messages_received_total") == 2
    assert sample(registry, "swarrow_message_duration_seconds_count") == 2
    assert sample(registry, "swarrow_messages_in_flight") == 0


async def test_an_exception_with_no_recorded_outcome_counts_failed_and_reraises() -> None:
    registry = CollectorRegistry()
    processor = MetricsProcessor(Direct(raises=True), registry=registry)
    with pytest.raises(RuntimeError, match="boom"):
        await processor(Message(queue=Q))
    assert processed(registry, "failed") == 1
    assert sample(registry, "swarrow_messages_in_flight") == 0
    assert sample(registry, "swarrow_message_duration_seconds_count") == 1


async def test_an_exception_after_a_recorded_outcome_keeps_that_outcome() -> None:
    registry = CollectorRegistry()
    processor = MetricsProcessor(Direct("rejected", raises=True), registry=registry)
    with pytest.raises(RuntimeError):
        await processor(Message(queue=Q))
    assert processed(registry, "rejected") == 1
    assert processed(registry, "failed") == 0


async def test_the_previous_messages_outcome_never_leaks_into_the_next() -> None:
    registry = CollectorRegistry()
    inner = Direct("retried")
    processor = MetricsProcessor(inner, registry=registry)
    await processor(Message(queue=Q))
    inner.outcome = None
    await processor(Message(queue=Q))
    assert processed(registry, "retried") == 1


async def test_no_recorded_outcome_is_received_and_timed_but_not_processed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    processor = MetricsProcessor(Direct(), registry=registry)
    with caplog.at_level(logging.WARNING, logger="processors.metrics"):
        for _ in range(3):
            await processor(Message(queue=Q))
    assert sample(registry, "swarrow_messages_received_total") == 3
    assert sample(registry, "swarrow_message_duration_seconds_count") == 3
    assert all(processed(registry, o) == 0 for o in OUTCOMES)
    assert len([r for r in caplog.records if "no layer recorded an outcome" in r.getMessage()]) == 1


async def test_in_flight_counts_messages_inside_the_stack() -> None:
    registry = CollectorRegistry()
    seen: list[float | None] = []

    async def inner(message: Message, /) -> bool:
        seen.append(sample(registry, "swarrow_messages_in_flight"))
        return True

    processor = MetricsProcessor(inner, registry=registry)
    await processor(Message(queue=Q))
    assert seen == [1.0]
    assert sample(registry, "swarrow_messages_in_flight") == 0


async def test_duration_is_observed_in_seconds() -> None:
    registry = CollectorRegistry()

    async def inner(message: Message, /) -> bool:
        await anyio.sleep(0.02)
        return True

    await MetricsProcessor(inner, registry=registry)(Message(queue=Q))
    total = sample(registry, "swarrow_message_duration_seconds_sum")
    assert total is not None and 0.015 < total < 1.0
    fast = registry.get_sample_value("swarrow_message_duration_seconds_bucket", {"queue": Q, "le": "0.01"})
    assert fast == 0


async def test_returns_what_the_inner_processor_returns() -> None:
    async def stop(message: Message, /) -> bool:
        return False

    assert await MetricsProcessor(stop, registry=CollectorRegistry())(Message(queue=Q)) is False


def test_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="heartbeat_interval"):
        MetricsProcessor(Direct(), registry=CollectorRegistry(), heartbeat_interval=0)
    with pytest.raises(ValueError, match="liveness_timeout"):
        MetricsProcessor(Direct(), registry=CollectorRegistry(), heartbeat_interval=2, liveness_timeout=1)


# --- in a consumer ----------------------------------------------------------------------------------------


async def test_counts_every_outcome_through_a_consumer() -> None:
    bodies = [o.encode() for o in OUTCOMES if o != "failed"] * 2
    broker, provider = setup(*bodies)
    registry = CollectorRegistry()
    done = anyio.Event()
    count = 0

    async def handle(message: Message) -> None:
        nonlocal count
        count += 1
        if count == len(bodies):
            done.set()

    consumer = Consumer(
        provider,
        Stack(Layer(MetricsProcessor, registry=registry), Layer(Settle, provider=provider), callback=handle),
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            await done.wait()
            consumer.control.stop("idle")
    for outcome in OUTCOMES:
        assert processed(registry, outcome) == (0 if outcome == "failed" else 2), outcome
    assert sample(registry, "swarrow_messages_received_total") == len(bodies)
    assert registry.get_sample_value("swarrow_consumer_stops_total", {"queue": Q, "reason": "idle"}) == 1
    assert broker.message_count(Q) == 0


async def test_an_exception_escaping_the_stack_counts_failed_and_the_crash_stop() -> None:
    _, provider = setup(b"x")
    registry = CollectorRegistry()

    async def handle(message: Message) -> None:
        raise RuntimeError("boom")

    consumer = Consumer(provider, Stack(Layer(MetricsProcessor, registry=registry), callback=handle))
    with anyio.fail_after(5), pytest.raises(RuntimeError, match="boom"):
        await consumer.run()
    assert processed(registry, "failed") == 1
    assert registry.get_sample_value("swarrow_consumer_stops_total", {"queue": Q, "reason": "crashed"}) == 1


async def test_consumer_up_follows_the_provider_and_drops_on_stop() -> None:
    broker, provider = setup()
    registry = CollectorRegistry()
    consumer = Consumer(
        provider,
        Stack(
            Layer(MetricsProcessor, registry=registry, provider=provider, heartbeat_interval=0.01),
            callback=lambda m: None,
        ),
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(3):
            while sample(registry, "swarrow_consumer_up") != 1:
                await anyio.sleep(0.01)
        await broker.delete_queue(Q)  # the memory provider stops consuming until the queue is back
        with anyio.fail_after(3):
            while sample(registry, "swarrow_consumer_up") != 0:
                await anyio.sleep(0.01)
        broker.declare_queue_nowait(Q)
        with anyio.fail_after(3):
            while sample(registry, "swarrow_consumer_up") != 1:
                await anyio.sleep(0.01)
        consumer.control.stop("signal", "test")
    assert sample(registry, "swarrow_consumer_up") == 0
    assert registry.get_sample_value("swarrow_consumer_stops_total", {"queue": Q, "reason": "signal"}) == 1


async def test_serves_the_endpoint_for_the_consumers_life() -> None:
    broker, provider = setup(b"acked")
    registry = CollectorRegistry()
    handled = anyio.Event()

    async def handle(message: Message) -> None:
        handled.set()

    metrics = MetricsProcessor(
        Settle(CallbackProcessor(handle), provider=provider),
        registry=registry,
        provider=provider,
        address=("127.0.0.1", 0),
        heartbeat_interval=0.05,
    )
    # the layer ignores the stack's own callback processor: the test needs this instance for its port
    consumer = Consumer(provider, Stack(lambda inner: metrics, callback=handle))
    assert metrics.server is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(3):
            await handled.wait()
            while processed(registry, "acked") != 1:
                await anyio.sleep(0.01)
        base = f"http://127.0.0.1:{metrics.server.port}"
        status, body = await aget(base + "/metrics")
        assert status == 200
        assert 'swarrow_messages_processed_total{outcome="acked",queue="orders"} 1.0' in body
        assert (await aget(base + "/healthz"))[0] == 200
        assert (await aget(base + "/readyz"))[0] == 200
        await broker.delete_queue(Q)
        status, body = await aget(base + "/readyz")
        assert status == 503
        assert "not consuming" in json.loads(body)["detail"]
        assert (await aget(base + "/healthz"))[0] == 200
        broker.declare_queue_nowait(Q)
        assert (await aget(base + "/readyz"))[0] == 200
        consumer.control.stop("signal")
    assert metrics.health.liveness() == (False, "consumer stopped: signal")
    with pytest.raises(urllib.error.URLError):
        await aget(base + "/healthz")  # the server stopped with the consumer


async def test_healthz_turns_503_while_the_event_loop_is_wedged() -> None:
    _, provider = setup(b"x")
    registry = CollectorRegistry()
    statuses: list[int] = []
    metrics: MetricsProcessor

    async def wedge(message: Message) -> None:
        assert metrics.server is not None
        url = f"http://127.0.0.1:{metrics.server.port}/healthz"
        statuses.append(get(url)[0])
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # blocks the event loop on purpose, like a sync call in async code
            status = get(url)[0]
            if status == 503:
                statuses.append(status)
                break
            time.sleep(0.02)  # noqa: ASYNC251 - the point is to block the loop

    metrics = MetricsProcessor(
        wedge,  # type: ignore[arg-type]
        registry=registry,
        address=("127.0.0.1", 0),
        heartbeat_interval=0.02,
        liveness_timeout=0.2,
    )
    consumer = Consumer(provider, Stack(lambda inner: metrics, callback=lambda m: False))
    with anyio.fail_after(5):
        await consumer.run()
    assert statuses == [200, 503]


async def test_a_port_in_use_fails_the_run_with_a_configuration_error() -> None:
    _, provider = setup(b"x")
    handled: list[Message] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        consumer = Consumer(
            provider,
            Stack(
                Layer(MetricsProcessor, registry=CollectorRegistry(), address=("127.0.0.1", port)),
                callback=handled.append,
            ),
        )
        with anyio.fail_after(5), pytest.raises(ConfigurationError, match="address already in use"):
            await consumer.run()
    assert handled == []


async def test_readyz_and_consumer_up_agree_at_start_and_say_draining_during_a_graceful_stop() -> None:
    broker, provider = setup(b"slow")
    registry = CollectorRegistry()
    started, release = anyio.Event(), anyio.Event()
    seen: list[tuple[bool, float | None]] = []

    async def handle(message: Message) -> None:
        started.set()
        await release.wait()

    metrics = MetricsProcessor(
        Settle(CallbackProcessor(handle), provider=provider),
        registry=registry,
        provider=provider,
        heartbeat_interval=60,  # no heartbeat helps: each scrape reads the readiness itself
        liveness_timeout=120,
    )
    consumer = Consumer(provider, Stack(lambda inner: metrics, callback=handle), grace_period=10)

    def observe() -> None:
        # /readyz and a scrape at the same moment: one source of truth, never 200 with consumer_up 0
        ready = metrics.health.readiness()[0]
        seen.append((ready, sample(registry, "swarrow_consumer_up")))

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(5):
            while not started.is_set():
                observe()
                await anyio.sleep(0.001)
        observe()
        consumer.control.stop("signal", "SIGTERM received")  # graceful: the slow message drains
        ready, why = metrics.health.readiness()
        assert not ready and why == "draining (stop requested: signal: SIGTERM received)"
        assert sample(registry, "swarrow_consumer_up") == 0
        release.set()
    assert all((1.0 if ready else 0.0) == (up or 0.0) for ready, up in seen), seen  # None: not bound yet
    assert seen[-1] == (True, 1.0)
    assert metrics.health.liveness() == (False, "consumer stopped: signal")


async def test_readyz_says_starting_before_the_first_consume() -> None:
    _, provider = setup()
    metrics = MetricsProcessor(
        CallbackProcessor(lambda m: None), registry=CollectorRegistry(), provider=provider
    )
    control = Consumer(provider, Stack(callback=lambda m: None)).control
    control._bind()
    async with metrics.lifespan(control):
        assert metrics.health.readiness() == (False, "starting (not consuming yet)")
