"""PHP (swarrot's way, with php-amqplib) and swarrow share queues, retries and dead letters on RabbitMQ."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from processors.defaults import default_stack
from swarrow import Consumer, Message, Stack
from swarrow.amqp import AmqpBroker
from swarrow.swarrot import SWARROT_ATTEMPTS_HEADER, SwarrotTopology
from swarrow.topology import ERROR_TYPE_HEADER, RETRY_ATTEMPT_HEADER

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.interop, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
HAVE_PHP = shutil.which("php") is not None and Path("/usr/share/php/PhpAmqpLib/autoload.php").exists()
if not HAVE_PHP and os.environ.get("CI") != "true":
    pytestmark.append(
        pytest.mark.skip(reason="needs php-cli and php-amqplib (apt-get install php-cli php-amqplib)")
    )


def _port(url: str) -> str:
    from swarrow.urls import parse_url

    return str(parse_url(url).nodes[0].port)


@pytest.fixture
async def topology(amqp_broker: AmqpBroker, queue_name: str) -> AsyncIterator[SwarrotTopology]:
    """The toolkit's layout for `queue_name` with three short retries; its queues deleted after."""
    topology = SwarrotTopology(queue_name, [0.3, 0.3, 0.3])
    await topology.declare(amqp_broker)
    yield topology
    for name, _ in topology.queues():
        if name != "unroutable":
            await amqp_broker.delete_queue(name)


def _php(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["php", str(HERE / script), *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _job(message: Message) -> tuple[str, int, bool]:
    """(id, retries seen, fails?) under the shared rule: fail while fewer retries than `fail`, or always."""
    seen = max(
        int(message.headers.get(RETRY_ATTEMPT_HEADER) or 0),
        int(message.headers.get(SWARROT_ATTEMPTS_HEADER) or 0),
    )
    job = json.loads(message.body)
    return job["id"], seen, job["fail"] == "always" or seen < int(job["fail"])


def _worker(broker: AmqpBroker, queue: str, calls: list[tuple[str, int, str]], **options: Any) -> Consumer:
    """A swarrow worker in swarrot mode recording ("py", id, seen, ok|fail) per call."""

    async def callback(message: Message) -> None:
        job_id, seen, fail = _job(message)
        calls.append((job_id, seen, "fail" if fail else "ok"))
        if fail:
            raise RuntimeError(f"python says no to {job_id}")

    provider = broker.provider(queue, prefetch=50)
    layers = default_stack(
        provider=provider, publisher=broker.publisher(), signals=False, log=False, retry_attempts=3,
        retry_delays=[0.3, 0.3, 0.3], retry_topology="swarrot", **options,
    )  # fmt: skip
    return Consumer(provider, Stack(*layers, callback=callback), concurrency=5, grace_period=5)


def _php_lines(path: Path) -> list[tuple[str, int, str]]:
    lines = path.read_text().split("\n") if path.exists() else []
    return [(f[1], int(f[2]), f[3]) for f in (line.split() for line in lines if line)]


async def test_php_messages_reach_the_callback_with_every_property_and_header(
    amqp_broker: AmqpBroker, amqp_url: str, topology: SwarrotTopology
) -> None:
    _php("php_publisher.php", "--queue", topology.queue, "--count", "1", "--port", _port(amqp_url))
    provider = amqp_broker.provider(topology.queue, prefetch=1)
    await provider.start()
    with anyio.fail_after(10):
        message = await provider.receive()
    assert message is not None
    await provider.ack(message)
    await provider.close()
    assert (message.content_type, message.message_id, message.delivery_mode) == (
        "application/json",
        "php-1",
        2,
    )
    assert json.loads(message.body) == {"id": "php-1", "fail": 0}
    assert message.headers["origin"] == "php"
    assert list(message.headers["tags"]) == ["billing", "eu"]
    assert message.headers["meta"] == {"attempt_budget": 3, "nested": {"deep": True}}


async def test_a_php_workers_retries_are_finished_by_swarrow_counting_its_attempts(
    amqp_broker: AmqpBroker, amqp_url: str, topology: SwarrotTopology, tmp_path: Path
) -> None:
    port = _port(amqp_url)
    _php("php_publisher.php", "--queue", topology.queue, "--count", "50", "--port", port)
    out = tmp_path / "php.log"
    # A PHP worker with a bug fails the 50 messages; swarrot's retry republishes them to `retry`.
    _php("swarrot_worker.php", "--queue", topology.queue, "--out", str(out), "--port", port,
         "--max-messages", "50", "--fail-all")  # fmt: skip
    calls: list[tuple[str, int, str]] = []
    consumer = _worker(amqp_broker, topology.queue, calls, max_messages=50)
    with anyio.fail_after(60):
        await consumer.run()
    php = _php_lines(out)
    php_fails = Counter(job_id for job_id, _, result in php if result == "fail")
    assert len(php_fails) == 50
    assert sorted(job_id for job_id, _, _ in calls) == sorted(php_fails)
    # swarrow counts the PHP worker's retries: the header it saw is the number of PHP failures.
    assert all(seen == php_fails[job_id] and result == "ok" for job_id, seen, result in calls)


async def test_swarrow_retries_are_finished_by_a_php_worker_counting_them(
    amqp_broker: AmqpBroker, amqp_url: str, topology: SwarrotTopology, tmp_path: Path
) -> None:
    port = _port(amqp_url)
    _php("php_publisher.php", "--queue", topology.queue, "--count", "40", "--fail-every", "1", "--port", port)
    calls: list[tuple[str, int, str]] = []
    consumer = _worker(amqp_broker, topology.queue, calls, max_messages=40)
    with anyio.fail_after(60):
        await consumer.run()  # every first call fails: 40 copies with both attempt headers go to `retry`
    assert len(calls) == 40 and all(result == "fail" and seen == 0 for _, seen, result in calls)
    out = tmp_path / "php.log"
    _php(
        "swarrot_worker.php",
        "--queue",
        topology.queue,
        "--out",
        str(out),
        "--port",
        port,
        "--idle-seconds",
        "3",
    )
    php = _php_lines(out)
    assert sorted(job_id for job_id, _, _ in php) == sorted(job_id for job_id, _, _ in calls)
    assert all(seen == 1 and result == "ok" for _, seen, result in php)


async def test_mixed_php_and_swarrow_consumers_share_one_queue(
    amqp_broker: AmqpBroker, amqp_url: str, topology: SwarrotTopology, tmp_path: Path
) -> None:
    port = _port(amqp_url)
    count = 2000
    _php("php_publisher.php", "--queue", topology.queue, "--count", str(count), "--port", port,
         "--fail-every", "10", "--always-every", "50")  # fmt: skip
    out = tmp_path / "php.log"
    calls: list[tuple[str, int, str]] = []
    consumer = _worker(amqp_broker, topology.queue, calls, stop_when_idle=4)
    worker = ["php", str(HERE / "swarrot_worker.php"), "--queue", topology.queue, "--out", str(out)]
    php = subprocess.Popen(  # noqa: ASYNC220 - it runs beside the consumer; polled without blocking below
        [*worker, "--port", port, "--idle-seconds", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with anyio.fail_after(180):
            await consumer.run()
            while php.poll() is None:
                await anyio.sleep(0.1)
    finally:
        php.kill()
    assert php.returncode == 0, php.stdout.read() if php.stdout else ""
    everything = [("py", *c) for c in calls] + [("php", *c) for c in _php_lines(out)]
    always = {f"php-{i}" for i in range(50, count + 1, 50)}
    ok = Counter(job_id for _, job_id, _, result in everything if result == "ok")
    assert set(ok) == {f"php-{i}" for i in range(1, count + 1)} - always, "a message was lost"
    assert max(ok.values()) == 1, "a message succeeded twice"
    # Attempts are counted across languages: an always-failing message is called 1 + 3 times, whoever calls.
    tries = Counter(job_id for _, job_id, _, _ in everything if job_id in always)
    assert tries == dict.fromkeys(always, 4)
    assert {lang for lang, *_ in everything} == {"py", "php"}, "both languages should have worked"
    dead = await _drain(amqp_broker, topology.dead_letter_queue, len(always))
    assert sorted(json.loads(m.body)["id"] for m in dead) == sorted(always)
    for message in dead:
        assert message.headers.get(SWARROT_ATTEMPTS_HEADER) == 3
        # swarrow's dead letters say why in its headers; swarrot's re-raise leaves RabbitMQ's x-death.
        assert ERROR_TYPE_HEADER in message.headers or message.headers["x-death"][0]["reason"] == "rejected"
    for name, _ in topology.queues():
        if name not in ("unroutable", topology.dead_letter_queue):
            info = await amqp_broker.inspect_queue(name)
            assert info is not None and info.message_count == 0, name


async def _drain(broker: AmqpBroker, queue: str, count: int) -> list[Message]:
    provider = broker.provider(queue, prefetch=count)
    await provider.start()
    taken = []
    with anyio.fail_after(20):
        while len(taken) < count:
            message = await provider.receive()
            assert message is not None
            taken.append(message)
    for message in taken:
        await provider.ack(message)
    await provider.close()
    return taken
