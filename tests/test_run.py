"""`swarrow.run` / `consume`: the one-call API, on the in-memory broker."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_metrics_address_takes_the_string_form_of_the_cli() -> None:
    url, broker = fresh()
    broker.declare_queue_nowait("jobs")
    broker.publish_nowait(Message(b"x"), "jobs")
    port = _free_port()
    scraped: list[str] = []

    def handle(message: Message) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            scraped.append(response.read().decode())
        return False

    reason = run(
        handle, queue="jobs", url=url, retry=False, signals=False, metrics_address=f"127.0.0.1:{port}"
    )
    assert reason.code == "callback"
    assert "swarrow_messages_received_total" in scraped[0]


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "nope", "127.0.0.1:"])
def test_a_bad_metrics_address_string_is_a_configuration_error_naming_it(address: str) -> None:
    url, _ = fresh()
    with pytest.raises(ConfigurationError, match=r"metrics_address: invalid metrics address"):
        run(print, queue="jobs", url=url, metrics_address=address)


_APP = """
import sys
import swarrow
from swarrow import MemoryBroker, Message

broker = MemoryBroker.named("app")
broker.declare_queue_nowait("jobs")
for n in range(2):
    broker.publish_nowait(Message(b"hi", message_id=f"m-{n}"), "jobs")
if sys.argv[1] == "configured":
    import logging
    logging.basicConfig(level=logging.WARNING, format="APP %(message)s")
print(swarrow.run(print, queue="jobs", url="memory://app", declare=True, max_messages=2).code)
"""


def test_run_logs_like_the_cli_when_the_application_set_up_no_logging() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _APP, "bare"], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines()[-1] == "max_messages"
    lines = done.stderr.splitlines()
    created = (
        " INFO swarrow.runner: created jobs.retry.1, jobs.retry.2, jobs.retry.3, jobs.dead;"
        " found jobs (2 messages) on memory://app"
    )
    assert any(line.endswith(created) for line in lines), lines
    consuming = [
        n for n, line in enumerate(lines) if " INFO swarrow.consumer: consuming jobs (prefetch 100, " in line
    ]
    assert len(consuming) == 1, lines  # one line, once it is true
    assert not any("consuming" in line for line in lines[: consuming[0]]), lines
    assert sum(" INFO processors.logger: message m-" in line for line in lines) == 2, lines


def test_run_leaves_the_logging_an_application_configured_alone() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _APP, "configured"], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines()[-1] == "max_messages"
    assert "INFO" not in done.stderr and "processors.logger" not in done.stderr
