"""Job tracking end to end on RabbitMQ: every job ends in the store with the right state and attempts,
across two workers sharing PostgreSQL, a database stopped mid-run, and a worker killed with -9."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO

import anyio
import anyio.to_thread
import pytest

from swarrow import Message
from swarrow.amqp import AmqpBroker
from swarrow.jobs import JobStore
from swarrow.topology import RetryTopology

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("jobs_worker.py")
DELAYS = (0.05, 0.1, 0.2)  # as in jobs_worker.py: a job that always fails runs 4 times


class Worker:
    """A `jobs_worker.py` subprocess with its output in a temporary file."""

    def __init__(self, amqp_url: str, queue: str, store: str, *options: str) -> None:
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), amqp_url, queue, store, *options],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.pid = self.process.pid

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    async def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(timeout):
            while self.process.poll() is None:
                await anyio.sleep(0.05)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


async def until(check: Callable[[], object], timeout: float, what: str, worker: Worker | None = None) -> None:
    """Poll an async `check` until it is truthy (bounded); on timeout, show the worker's output."""
    with anyio.move_on_after(timeout):
        while not await check():  # type: ignore[misc]
            await anyio.sleep(0.2)
        return
    output = f"; worker output:\n{worker.output()[-3000:]}" if worker is not None else ""
    pytest.fail(f"timed out after {timeout}s waiting for {what}{output}")


async def publish(broker: AmqpBroker, queue: str, jobs: dict[str, bytes]) -> None:
    """Publish with confirms, 500 in flight."""
    publisher = broker.publisher()
    items = list(jobs.items())
    for start in range(0, len(items), 500):
        async with anyio.create_task_group() as tg:
            for job_id, body in items[start : start + 500]:
                tg.start_soon(publisher.publish, Message(body, message_id=job_id, delivery_mode=2), queue)


def plan(count: int) -> dict[str, bytes]:
    """1% always failing, 10% failing once, the rest fine."""
    return {
        f"job-{n}": b"always" if n % 100 == 0 else b"once" if n % 10 == 5 else b"ok" for n in range(count)
    }


def expected(body: bytes) -> tuple[str, int]:
    return {b"ok": ("succeeded", 1), b"once": ("succeeded", 2), b"always": ("dead_lettered", 4)}[body]


async def run_10000(amqp_url: str, broker: AmqpBroker, queue: str, store_url: str, n_workers: int,
                    workers: list[Worker]) -> None:  # fmt: skip
    await RetryTopology(queue, DELAYS).declare(broker)
    jobs = plan(10_000)
    for _ in range(n_workers):
        workers.append(Worker(amqp_url, queue, store_url))
    await publish(broker, queue, jobs)
    async with JobStore.open(store_url) as store:

        async def all_finished() -> bool:
            return not await store.unfinished(jobs)

        await until(all_finished, 120, "every job to finish")
        for worker in workers:
            assert await worker.stop() == 0, worker.output()[-2000:]
        status = await store.status(jobs)
        assert await store.unfinished(jobs) == []
        stats = await store.stats(queue=queue)
    wrong = {
        i: (job.state, job.attempts) if job else None
        for i, job in status.items()
        if job is None or (job.state, job.attempts) != expected(jobs[i])
    }
    assert not wrong, f"{len(wrong)} jobs with the wrong state or attempts, e.g. {list(wrong.items())[:5]}"
    assert stats.by_state["succeeded"] == 9_900 and stats.by_state["dead_lettered"] == 100
    assert stats.top_errors == [("RuntimeError", 1_100)]  # the last error sticks: 1,000 once + 100 always
    dead = await broker.inspect_queue(f"{queue}.dead")
    assert dead is not None and dead.message_count == 100
    if n_workers > 1:  # both workers did their share
        pids = {job.pid for job in status.values() if job}
        assert pids == {w.pid for w in workers}


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_10000_jobs_two_workers_one_postgresql_store(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str, postgres_schema_url: str, workers: list[Worker]
) -> None:
    await run_10000(amqp_url, amqp_broker, queue_name, postgres_schema_url, 2, workers)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_10000_jobs_one_worker_sqlite_store(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str, sqlite_url: str, workers: list[Worker]
) -> None:
    await run_10000(amqp_url, amqp_broker, queue_name, sqlite_url, 1, workers)


@pytest.mark.timeout(120)
async def test_kill_9_leaves_running_jobs_running_until_redelivered_then_final(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str, postgres_schema_url: str, workers: list[Worker]
) -> None:
    await RetryTopology(queue_name, DELAYS).declare(amqp_broker)
    jobs = {f"slow-{n}": b"slow" for n in range(8)}
    options = ("--prefetch", "4", "--concurrency", "4")
    first = Worker(amqp_url, queue_name, postgres_schema_url, *options)
    workers.append(first)
    await publish(amqp_broker, queue_name, jobs)
    async with JobStore.open(postgres_schema_url) as store:

        async def four_running() -> bool:
            return len(await store.list(state="running")) == 4

        await until(four_running, 30, "four jobs running in the first worker")
        first.kill()  # SIGKILL: no lifespan, no last flush
        running = {job.id: job for job in await store.list(state="running")}
        # (a group of 4 may have finished between the check and the kill; the next 4 then run)
        assert 1 <= len(running) <= 4 and {job.pid for job in running.values()} == {first.pid}
        await anyio.sleep(0.5)
        still = await store.status(running)
        assert all(
            job is not None and job.state == "running" for job in still.values()
        )  # nobody finished them

        second = Worker(amqp_url, queue_name, postgres_schema_url, *options)
        workers.append(second)

        async def all_finished() -> bool:
            return not await store.unfinished(jobs)

        await until(all_finished, 60, "the second worker to finish every job")
        assert await second.stop() == 0, second.output()[-2000:]
        final = await store.status(jobs)
    assert {job.state for job in final.values() if job} == {"succeeded"} and all(final.values())
    # finished by the second worker, still attempt 1: a redelivery is not a retry
    assert all(final[i].pid == second.pid and final[i].attempts == 1 for i in running)  # type: ignore[union-attr]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
async def own_postgres(postgres_url: str) -> AsyncIterator[Callable[[str], None]]:
    """A PostgreSQL server of this test's own (scripts/postgresql.sh on another port), to stop and start."""
    port = _free_port()
    env = {**os.environ, "SWARROW_POSTGRES_PORT": str(port),
           "SWARROW_POSTGRES_DIR": f"/tmp/swarrow-pg-fault-{uuid.uuid4().hex[:8]}"}  # fmt: skip

    def ctl(action: str) -> None:
        subprocess.run(["scripts/postgresql.sh", action], cwd=ROOT, env=env, check=True, capture_output=True)

    await anyio.to_thread.run_sync(ctl, "start")
    ctl.url = f"postgresql://swarrow:swarrow@127.0.0.1:{port}/swarrow"  # type: ignore[attr-defined]
    try:
        yield ctl
    finally:
        await anyio.to_thread.run_sync(ctl, "stop")
        shutil.rmtree(env["SWARROW_POSTGRES_DIR"], ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_database_stopped_mid_run_messages_flow_drops_counted_tracking_resumes(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str, own_postgres: Callable[[str], None],
    workers: list[Worker],
) -> None:  # fmt: skip
    store_url: str = own_postgres.url  # type: ignore[attr-defined]
    await RetryTopology(queue_name, DELAYS).declare(amqp_broker)
    port = _free_port()
    worker = Worker(amqp_url, queue_name, store_url, "--metrics-port", str(port), "--buffer-size", "500")
    workers.append(worker)
    # 2 records per job: `before` and `after` fit the 500-record buffer, `during` cannot
    before = {f"before-{n}": b"ok" for n in range(100)}
    during = {f"during-{n}": b"ok" for n in range(2_000)}
    after = {f"after-{n}": b"ok" for n in range(100)}

    async def acked() -> float:
        return await anyio.to_thread.run_sync(_metric, port, "swarrow_messages_processed_total")

    async with JobStore.open(store_url) as store:
        await publish(amqp_broker, queue_name, before)
        await until(lambda: _none_unfinished(store, before), 30, "the first 100 jobs in the store", worker)
    await anyio.to_thread.run_sync(own_postgres, "stop")

    await publish(amqp_broker, queue_name, during)
    await until(lambda: _at_least(acked, 2_100), 60, "every message processed while the database is down")
    info = await amqp_broker.inspect_queue(queue_name)
    assert info is not None and info.message_count == 0

    async def dropped() -> bool:
        value = await anyio.to_thread.run_sync(_metric, port, "swarrow_job_records_dropped_total")
        return value >= 4_000 - 2 * 500  # 2 records per message, 500 buffered at most (+ a pending batch)

    await until(dropped, 30, "the dropped records to be counted")

    await anyio.to_thread.run_sync(own_postgres, "start")
    # The backlog held while the store was down goes out first (after a backoff of up to 5 s); a job run
    # while the buffer is still full is dropped, as documented. So probe one job at a time until one is
    # recorded: from then on the buffer has room, and every new job must be recorded.
    async with JobStore.open(store_url) as store:
        with anyio.fail_after(60):
            for n in itertools.count():
                probe = {f"probe-{n}": b"ok"}
                await publish(amqp_broker, queue_name, probe)
                with anyio.move_on_after(1.0):
                    while not await _none_unfinished(store, probe):
                        await anyio.sleep(0.05)
                    break
    await publish(amqp_broker, queue_name, after)
    async with JobStore.open(store_url) as store:
        await until(
            lambda: _none_unfinished(store, after), 60, "tracking to resume once the database is back", worker
        )
        status = await store.status(after)
    assert all(job is not None and job.state == "succeeded" for job in status.values())
    assert await worker.stop() == 0, worker.output()[-2000:]
    output = worker.output()
    assert "job store" in output and "swarrow:swarrow@" not in output  # logged, with the password masked


async def _none_unfinished(store: JobStore, jobs: dict[str, bytes]) -> bool:
    return not await store.unfinished(jobs)


async def _at_least(read: Callable[[], object], value: float) -> bool:
    return await read() >= value  # type: ignore[misc, no-any-return, operator]


@pytest.mark.timeout(60)
async def test_publish_print_ids_then_consume_tracked_then_jobs_status_as_the_readme_says(
    amqp_url: str, amqp_broker: AmqpBroker, queue_name: str, sqlite_url: str
) -> None:
    swarrow = str(Path(sys.executable).with_name("swarrow"))
    await RetryTopology(queue_name, (0.05,)).declare(amqp_broker)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([swarrow, *args], capture_output=True, text=True, timeout=45, check=check)

    published = await anyio.to_thread.run_sync(
        lambda: run("publish", "--queue", queue_name, "--url", amqp_url, "--body", "once", "--count", "3",
                    "--print-ids")
    )  # fmt: skip
    ids = published.stdout.split()
    assert len(ids) == 3 and len(set(ids)) == 3 and "published 3 messages" in published.stderr
    waiting = await anyio.to_thread.run_sync(
        lambda: run("jobs", "status", *ids, "--store", sqlite_url, check=False)
    )
    assert waiting.returncode == 6  # not consumed yet: unknown
    consumed = await anyio.to_thread.run_sync(
        lambda: run("consume", "tests.cli_callbacks:ok", "--queue", queue_name, "--url", amqp_url,
                    "--retry-delays", "50ms", "--track-jobs", sqlite_url, "--stop-when-idle", "1s",
                    "--no-log")
    )  # fmt: skip
    assert consumed.returncode == 0
    status = await anyio.to_thread.run_sync(
        lambda: subprocess.run([swarrow, "jobs", "status", "-", "--store", sqlite_url],
                               input=published.stdout, capture_output=True, text=True, timeout=30)
    )  # fmt: skip
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count(" succeeded  attempts=1 ") == 3
