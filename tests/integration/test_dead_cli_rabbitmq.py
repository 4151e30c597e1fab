"""`swarrow dead list | show | replay | purge` as real processes against RabbitMQ, and their faults.

kill -9 of a replay at random points and a broker that goes away mid-replay (a loopback TCP proxy the
test cuts): every id ends in Q, in Q.dead, or in both (a counted duplicate) — never in neither.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest
from _tcp_proxy import TcpProxy
from test_dead_letters_rabbitmq import drain

from swarrow import Message
from swarrow.amqp import AmqpBroker
from swarrow.topology import dead_letter_headers

pytestmark = [pytest.mark.integration]


def swarrow(*args: str, url: str, stdin: str | None = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swarrow", "dead", *args, "--url", url],
                          capture_output=True, text=True, timeout=120, input=stdin)  # fmt: skip


def spawn(*args: str, url: str) -> subprocess.Popen[str]:
    extra = ["--no-progress"] if args[0] == "replay" else []
    command = [sys.executable, "-m", "swarrow", "dead", *args, "--url", url, *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def _setup(
    url: str, queue: str, count: int, error: str = "ValueError", body: bytes = b"x" * 100
) -> None:
    broker = AmqpBroker(url)
    await broker.connect()
    try:
        for name in (queue, f"{queue}.dead"):
            await broker.declare_queue(name)
        publisher = broker.publisher()

        async def worker(start: int) -> None:
            for i in range(start, count, 50):
                headers = dead_letter_headers(
                    error if i % 2 else "Other", f"boom {i}", attempts=4, queue=queue
                )
                letter = Message(
                    body, headers=headers, message_id=f"m{i}", delivery_mode=2
                )  # survives restarts
                await publisher.publish(letter, f"{queue}.dead")

        async with anyio.create_task_group() as group:
            for start in range(min(50, count)):
                group.start_soon(worker, start)
    finally:
        await broker.close()


async def _settled(url: str, queue: str, total: int) -> None:
    """Wait until no consumer holds Q.dead and every id is back somewhere (the broker requeues on close)."""
    broker = AmqpBroker(url)
    await broker.connect()
    try:
        with anyio.fail_after(30):
            while True:
                dead = await broker.inspect_queue(f"{queue}.dead")
                work = await broker.inspect_queue(queue)
                assert dead is not None and work is not None
                if dead.consumer_count == 0 and dead.message_count + work.message_count >= total:
                    return
                await anyio.sleep(0.05)
    finally:
        await broker.close()


async def _held_by_a_consumer(url: str, queue: str) -> None:
    broker = AmqpBroker(url)
    await broker.connect()
    try:
        with anyio.fail_after(60):
            while (info := await broker.inspect_queue(f"{queue}.dead")) is None or info.consumer_count == 0:
                await anyio.sleep(0.01)
    finally:
        await broker.close()


async def _replayed_at_least(url: str, queue: str, count: int) -> None:
    broker = AmqpBroker(url)
    await broker.connect()
    try:
        with anyio.fail_after(60):
            while (info := await broker.inspect_queue(queue)) is None or info.message_count < count:
                await anyio.sleep(0.01)
    finally:
        await broker.close()


def _where(url: str, queue: str) -> tuple[Counter[str], Counter[str]]:
    async def both() -> tuple[Counter[str], Counter[str]]:
        work = Counter(str(m.message_id) for m in await drain(url, queue))
        dead = Counter(str(m.message_id) for m in await drain(url, f"{queue}.dead"))
        return work, dead

    return anyio.run(both, backend="asyncio")


async def _cleanup(url: str, queue: str) -> None:
    broker = AmqpBroker(url)
    await broker.connect()
    for name in (queue, f"{queue}.dead"):
        await broker.delete_queue(name)
    await broker.close()


@pytest.fixture
def queue(amqp_url: str, queue_name: str) -> Iterator[str]:
    yield queue_name
    anyio.run(_cleanup, amqp_url, queue_name, backend="asyncio")


def test_list_show_replay_purge_end_to_end(amqp_url: str, queue: str) -> None:
    anyio.run(_setup, amqp_url, queue, 10, backend="asyncio")
    listed = swarrow("list", "-q", queue, "--json", url=amqp_url)
    assert listed.returncode == 0, listed.stderr
    summary = json.loads(listed.stdout)
    assert summary["total"] == 10 and {g["key"]: g["count"] for g in summary["groups"]} == {
        "ValueError": 5,
        "Other": 5,
    }
    text = swarrow("list", "-q", queue, url=amqp_url)
    assert "10 dead letters" in text.stdout and "read in" in text.stdout
    shown = swarrow("show", "-q", queue, "--message-id", "m3", "--body", url=amqp_url)
    assert shown.returncode == 0 and "message_id=m3" in shown.stdout and "error=ValueError" in shown.stdout
    assert "x-swarrow-failed-at" in shown.stdout and "body (100 bytes, text)" in shown.stdout
    replayed = swarrow("replay", "-q", queue, "--error-type", "ValueError", url=amqp_url)
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 5, kept 5, failed 0" in replayed.stdout
    refused = swarrow("purge", "-q", queue, url=amqp_url)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    purged = swarrow("purge", "-q", queue, "--yes", url=amqp_url)
    assert purged.returncode == 0 and "purged 5, kept 0" in purged.stdout
    work, dead = _where(amqp_url, queue)
    assert sorted(work) == [f"m{i}" for i in (1, 3, 5, 7, 9)] and not dead


def test_errors_are_one_line_with_their_exit_code(amqp_url: str, queue: str) -> None:
    missing = swarrow("list", "-q", queue, url=amqp_url)
    assert missing.returncode == 2 and f"'{queue}.dead' does not exist" in missing.stderr
    down = swarrow("list", "-q", queue, url="amqp://guest:s3cret@127.0.0.1:1/")
    assert down.returncode == 4 and "s3cret" not in down.stderr + down.stdout
    bad = swarrow("replay", "-q", queue, "--since", "last tuesday", url=amqp_url)
    assert bad.returncode == 2 and "invalid time 'last tuesday'" in bad.stderr


def _ids_everywhere(url: str, queue: str, total: int) -> tuple[int, int]:
    """(duplicates, lost) over ids m0..m{total-1}; asserts nothing unexpected showed up."""
    work, dead = _where(url, queue)
    expected = {f"m{i}" for i in range(total)}
    assert set(work) | set(dead) <= expected
    lost = len(expected - set(work) - set(dead))
    duplicates = sum(work.values()) + sum(dead.values()) - len(set(work) | set(dead))
    return duplicates, lost


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_9_during_replay_never_loses_a_message(amqp_url: str, queue: str) -> None:
    total = 4000
    rng = random.Random(os.environ.get("SWARROW_TEST_SEED", "dead"))
    duplicates = 0
    points = [0, *sorted(rng.randrange(1, total) for _ in range(4))]  # 0: before it replayed anything
    for point in points:
        anyio.run(_setup, amqp_url, queue, total, backend="asyncio")
        replay = spawn("replay", "-q", queue, url=amqp_url)
        anyio.run(_replayed_at_least, amqp_url, queue, point, backend="asyncio")
        replay.send_signal(signal.SIGKILL)
        replay.wait(10)
        anyio.run(_settled, amqp_url, queue, total, backend="asyncio")
        more, lost = _ids_everywhere(amqp_url, queue, total)
        assert lost == 0, f"killed after {point}: {lost} message(s) in neither queue"
        duplicates += more
    print(f"kill -9 during replay at {points} of {total}: lost 0, duplicates {duplicates}")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_9_during_list_puts_everything_back(amqp_url: str, queue: str) -> None:
    total = 3000
    anyio.run(_setup, amqp_url, queue, total, backend="asyncio")
    listing = spawn("list", "-q", queue, url=amqp_url)
    anyio.run(_held_by_a_consumer, amqp_url, queue, backend="asyncio")  # it is reading: kill it now
    listing.send_signal(signal.SIGKILL)
    assert listing.wait(10) == -signal.SIGKILL
    anyio.run(_settled, amqp_url, queue, total, backend="asyncio")
    work, dead = _where(amqp_url, queue)
    assert not work and sorted(dead) == sorted(f"m{i}" for i in range(total)) and max(dead.values()) == 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_broker_going_away_mid_replay_exits_4_and_a_rerun_finishes(amqp_url: str, queue: str) -> None:
    total = 6000
    anyio.run(_setup, amqp_url, queue, total, backend="asyncio")
    parts = urlsplit(amqp_url)
    proxy = TcpProxy(parts.port or 5672)
    try:
        proxied = urlunsplit(
            parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}")
        )
        replay = spawn("replay", "-q", queue, url=proxied)
        anyio.run(_replayed_at_least, amqp_url, queue, 1000, backend="asyncio")  # mid-way, for sure
        proxy.cut()
        _, stderr = replay.communicate(timeout=60)
        assert replay.returncode == 4, stderr
        assert "lost" in stderr and "run the replay again" in stderr
        assert stderr.count("\n") == 1, stderr  # one clear line, no traceback
        proxy.restore()
        anyio.run(_settled, amqp_url, queue, total, backend="asyncio")
        rerun = swarrow("replay", "-q", queue, url=proxied)
        assert rerun.returncode == 0, rerun.stderr
    finally:
        proxy.close()
    work, dead = _where(amqp_url, queue)
    assert not dead, "the rerun left dead letters behind"
    assert set(work) == {f"m{i}" for i in range(total)}
    duplicates = sum(work.values()) - total
    print(f"broker gone mid-replay: exit 4, rerun finished; duplicates {duplicates}")
    assert duplicates <= 2000  # at most the batches in flight when it went away


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_list_reads_100_000_dead_letters_in_bounded_memory(amqp_url: str, queue: str) -> None:
    total, size = 100_000, 2048  # 200 MB of bodies: a pass that held them could not stay under the bound
    anyio.run(_setup, amqp_url, queue, total, "ValueError", b"y" * size, backend="asyncio")
    listing = spawn("list", "-q", queue, "--json", url=amqp_url)
    _, status, usage = os.wait4(listing.pid, 0)
    assert listing.stdout is not None
    summary = json.loads(listing.stdout.read())
    listing.returncode = os.waitstatus_to_exitcode(status)
    assert listing.returncode == 0
    assert summary["total"] == total and sum(g["count"] for g in summary["groups"]) == total
    peak_mb = usage.ru_maxrss / 1024
    print(
        f"dead list: {total} letters of {size} B in {summary['elapsed_seconds']} s, peak RSS {peak_mb:.0f} MB"
    )
    assert peak_mb < 150
    anyio.run(_settled, amqp_url, queue, total, backend="asyncio")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(
    "SWARROW_TEST_NODE" not in os.environ,
    reason="restarts a RabbitMQ node: set SWARROW_TEST_NODE to a node of your own (never a shared one)",
)
def test_a_real_broker_restart_mid_replay_exits_4_and_a_rerun_finishes(amqp_url: str, queue: str) -> None:
    total = 20_000
    node = os.environ["SWARROW_TEST_NODE"]
    anyio.run(_setup, amqp_url, queue, total, backend="asyncio")
    replay = spawn("replay", "-q", queue, url=amqp_url)
    anyio.run(_replayed_at_least, amqp_url, queue, 3000, backend="asyncio")
    subprocess.run(["rabbitmqctl", "-n", node, "stop_app"], check=True, capture_output=True, timeout=120)
    try:
        _, stderr = replay.communicate(timeout=60)
    finally:
        subprocess.run(["rabbitmqctl", "-n", node, "start_app"], check=True, capture_output=True, timeout=120)
    assert replay.returncode == 4, stderr
    assert "run the replay again" in stderr and stderr.count("\n") == 1, stderr
    deadline = time.monotonic() + 60
    while (
        rerun := swarrow("replay", "-q", queue, url=amqp_url)
    ).returncode == 4 and time.monotonic() < deadline:
        time.sleep(1)  # the node is still starting its listeners
    assert rerun.returncode == 0, rerun.stderr
    work, dead = _where(amqp_url, queue)
    assert not dead and set(work) == {f"m{i}" for i in range(total)}
    print(f"real broker restart mid-replay: exit 4, rerun finished; duplicates {sum(work.values()) - total}")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_9_during_a_filtered_purge_only_ever_drops_selected_letters(amqp_url: str, queue: str) -> None:
    total = 4000
    anyio.run(_setup, amqp_url, queue, total, backend="asyncio")  # odd ids ValueError, even ids Other
    purge = spawn("purge", "-q", queue, "--error-type", "ValueError", "--yes", url=amqp_url)
    anyio.run(_held_by_a_consumer, amqp_url, queue, backend="asyncio")
    time.sleep(
        random.Random(os.environ.get("SWARROW_TEST_SEED", "purge")).uniform(0.0, 0.5)
    )  # any point will do
    purge.send_signal(signal.SIGKILL)
    purge.wait(10)
    anyio.run(_settled_held, amqp_url, queue, total // 2, backend="asyncio")
    work, dead = _where(amqp_url, queue)
    assert not work
    assert {f"m{i}" for i in range(0, total, 2)} <= set(dead), "a letter that was not selected left Q.dead"
    assert max(dead.values()) == 1


async def _settled_held(url: str, queue: str, at_least: int) -> None:
    """Wait until nothing holds Q.dead and `at_least` letters are ready (the broker put back what it held)."""
    broker = AmqpBroker(url)
    await broker.connect()
    try:
        with anyio.fail_after(30):
            while (info := await broker.inspect_queue(f"{queue}.dead")) is None or (
                info.consumer_count or info.message_count < at_least
            ):
                await anyio.sleep(0.05)
    finally:
        await broker.close()
