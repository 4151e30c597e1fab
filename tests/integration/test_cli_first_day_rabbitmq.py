"""Issue 23 through the `swarrow` command as a real process against RabbitMQ (the newcomer's first day)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from swarrow.amqp import AmqpBroker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def swarrow(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarrow", *args],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k != "SWARROW_URL"}, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def queue(amqp_url: str, queue_name: str) -> Iterator[str]:
    """A unique queue name; it, its retry queues and its dead-letter queue are deleted afterwards."""
    yield queue_name

    async def cleanup() -> None:
        broker = AmqpBroker(amqp_url)
        try:
            for name in [queue_name, f"{queue_name}.dead", *(f"{queue_name}.retry.{k}" for k in range(1, 6))]:
                await broker.delete_queue(name)
        finally:
            await broker.close()

    anyio.run(cleanup)


# -- 2. --workers N --stop-when-idle: a batch job draining a queue -----------------------------------------


def test_a_pool_with_stop_when_idle_drains_the_queue_and_exits_0(
    amqp_url: str, queue: str, tmp_path: Path
) -> None:
    assert swarrow("declare", "--url", amqp_url, "-q", queue, "--no-retry").returncode == 0
    published = swarrow("publish", "--url", amqp_url, "-q", queue, "--body", "job {n}", "--count", "40")
    assert published.returncode == 0, published.stderr
    record = tmp_path / "ids"
    done = swarrow(
        "consume", "tests.cli_callbacks:record", "--url", amqp_url, "-q", queue, "--no-retry",
        "--workers", "2", "--stop-when-idle", "1s", "--concurrency", "2", "--prefetch", "2",
        env={"SWARROW_TEST_RECORD": str(record)},
        timeout=45,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ids = record.read_text().split()
    assert len(ids) == 40 and len(set(ids)) == 40
    assert "; restarting" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("stopped for idle after") == 2, done.stderr[-3000:]


# -- 27. publish to an exchange ----------------------------------------------------------------------------


def test_publish_to_a_missing_exchange_exits_2_naming_it(amqp_url: str) -> None:
    done = swarrow(
        "publish", "--url", amqp_url, "--exchange", "swarrow-no-such-exchange", "-k", "x", "--body", "y"
    )
    assert done.returncode == 2, done.stderr
    assert "exchange 'swarrow-no-such-exchange' does not exist" in done.stderr
    assert "crashed" not in done.stderr and "guest:guest" not in done.stderr


def test_an_unroutable_publish_to_an_exchange_exits_1_saying_so(amqp_url: str) -> None:
    done = swarrow(
        "publish", "--url", amqp_url, "--exchange", "amq.direct", "-k", "swarrow.nobody.here", "--body", "y"
    )
    assert done.returncode == 1, done.stderr
    assert "not confirmed: " in done.stderr and "message returned as unroutable" in done.stderr
    assert "1 message(s) not confirmed" in done.stderr


def test_publish_properties_reach_a_real_consumer(amqp_url: str, queue: str, tmp_path: Path) -> None:
    assert swarrow("declare", "--url", amqp_url, "-q", queue, "--no-retry").returncode == 0
    published = swarrow("publish", "--url", amqp_url, "-q", queue, "--body", "x", "--message-id", "order-1",
                        "--correlation-id", "c-1", "--reply-to", "answers", "--expiration", "1h",
                        "--type", "order.created", "--app-id", "shop", "--priority", "3")  # fmt: skip
    assert published.returncode == 0, published.stderr

    async def get() -> tuple[object, ...]:
        broker = AmqpBroker(amqp_url)
        try:
            provider = broker.provider(queue, prefetch=1)
            await provider.start()
            with anyio.fail_after(10):
                message = await provider.receive()
            assert message is not None
            await provider.ack(message)
            await provider.close()
            return (message.message_id, message.correlation_id, message.reply_to, message.expiration,
                    message.type, message.app_id, message.priority)  # fmt: skip
        finally:
            await broker.close()

    assert anyio.run(get) == ("order-1", "c-1", "answers", "3600000", "order.created", "shop", 3)


# -- 4. a wrong vhost or a refused login, said in words (exit 4) -------------------------------------------


def _with(url: str, *, password: str | None = None, vhost: str | None = None) -> str:
    scheme, rest = url.split("://", 1)
    credentials, location = rest.split("@", 1)
    user, _, old = credentials.partition(":")
    host = location.split("/", 1)[0]
    return f"{scheme}://{user}:{password or old}@{host}/{vhost or ''}"


_EVERY_COMMAND = {
    "consume": ["consume", "tests.cli_callbacks:ok", "--no-retry"],
    "declare": ["declare", "--no-retry"],
    "publish": ["publish", "--body", "x"],
    "call": ["call", "--body", "x", "--timeout", "5s"],
    "dead list": ["dead", "list"],
    "dead replay": ["dead", "replay"],
}


@pytest.mark.parametrize("command", list(_EVERY_COMMAND))
def test_an_unknown_vhost_is_exit_4_naming_it_and_the_user(amqp_url: str, command: str) -> None:
    url = _with(amqp_url, vhost="swarrow-no-such-vhost")
    done = swarrow(*_EVERY_COMMAND[command], "--url", url, "-q", "q")
    assert done.returncode == 4, done.stderr
    assert "vhost 'swarrow-no-such-vhost' not found or access refused for user 'guest'" in done.stderr
    assert "Expected one of" not in done.stderr and "Connection.Close" not in done.stderr
    # what aio-pika and aiormq say about it would be untrue: nothing reconnects after a failed start
    assert "Reconnecting" not in done.stderr and "creating transport" not in done.stderr


@pytest.mark.parametrize("command", list(_EVERY_COMMAND))
def test_a_refused_login_is_exit_4_naming_the_user_never_the_password(amqp_url: str, command: str) -> None:
    done = swarrow(*_EVERY_COMMAND[command], "--url", _with(amqp_url, password="n0t-Th3-pw"), "-q", "q")
    assert done.returncode == 4, done.stderr
    assert "login refused for user 'guest': wrong user name or password" in done.stderr
    assert "n0t-Th3-pw" not in done.stderr + done.stdout


# -- 11, 21. start-up says what is true, once --------------------------------------------------------------


def test_a_missing_queue_is_reported_before_anything_says_consuming(amqp_url: str, queue: str) -> None:
    done = swarrow("consume", "tests.cli_callbacks:ok", "--url", amqp_url, "-q", queue, "--no-retry")
    assert done.returncode == 2
    assert f"queue {queue!r} does not exist" in done.stderr and "consuming" not in done.stderr


def test_start_up_is_one_line_for_the_queues_and_one_for_consuming(amqp_url: str, queue: str) -> None:
    swarrow("declare", "--url", amqp_url, "-q", queue, "--retry-delays", "1s,2s")
    swarrow("publish", "--url", amqp_url, "-q", queue, "--body", "x", "--count", "2")
    done = swarrow("consume", "tests.cli_callbacks:ok", "--url", amqp_url, "-q", queue,
                   "--retry-delays", "1s,2s", "--max-messages", "2", "--declare")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert sum(" consuming " in line for line in lines) == 1, lines
    queues = [line for line in lines if "swarrow.runner:" in line]
    assert len(queues) == 1 and f"found {queue} (2 messages), {queue}.retry.1 (0 messages)" in queues[0]
    consuming = next(n for n, line in enumerate(lines) if " consuming " in line)
    assert lines.index(queues[0]) < consuming


# -- 5. the retry queues that exist decide the delays (their TTLs read from RabbitMQ) ----------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_consume_without_delays_retries_through_the_existing_queues(
    amqp_url: str, queue: str, tmp_path: Path, workers: str
) -> None:
    assert swarrow("declare", "--url", amqp_url, "-q", queue, "--retry-delays", "200ms,200ms").returncode == 0
    assert swarrow("publish", "--url", amqp_url, "-q", queue, "--body", "x").returncode == 0
    done = swarrow("consume", "tests.cli_callbacks:boom", "--url", amqp_url, "-q", queue,
                   "--workers", workers, "--stop-when-idle", "2s", timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"using the existing retry queues {queue}.retry.1..2 (delays 200ms,200ms)" in done.stderr
    assert "dead-lettered after 3 call(s)" in done.stderr  # the first call and two retries: as declared

    async def dead() -> int:
        broker = AmqpBroker(amqp_url)
        try:
            info = await broker.inspect_queue(f"{queue}.dead")
            assert info is not None
            return info.message_count
        finally:
            await broker.close()

    assert anyio.run(dead) == 1


def test_given_delays_that_differ_from_rabbitmqs_queues_exit_2_naming_theirs(
    amqp_url: str, queue: str
) -> None:
    assert swarrow("declare", "--url", amqp_url, "-q", queue, "--retry-delays", "200ms,200ms").returncode == 0
    done = swarrow(
        "consume", "tests.cli_callbacks:ok", "--url", amqp_url, "-q", queue, "--retry-delays", "1s"
    )
    assert done.returncode == 2
    assert "with delays 200ms,200ms, not 1s: consume with --retry-delays 200ms,200ms" in done.stderr


# -- 6. --no-retry on RabbitMQ: the queue's dead-letter exchange read from the broker ----------------------


def test_no_retry_on_a_queue_without_a_dead_letter_exchange_says_failures_are_dropped(
    amqp_url: str, queue: str
) -> None:
    assert swarrow("declare", "--url", amqp_url, "-q", queue, "--no-retry").returncode == 0
    assert swarrow("publish", "--url", amqp_url, "-q", queue, "--body", "x").returncode == 0
    done = swarrow("consume", "tests.cli_callbacks:boom", "--url", amqp_url, "-q", queue, "--no-retry",
                   "--max-messages", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        f"retries are off and {queue} has no dead-letter exchange: a failed message is rejected and DROPPED"
        in (done.stderr)
    )
    assert f"1 message(s) from {queue} were rejected without requeue this run" in done.stderr


def test_no_retry_on_a_queue_with_a_dead_letter_exchange_says_so(amqp_url: str, queue: str) -> None:
    async def declare() -> None:
        broker = AmqpBroker(amqp_url)
        try:
            await broker.declare_queue(f"{queue}.dead")
            await broker.declare_queue(
                queue, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{queue}.dead"}
            )
        finally:
            await broker.close()

    anyio.run(declare)
    done = swarrow("consume", "tests.cli_callbacks:ok", "--url", amqp_url, "-q", queue, "--no-retry",
                   "--stop-when-idle", "200ms")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"retries are off: a failed message is rejected to {queue}'s dead-letter exchange" in done.stderr
    assert "DROPPED" not in done.stderr


# -- a user the broker lets in but not at the queue: a clear refusal, not "the consumer crashed" ------------


@pytest.fixture
def limited_user(amqp_url: str) -> Iterator[str]:
    """A user (awkward password), own vhost: declares `allowed.*` and `unreadable.*`, reads `allowed.*`."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed here")
    ctl = ["rabbitmqctl", "-n", os.environ.get("SWARROW_TEST_NODE", "rabbit@localhost")]
    name = f"swarrow-perm-{uuid.uuid4().hex[:8]}"
    password = "p/#?@%:w" + uuid.uuid4().hex[:6]

    def run(*args: str) -> None:
        done = subprocess.run([*ctl, *args], check=False, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"rabbitmqctl {args[0]}: {done.stdout}{done.stderr}"

    run("add_vhost", name)
    try:
        run("add_user", name, password)
        run("set_permissions", "-p", name, name, "^(allowed|unreadable).*", ".*", "^allowed.*")
        yield _with(amqp_url, vhost=name).replace("guest:guest@", f"{name}:{password}@")
    finally:
        for cleanup in (["delete_vhost", name], ["delete_user", name]):
            subprocess.run([*ctl, *cleanup], check=False, capture_output=True, timeout=60)


@pytest.mark.parametrize("command", ["declare", "consume"])
def test_a_queue_the_user_may_not_configure_is_a_one_line_refusal_naming_it(
    limited_user: str, command: str
) -> None:
    target = ["tests.cli_callbacks:ok", "--declare"] if command == "consume" else []
    done = swarrow(command, *target, "--url", limited_user, "-q", "forbidden", "--no-retry")
    assert done.returncode == 2, done.stderr
    assert "RabbitMQ refused" in done.stderr and "'forbidden'" in done.stderr and "permission" in done.stderr
    assert "crashed" not in done.stderr and "declaring failed" not in done.stderr
    assert "p/#?@%:w" not in done.stderr + done.stdout


def test_a_queue_the_user_may_not_read_is_a_one_line_refusal_naming_it(limited_user: str) -> None:
    assert swarrow("declare", "--url", limited_user, "-q", "unreadable", "--no-retry").returncode == 0
    target = ["tests.cli_callbacks:ok", "-q", "unreadable", "--no-retry"]
    done = swarrow("consume", *target, "--url", limited_user)
    assert done.returncode == 2, done.stderr
    assert "RabbitMQ refused to consume from queue 'unreadable'" in done.stderr
    assert "read permission" in done.stderr
    assert "crashed" not in done.stderr and "connection loss" not in done.stderr
    assert "p/#?@%:w" not in done.stderr + done.stdout


def test_a_dead_letter_queue_the_user_may_not_read_is_exit_2_naming_it(limited_user: str) -> None:
    assert swarrow("declare", "--url", limited_user, "-q", "unreadable.dead", "--no-retry").returncode == 0
    done = swarrow("dead", "list", "--url", limited_user, "-q", "unreadable")
    assert done.returncode == 2, done.stderr
    assert "RabbitMQ refused to read queue 'unreadable.dead'" in done.stderr
    assert "read permission" in done.stderr
    assert "p/#?@%:w" not in done.stderr + done.stdout
