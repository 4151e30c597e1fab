"""Several queues in one worker: preference, weights, settling per queue, metrics and readiness per queue."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest
from prometheus_client import CollectorRegistry

from processors.ack import AckProcessor
from processors.defaults import default_stack
from swarrow import Broker, ConfigurationError, Consumer, Layer, Message, Settings, Stack
from swarrow.multi_queue import MultiQueueProvider, QueueChoice, parse_queue_choice, parse_queue_choices
from swarrow.topology import RetryTopology

pytestmark = pytest.mark.anyio


@pytest.fixture
async def second_queue(broker: Broker, queue_name: str) -> AsyncIterator[str]:
    """A second queue beside `queue_name`, deleted (with its retry family) afterwards."""
    name = f"{queue_name}.b"
    yield name
    delete = getattr(broker, "delete_queue", None)
    if delete is not None:
        for each in (name, f"{name}.dead", f"{name}.retry.1"):
            with contextlib.suppress(Exception):
                await delete(each)


async def _fill(broker: Broker, queue: str, prefix: str, count: int) -> None:
    publisher = broker.publisher()
    for n in range(count):
        await publisher.publish(Message(f"{prefix}-{n}".encode(), message_id=f"{prefix}-{n}"), queue)


async def _run(
    broker: Broker,
    queues: list[str],
    weights: list[int] | None,
    total: int,
    *,
    prefetch: int,
    concurrency: int = 1,
    work: float = 0.0,
) -> list[str]:
    seen: list[str] = []

    async def record(message: Message) -> None:
        seen.append(message.message_id or "")
        await anyio.sleep(work)

    provider = MultiQueueProvider([broker.provider(q, prefetch=prefetch) for q in queues], weights)
    consumer = Consumer(
        provider, Stack(Layer(AckProcessor, provider=provider), callback=record), concurrency=concurrency
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(60):
            while len(seen) < total:
                await anyio.sleep(0.01)
        consumer.control.stop("test", "done")
    return seen


async def test_strict_preference_takes_the_first_queue_while_it_has_messages(
    broker: Broker, queue_name: str, second_queue: str
) -> None:
    for queue in (queue_name, second_queue):
        await broker.declare_queue(queue)
    await _fill(broker, second_queue, "normal", 200)  # published first: the worker must still prefer urgent
    await _fill(broker, queue_name, "urgent", 200)
    # A 2 ms job, as in real work: the urgent window refills faster than the workers drain it.
    seen = await _run(broker, [queue_name, second_queue], None, 400, prefetch=50, concurrency=5, work=0.002)
    last_urgent = max(i for i, m in enumerate(seen) if m.startswith("urgent"))
    normal_before = sum(1 for m in seen[:last_urgent] if m.startswith("normal"))
    # At most the normal queue's prefetch window slips in (taken while urgent's buffer was refilling).
    assert normal_before <= 50, (normal_before, seen[:30])
    assert sorted(seen) == sorted([f"urgent-{n}" for n in range(200)] + [f"normal-{n}" for n in range(200)])


async def test_weighted_mode_takes_the_queues_in_the_ratio_of_their_weights(
    broker: Broker, queue_name: str, second_queue: str
) -> None:
    for queue in (queue_name, second_queue):
        await broker.declare_queue(queue)
    await _fill(broker, queue_name, "urgent", 300)
    await _fill(broker, second_queue, "normal", 300)
    seen = await _run(broker, [queue_name, second_queue], [3, 1], 600, prefetch=50, concurrency=5, work=0.002)
    first = seen[:200]  # both queues hold messages all along this stretch
    urgent = sum(1 for m in first if m.startswith("urgent"))
    assert 135 <= urgent <= 165, (urgent, first[:20])  # 3:1 -> 150 of 200
    # Smooth: never a long run of one queue while the other waits.
    longest, run, previous = 0, 0, ""
    for m in first:
        kind = m.split("-")[0]
        run = run + 1 if kind == previous else 1
        previous, longest = kind, max(longest, run)
    assert longest <= 8, first[:40]
    assert len(set(seen)) == 600


async def test_each_delivery_is_settled_on_its_own_queue_and_retries_go_to_its_own_retry_queue(
    broker: Broker, queue_name: str, second_queue: str
) -> None:
    for queue in (queue_name, second_queue):
        await RetryTopology(queue, [0.05]).declare(broker)
        await broker.publisher().publish(Message(b"x", message_id=f"from-{queue}"), queue)
    attempts: list[tuple[str, str]] = []

    async def fail_once(message: Message) -> None:
        attempts.append((message.queue, message.message_id or ""))
        if not message.headers.get("x-swarrow-attempt"):
            raise RuntimeError("first attempt fails")

    provider = MultiQueueProvider(
        [broker.provider(queue_name, prefetch=5), broker.provider(second_queue, prefetch=5)]
    )
    layers = default_stack(
        provider=provider, publisher=broker.publisher(), signals=False, log=False, retry_attempts=1,
        retry_delays=[0.05], max_messages=4,
    )  # fmt: skip
    with anyio.fail_after(20):
        await Consumer(provider, Stack(*layers, callback=fail_once), concurrency=2).run()
    assert sorted(attempts) == sorted([(q, f"from-{q}") for q in (queue_name, second_queue)] * 2)
    for queue in (queue_name, second_queue):
        for name in (queue, f"{queue}.dead", f"{queue}.retry.1"):
            info = await broker.inspect_queue(name)
            assert info is not None and info.message_count == 0, (name, info)


async def test_metrics_and_readiness_are_per_queue(
    broker: Broker, queue_name: str, second_queue: str
) -> None:
    for queue in (queue_name, second_queue):
        await broker.declare_queue(queue)
    await _fill(broker, queue_name, "a", 3)
    await _fill(broker, second_queue, "b", 5)
    registry = CollectorRegistry()
    provider = MultiQueueProvider(
        [broker.provider(queue_name, prefetch=10), broker.provider(second_queue, prefetch=10)]
    )
    seen: list[str] = []
    layers = default_stack(
        provider=provider, publisher=broker.publisher(), signals=False, log=False, metrics=True,
        registry=registry, max_messages=8,
    )  # fmt: skip
    consumer = Consumer(provider, Stack(*layers, callback=lambda m: seen.append(m.queue)), concurrency=1)
    with anyio.fail_after(20):
        await consumer.run()

    def processed(queue: str) -> float | None:
        return registry.get_sample_value(
            "swarrow_messages_processed_total", {"queue": queue, "outcome": "acked"}
        )

    assert (processed(queue_name), processed(second_queue)) == (3.0, 5.0)
    assert registry.get_sample_value("swarrow_consumer_up", {"queue": second_queue}) == 0.0  # stopped now
    assert sorted(seen) == sorted([queue_name] * 3 + [second_queue] * 5)


async def test_readyz_names_the_queue_that_is_not_consumed(
    broker: Broker, queue_name: str, second_queue: str
) -> None:
    for queue in (queue_name, second_queue):
        await broker.declare_queue(queue)
    registry = CollectorRegistry()
    provider = MultiQueueProvider(
        [broker.provider(queue_name, prefetch=10), broker.provider(second_queue, prefetch=10)]
    )
    layers = default_stack(
        provider=provider, publisher=broker.publisher(), signals=False, log=False, metrics=True,
        registry=registry,
    )  # fmt: skip
    consumer = Consumer(provider, Stack(*layers, callback=lambda m: None), concurrency=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(20):
            while registry.get_sample_value("swarrow_consumer_up", {"queue": second_queue}) != 1.0:
                await anyio.sleep(0.02)
        assert registry.get_sample_value("swarrow_consumer_up", {"queue": queue_name}) == 1.0
        await provider.providers[1].stop_consuming()  # the second queue's consumer goes away
        with anyio.fail_after(20):
            while registry.get_sample_value("swarrow_consumer_up", {"queue": second_queue}) != 0.0:
                await anyio.sleep(0.02)
        # The first queue is still consumed: its gauge stays up while /readyz (all queues) says 503.
        assert registry.get_sample_value("swarrow_consumer_up", {"queue": queue_name}) == 1.0
        consumer.control.stop("test", "done")


def test_queue_choices_parse_weights_and_refuse_what_has_no_meaning() -> None:
    assert parse_queue_choice("urgent:5") == QueueChoice("urgent", 5)
    assert parse_queue_choice("a:b") == QueueChoice("a:b")
    assert parse_queue_choices(["jobs:1"]) == [QueueChoice("jobs:1")]  # one queue: the name as written
    assert parse_queue_choices(["u", "n"]) == [QueueChoice("u"), QueueChoice("n")]
    for bad, words in (
        (["u:0", "n:1"], "1..1000"),
        (["u:5", "n"], "weight to every queue"),
        (["u", "u"], "given twice"),
        (["u:1", "u:2"], "given twice"),
    ):
        with pytest.raises(ConfigurationError, match=words):
            parse_queue_choices(bad)


def test_settings_carry_several_queues_through_json() -> None:
    settings = Settings.create(queues=["urgent:5", "normal:1"], url="memory://s")
    assert settings.queue_names == ("urgent", "normal")
    assert settings.queue_weights == (5, 1)
    again = Settings.from_json(settings.to_json())
    assert again == settings
    assert Settings.create(queues=["jobs"], url="memory://s").queue_names == ("jobs",)
    with pytest.raises(ConfigurationError, match="either queue or queues"):
        Settings.create(queue="a", queues=["b", "c"], url="memory://s")
    with pytest.raises(ConfigurationError, match="one weight per queue"):
        Settings(queue="a", extra_queues=("b",), queue_weights=(1,))


def test_a_multi_queue_provider_needs_providers_that_can_wait_without_taking() -> None:
    class Plain:
        queue_name = "p"
        prefetch = 1

    with pytest.raises(ConfigurationError, match="cannot be merged"):
        MultiQueueProvider([Plain(), Plain()])  # type: ignore[list-item]
