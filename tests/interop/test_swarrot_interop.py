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


def _worker(
    broker: AmqpBroker,
    queue: str,
    calls: list[tuple[str, int, str]],
    messages: list[Message] | None = None,
    *,
    prefetch: int = 50,
    pace: float = 0,
    **options: Any,
) -> Consumer:
    """A swarrow worker in swarrot mode recording (id, seen, ok|fail) per call (and messages, if asked)."""

    async def callback(message: Message) -> None:
        if messages is not None:
            messages.append(message)
        if pace:
            await anyio.sleep(pace)  # a job taking time, so the polling PHP worker gets its share
        job_id, seen, fail = _job(message)
        calls.append((job_id, seen, "fail" if fail else "ok"))
        if fail:
            raise RuntimeError(f"python says no to {job_id}")

    provider = broker.provider(queue, prefetch=prefetch)
    layers = default_stack(
        provider=provider, publisher=broker.publisher(), signals=False, log=False, retry_attempts=3,
        retry_delays=[0.3, 0.3, 0.3], retry_topology="swarrot", **options,
    )  # fmt: skip
    return Consumer(provider, Stack(*layers, callback=callback), concurrency=5, grace_period=5)


def _php_lines(path: Path) -> list[tuple[str, int, str]]:
    lines = path.read_text().split("\n") if path.exists() else []
    return [(f[1], int(f[2]), f[3]) for f in (line.split() for line in lines if line.startswith("php "))]


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
    # Flat headers: swarrot's publisher cannot send a nested table again (see the nested-table test).
    _php("php_publisher.php", "--queue", topology.queue, "--count", "50", "--port", port, "--headers", "flat",
         "--always-every", "10")  # fmt: skip
    out = tmp_path / "php.log"
    # A PHP worker with a bug fails the 50 messages; swarrot's retry republishes them to `retry`.
    _php("swarrot_worker.php", "--queue", topology.queue, "--out", str(out), "--port", port,
         "--max-messages", "50", "--fail-all")  # fmt: skip
    calls: list[tuple[str, int, str]] = []
    consumer = _worker(amqp_broker, topology.queue, calls, max_messages=45 + 5 * 3)
    with anyio.fail_after(60):
        await consumer.run()
    php = _php_lines(out)
    php_fails = Counter(job_id for job_id, _, result in php if result == "fail")
    assert len(php_fails) == 50 and set(php_fails.values()) == {1}
    always = {f"php-{i}" for i in range(10, 51, 10)}
    # swarrow counts the PHP worker's retry: the header it saw first is the number of PHP failures.
    assert sorted((job_id, seen) for job_id, seen, result in calls if result == "ok") == sorted(
        (job_id, 1) for job_id in set(php_fails) - always
    )
    # The always-failing ones: retries 1 (PHP's), 2, 3 seen here, then swarrow dead-letters them.
    assert sorted((job_id, seen) for job_id, seen, result in calls if result == "fail") == sorted(
        (job_id, seen) for job_id in always for seen in (1, 2, 3)
    )
    dead = await _drain(amqp_broker, topology.dead_letter_queue, len(always))
    assert sorted(json.loads(m.body)["id"] for m in dead) == sorted(always)
    for message in dead:  # swarrow's letter, with the PHP side's header counted in
        assert message.headers[SWARROT_ATTEMPTS_HEADER] == 3 and message.headers[RETRY_ATTEMPT_HEADER] == 3
        assert message.headers[ERROR_TYPE_HEADER].endswith("RuntimeError")
    await _assert_empty(amqp_broker, topology)


async def test_swarrow_retries_are_finished_by_a_php_worker_counting_them(
    amqp_broker: AmqpBroker, amqp_url: str, topology: SwarrotTopology, tmp_path: Path
) -> None:
    port = _port(amqp_url)
    _php("php_publisher.php", "--queue", topology.queue, "--count", "40", "--fail-every", "1", "--port", port,
         "--always-every", "10", "--headers", "flat")  # fmt: skip
    calls: list[tuple[str, int, str]] = []
    consumer = _worker(amqp_broker, topology.queue, calls, max_messages=40)
    with anyio.fail_after(60):
        await consumer.run()  # every first call fails: 40 copies with both attempt headers go to `retry`
    assert len(calls) == 40 and all(result == "fail" and seen == 0 for _, seen, result in calls)
    out = tmp_path / "php.log"
    _php("swarrot_worker.php", "--queue", topology.queue, "--out", str(out), "--port", port,
         "--idle-seconds", "3")  # fmt: skip
    php = _php_lines(out)
    always = {f"php-{i}" for i in range(10, 41, 10)}
    assert sorted((job_id, seen) for job_id, seen, result in php if result == "ok") == sorted(
        (job_id, 1) for job_id, _, _ in calls if job_id not in always
    )
    # swarrot counts swarrow's retry as its first: it calls the always-failing ones with 1, 2, 3 retries
    # seen, then re-raises, and its ack nacks them into Q_dl through `dl`.
    assert sorted((job_id, seen) for job_id, seen, result in php if result == "fail") == sorted(
        (job_id, seen) for job_id in always for seen in (1, 2, 3)
    )
    dead = await _drain(amqp_broker, topology.dead_letter_queue, len(always))
    assert sorted(json.loads(m.body)["id"] for m in dead) == sorted(always)
    for message in dead:  # swarrot's letter: RabbitMQ's x-death, swarrow's header kept as it was
        assert message.headers[SWARROT_ATTEMPTS_HEADER] == 3 and message.headers[RETRY_ATTEMPT_HEADER] == 1
        assert ERROR_TYPE_HEADER not in message.headers
        assert message.headers["x-death"][0]["reason"] == "rejected"
    await _assert_empty(amqp_broker, topology)


async def _mixed(
    broker: AmqpBroker,
    url: str,
    topology: SwarrotTopology,
    tmp_path: Path,
    batches: list[list[str]],
    **options: Any,
) -> tuple[list[tuple[str, str, int, str]], list[Message], list[str]]:
    """Publish each batch from PHP, then run a swarrow and a PHP worker on the queue until both are idle.

    Returns every call ("py"|"php", id, retries seen, ok|fail), the messages swarrow's callback got, and
    the ids whose retry PHP could not publish (swarrot's publisher re-types headers and may throw).
    """
    port = _port(url)
    for batch in batches:
        _php("php_publisher.php", "--queue", topology.queue, "--port", port, *batch)
    out = tmp_path / "php.log"
    calls: list[tuple[str, int, str]] = []
    seen: list[Message] = []
    options = {"stop_when_idle": 4, **options}
    consumer = _worker(broker, topology.queue, calls, seen, prefetch=10, pace=0.005, **options)
    worker = ["php", str(HERE / "swarrot_worker.php"), "--queue", topology.queue, "--out", str(out)]
    php = subprocess.Popen(  # noqa: ASYNC220 - it runs beside the consumer; polled without blocking below
        [*worker, "--port", port, "--idle-seconds", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with anyio.fail_after(240):
            await consumer.run()
            while php.poll() is None:
                await anyio.sleep(0.1)
    finally:
        php.kill()
    assert php.returncode == 0, php.stdout.read() if php.stdout else ""
    lines = out.read_text().split("\n") if out.exists() else []
    php_errors = [line.split()[1] for line in lines if line.startswith("php-error ")]
    php_calls = [(f[1], int(f[2]), f[3]) for f in (line.split() for line in lines if line.startswith("php "))]
    everything = [("py", *c) for c in calls] + [("php", *c) for c in php_calls]
    return everything, seen, php_errors


async def test_mixed_php_and_swarrow_consumers_share_one_queue(
    amqp_broker: AmqpBroker, amqp_url: str, topology: SwarrotTopology, tmp_path: Path
) -> None:
    """2,000 PHP-published messages (half application/json, half without a content type), failing once
    or always, taken by a swarrow worker and a PHP worker written as swarrot's provider, retry, ack and
    php-amqplib publisher are: each success once, attempts counted across languages, both sides'
    dead letters in Q_dl."""
    count = 1000
    common = ["--count", str(count), "--fail-every", "10", "--always-every", "50", "--headers", "flat"]
    everything, seen, php_errors = await _mixed(
        amqp_broker, amqp_url, topology, tmp_path,
        [[*common, "--id-prefix", "json-"], [*common, "--id-prefix", "bare-", "--no-content-type"]],
        max_messages=600,  # then it stops mid-stream (acks flushed, prefetch handed back), PHP goes on
    )  # fmt: skip
    assert php_errors == [], "swarrot's publisher could not send a retry again (a header it cannot type?)"
    ids = {f"{p}{i}" for p in ("json-", "bare-") for i in range(1, count + 1)}
    always = {f"{p}{i}" for p in ("json-", "bare-") for i in range(50, count + 1, 50)}
    ok = Counter(job_id for _, job_id, _, result in everything if result == "ok")
    assert set(ok) == ids - always, "a message was lost"
    assert max(ok.values()) == 1, "a message succeeded twice"
    # Attempts are counted across languages: an always-failing message is called 1 + 3 times, whoever calls.
    tries = Counter(job_id for _, job_id, _, _ in everything if job_id in always)
    assert tries == dict.fromkeys(always, 4)
    # Retried ones changed hands: some calls saw the other language's retries.
    assert {lang for lang, *_ in everything} == {"py", "php"}, "both languages should have worked"
    # Properties and headers reach swarrow's callback as the PHP producer set them, after PHP retries too.
    for message in seen:
        job_id = json.loads(message.body)["id"]
        assert message.message_id == job_id and message.delivery_mode == 2
        assert message.content_type == (None if job_id.startswith("bare-") else "application/json")
        assert (message.headers["origin"], message.headers["tenant"], list(message.headers["tags"])) == (
            "php", 42, ["billing", "eu"],
        )  # fmt: skip
    dead = await _drain(amqp_broker, topology.dead_letter_queue, len(always))
    assert sorted(json.loads(m.body)["id"] for m in dead) == sorted(always)
    # The last call (3 retries seen) decides who dead-letters, and so what the letter says: swarrow's say
    # why in its headers, swarrot's re-raise (ack nacks it) leaves RabbitMQ's x-death, reason rejected.
    last = {job_id: lang for lang, job_id, retries, _ in everything if job_id in always and retries == 3}
    assert set(last) == always
    for message in dead:
        job_id = json.loads(message.body)["id"]
        assert message.headers.get(SWARROT_ATTEMPTS_HEADER) == 3
        if last[job_id] == "py":
            assert message.headers[ERROR_TYPE_HEADER].endswith("RuntimeError"), message.headers
        else:
            assert ERROR_TYPE_HEADER not in message.headers, message.headers
            assert message.headers["x-death"][0]["reason"] == "rejected", message.headers
    await _assert_empty(amqp_broker, topology)


async def test_mixed_consumers_lose_nothing_when_swarrots_publisher_cannot_resend_a_nested_table(
    amqp_broker: AmqpBroker, amqp_url: str, topology: SwarrotTopology, tmp_path: Path
) -> None:
    """swarrot's php-amqplib publisher types a nested table header as a string and throws: a PHP failure of
    such a message dead-letters it at once (swarrot's ack nacks it) instead of retrying. Nothing is lost
    or done twice: every message succeeds once or sits in Q_dl; swarrow's own retries of it still work."""
    count = 300
    everything, _, php_errors = await _mixed(
        amqp_broker, amqp_url, topology, tmp_path,
        [["--count", str(count), "--fail-every", "3", "--always-every", "50", "--headers", "nested"]],
    )  # fmt: skip
    ids = {f"php-{i}" for i in range(1, count + 1)}
    ok = Counter(job_id for _, job_id, _, result in everything if result == "ok")
    assert max(ok.values()) == 1, "a message succeeded twice"
    assert php_errors, "PHP should have failed to publish a retry of a message with a nested table"
    dead = await _drain(amqp_broker, topology.dead_letter_queue, len(ids) - len(ok))
    dead_ids = [json.loads(m.body)["id"] for m in dead]
    assert len(dead_ids) == len(set(dead_ids)) and not set(dead_ids) & set(ok)
    assert set(dead_ids) | set(ok) == ids, "a message was lost"
    assert set(php_errors) <= set(dead_ids)
    # swarrow retried some of these messages, nested headers and all, and they then succeeded.
    assert any(lang == "py" and seen > 0 and result == "ok" for lang, _, seen, result in everything) or any(
        lang == "php" and seen > 0 and result == "ok" for lang, _, seen, result in everything
    )
    await _assert_empty(amqp_broker, topology)


async def _assert_empty(broker: AmqpBroker, topology: SwarrotTopology) -> None:
    for name, _ in topology.queues():
        if name not in ("unroutable", topology.dead_letter_queue):
            info = await broker.inspect_queue(name)
            assert info is not None and info.message_count == 0, name
    info = await broker.inspect_queue(topology.dead_letter_queue)
    assert info is not None and info.message_count == 0, "more dead letters than expected"


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
