"""`swarrow.run` / `consume`: the one-call API, on the in-memory broker."""

from __future__ import annotations

import uuid

import pytest

from processors.ack import AckProcessor
from swarrow import ConfigurationError, Layer, MemoryBroker, Message, MessageProvider, Publisher
from swarrow.runner import consume, resolve_url, run


def fresh() -> tuple[str, MemoryBroker]:
    name = f"run-{uuid.uuid4().hex[:8]}"
    return f"memory://{name}", MemoryBroker.named(name)


def test_run_declares_consumes_and_returns_the_stop_reason() -> None:
    url, broker = fresh()
    broker.declare_queue_nowait("jobs")
    seen: list[Message] = []
    for n in range(3):
        broker.publish_nowait(Message(f"{n}".encode()), "jobs")
    reason = run(seen.append, queue="jobs", url=url, declare=True, max_messages=3, signals=False)
    assert reason.code == "max_messages"
    assert len(seen) == 3
    assert "jobs.retry.3" in broker.queue_names() and "jobs.dead" in broker.queue_names()


def test_run_takes_explicit_layers_or_a_factory() -> None:
    url, broker = fresh()
    broker.declare_queue_nowait("jobs")
    broker.publish_nowait(Message(b"a"), "jobs")
    broker.publish_nowait(Message(b"b"), "jobs")

    def stop_after_one(message: Message) -> bool:
        return False

    def factory(provider: MessageProvider, publisher: Publisher) -> list[Layer[...]]:
        return [Layer(AckProcessor, provider=provider)]

    assert run(stop_after_one, queue="jobs", url=url, processors=factory).code == "callback"
    assert broker.message_count("jobs") == 1


def test_default_stack_options_with_explicit_processors_is_a_type_error() -> None:
    url, _ = fresh()
    with pytest.raises(TypeError, match="max_messages"):
        run(print, queue="jobs", url=url, processors=[], max_messages=3)


def test_a_missing_queue_fails_before_consuming() -> None:
    url, _ = fresh()
    with pytest.raises(ConfigurationError, match="queue 'jobs' does not exist"):
        run(print, queue="jobs", url=url)


def test_prefetch_below_concurrency_is_refused() -> None:
    url, _ = fresh()
    with pytest.raises(ConfigurationError, match=r"prefetch \(1\) must be >= concurrency \(2\)"):
        run(print, queue="jobs", url=url, prefetch=1, concurrency=2)


def test_url_falls_back_to_the_environment_then_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWARROW_URL", raising=False)
    assert resolve_url(None) == "amqp://guest:guest@127.0.0.1:5672/"
    monkeypatch.setenv("SWARROW_URL", "memory://env")
    assert resolve_url(None) == "memory://env"
    assert resolve_url("memory://given") == "memory://given"


@pytest.mark.anyio
async def test_consume_is_the_async_form() -> None:
    url, broker = fresh()
    broker.declare_queue_nowait("jobs")
    broker.publish_nowait(Message(b"x"), "jobs")

    async def handle(message: Message) -> None:
        pass

    reason = await consume(handle, queue="jobs", url=url, retry=False, stop_when_idle=0.1, signals=False)
    assert reason.code == "idle"
    assert broker.message_count("jobs") == 0
