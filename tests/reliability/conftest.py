"""The chaos suite's accounting harness: publish unique ids, find every one of them again, print the table.

The harness talks to RabbitMQ with aio-pika directly, not through swarrow: the code under test must
not also be the witness. An id is found when the callback logged it as processed, or it sits in
`Q.dead`, or it is still in `Q` / `Q.retry.k` (drained with `basic.get` once every worker stopped).
`lost` = published ids found nowhere; it must be 0. `duplicates` = sightings beyond one per id
(a message processed twice, or processed and also still queued), which at-least-once allows only
where a worker died or a connection dropped between the work and the ack.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import anyio
import anyio.to_thread
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection
from callbacks import PROCESSED_LOG_ENV, STARTED_LOG_ENV, read_log
from pamqp.commands import Basic

REPO = Path(__file__).resolve().parents[2]
RABBITMQ_NODE = os.environ.get("SWARROW_TEST_NODE", "rabbit@localhost")
RABBITMQCTL = ["rabbitmqctl", "-n", RABBITMQ_NODE]
CALLBACKS = "tests.reliability.callbacks"
MAX_RETRY_QUEUES = 20


@dataclass(frozen=True, slots=True)
class Accounting:
    """Where every published id of one scenario ended up."""

    scenario: str
    published: int
    processed: int  # distinct published ids the callback finished at least once
    dead: int  # distinct published ids in Q.dead
    remaining: int  # distinct published ids still in Q or a retry queue
    duplicates: int  # sightings beyond one per id (processed twice, or processed and still queued ...)
    lost: int  # published ids found nowhere: must be 0
    unexpected: int  # ids found that were never published: must be 0
    seconds: float


_RESULTS: list[Accounting] = []


def account(
    scenario: str,
    published: Iterable[str],
    *,
    processed: Iterable[str],
    dead: Iterable[str] = (),
    remaining: Iterable[str] = (),
    seconds: float = 0.0,
) -> Accounting:
    """Count where each published id went; records the row for the report (asserting is the caller's)."""
    wanted = set(published)
    processed_ids = Counter(processed)
    dead_ids = Counter(dead)
    remaining_ids = Counter(remaining)
    sightings = processed_ids + dead_ids + remaining_ids
    row = Accounting(
        scenario=scenario,
        published=len(wanted),
        processed=len(wanted & processed_ids.keys()),
        dead=len(wanted & dead_ids.keys()),
        remaining=len(wanted & remaining_ids.keys()),
        duplicates=sum(n - 1 for n in sightings.values() if n > 1),
        lost=len(wanted - sightings.keys()),
        unexpected=len(sightings.keys() - wanted),
        seconds=round(seconds, 1),
    )
    _RESULTS.append(row)
    return row


def assert_nothing_lost(row: Accounting, published: Iterable[str], sightings: Iterable[str]) -> None:
    """Fail naming the first missing ids: lost and unexpected must both be 0."""
    missing = sorted(set(published) - set(sightings))
    assert row.lost == 0, f"{row.scenario}: {row.lost} message(s) lost, e.g. {missing[:10]}"
    assert row.unexpected == 0, f"{row.scenario}: {row.unexpected} id(s) found that were never published"


_COLUMNS = ("scenario", "published", "processed", "dead-lettered", "remaining", "duplicates", "lost", "s")


def format_table(rows: Sequence[Accounting]) -> list[str]:
    """The report as a markdown table (readable in a terminal and pasteable in the README)."""
    cells = [
        (r.scenario, r.published, r.processed, r.dead, r.remaining, r.duplicates, r.lost, r.seconds)
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in [_COLUMNS, *cells]) for i in range(len(_COLUMNS))]

    def line(values: Sequence[object]) -> str:
        parts = [
            str(v).ljust(w) if i == 0 else str(v).rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    )
    return [line(_COLUMNS), rule, *(line(c) for c in cells)]


def _scenario_order(row: Accounting) -> tuple[int, str]:
    digits = "".join(itertools.takewhile(str.isdigit, row.scenario))
    return (int(digits) if digits else 99, row.scenario)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print every scenario's accounting once the session is over (and save it if asked to)."""
    if not _RESULTS:
        return
    lines = format_table(sorted(_RESULTS, key=_scenario_order))
    total_lost = sum(r.lost for r in _RESULTS)
    terminalreporter.section("swarrow reliability: every published message accounted for")
    for text in lines:
        terminalreporter.write_line(text)
    terminalreporter.write_line(f"lost in total: {total_lost}")
    report = os.environ.get("SWARROW_RELIABILITY_REPORT")
    if report:
        Path(report).write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll `predicate` until true; fail the test naming `what` after `timeout` seconds."""
    with anyio.move_on_after(timeout):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(interval)
    # AssertionError, not pytest.fail(): that is a BaseException, which anyio's test runner does not
    # survive inside a task group (the fixtures' teardown would then never run).
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """Run rabbitmqctl against the test node; raise with its output when it fails."""
    done = subprocess.run([*RABBITMQCTL, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True, slots=True)
class Drained:
    """A message taken out of a queue at the end of a scenario."""

    message_id: str
    headers: dict[str, Any]
    body: bytes


class Worker:
    """A `python -m swarrow consume` subprocess with its output in files (a full pipe never blocks it)."""

    def __init__(self, args: Sequence[str], env: dict[str, str], directory: Path, name: str) -> None:
        self.args = list(args)
        self.stdout_path = directory / f"{name}.stdout"
        self.stderr_path = directory / f"{name}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "swarrow", *self.args],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def output(self) -> str:
        """stdout and stderr so far."""
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def send(self, signum: int) -> None:
        """Send a signal to this worker (and only it)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    async def wait(self, timeout: float) -> int:
        """Wait for the exit code; fail (showing the worker's output) after `timeout` seconds."""
        try:
            return await anyio.to_thread.run_sync(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.args} still running after {timeout:g}s; output:\n{self.output()[-3000:]}"
            ) from None

    def kill(self) -> None:
        """SIGKILL if still running, then reap."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def ids(prefix: str, n: int) -> list[str]:
    """`n` unique message ids."""
    return [f"{prefix}-{i:06d}" for i in range(n)]


class Chaos:
    """One scenario's queues, publisher, workers and final accounting, against the real RabbitMQ.

    Test modules cannot import from a conftest, so the helpers they need hang off this fixture too.
    """

    ids = staticmethod(ids)
    wait_until = staticmethod(wait_until)
    rabbitmqctl = staticmethod(rabbitmqctl)
    account = staticmethod(account)

    def __init__(self, url: str, queue: str, directory: Path) -> None:
        self.url = url
        self.queue = queue
        self.dead = f"{queue}.dead"
        self.directory = directory
        self.processed_log = directory / "processed.log"
        self.started_log = directory / "started.log"
        self.workers: list[Worker] = []
        self.queues: set[str] = {
            queue,
            self.dead,
            *(f"{queue}.retry.{k}" for k in range(1, MAX_RETRY_QUEUES + 1)),
        }
        self._connection: AbstractConnection | None = None
        self._brokers: list[Any] = []
        self._started = time.monotonic()

    # --- the harness's own connection ----------------------------------------------------------------------
    async def connection(self) -> AbstractConnection:
        """The harness connection, reopened if a broker restart closed it."""
        connection = self._connection
        if connection is None or connection.is_closed or connection.transport is None:
            self._connection = connection = await aio_pika.connect(self.url, timeout=10)
        return connection

    async def channel(self, *, publisher_confirms: bool = False) -> AbstractChannel:
        """A fresh channel, reconnecting once if the connection died under us (a broker restart)."""
        try:
            return await (await self.connection()).channel(publisher_confirms=publisher_confirms)
        except (RuntimeError, ConnectionError, aiormq.exceptions.AMQPError):
            self._connection = None
            return await (await self.connection()).channel(publisher_confirms=publisher_confirms)

    async def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        for broker in self._brokers:
            with anyio.move_on_after(10, shield=True):
                await broker.close()
        try:
            with anyio.fail_after(30):
                channel = await self.channel()
                for name in sorted(self.queues):
                    await channel.queue_delete(name)
                await (await self.connection()).close()
        finally:
            self._connection = None

    async def declare(
        self, name: str | None = None, *, arguments: dict[str, Any] | None = None, durable: bool = True
    ) -> str:
        """Declare a queue of this scenario (deleted afterwards); returns its name."""
        name = name or self.queue
        self.queues.add(name)
        channel = await self.channel()
        await channel.declare_queue(name, durable=durable, arguments=arguments)
        await channel.close()
        return name

    async def declare_topology(self, delays: Sequence[float], *, quorum: bool = False) -> None:
        """Declare Q, Q.retry.k and Q.dead the way `swarrow declare` does (swarrow's own topology code)."""
        from swarrow.amqp import AmqpBroker
        from swarrow.topology import RetryTopology

        topology = RetryTopology(self.queue, delays, quorum=quorum)
        self.queues.update(name for name, _ in topology.queues())
        broker = AmqpBroker(self.url)
        try:
            await topology.declare(broker)
        finally:
            await broker.close()

    async def delete(self, name: str) -> None:
        channel = await self.channel()
        await channel.queue_delete(name)
        await channel.close()

    async def counts(self, name: str | None = None) -> tuple[int, int]:
        """(ready messages, consumers) of a queue; (-1, -1) when it does not exist."""
        channel = await self.channel()
        try:
            queue = await channel.declare_queue(name or self.queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return -1, -1
        ok = queue.declaration_result
        if not channel.is_closed:
            await channel.close()
        return int(ok.message_count or 0), int(ok.consumer_count or 0)

    async def ready(self, name: str | None = None) -> int:
        return (await self.counts(name))[0]

    # --- publishing ----------------------------------------------------------------------------------------
    async def publish(
        self,
        ids: Sequence[str],
        *,
        queue: str | None = None,
        body: bytes | Callable[[str], bytes] = b"{}",
        headers: dict[str, Any] | None = None,
        persistent: bool = True,
        window: int = 500,
    ) -> None:
        """Publish one message per id, `window` publishes awaiting their confirm at once; all confirmed."""
        routing_key = queue or self.queue
        channel = await self.channel(publisher_confirms=True)
        underlay = await channel.get_underlay_channel()
        pending: Iterator[str] = iter(ids)
        delivery_mode = 2 if persistent else 1
        nacked: list[str] = []

        async def publisher() -> None:
            for message_id in pending:
                payload = body(message_id) if callable(body) else body
                confirmation = await underlay.basic_publish(
                    payload,
                    routing_key=routing_key,
                    properties=aiormq.spec.Basic.Properties(
                        message_id=message_id, delivery_mode=delivery_mode, headers=headers
                    ),
                    mandatory=True,
                )
                if not isinstance(confirmation, Basic.Ack):
                    nacked.append(message_id)

        async with anyio.create_task_group() as tg:
            for _ in range(min(window, max(1, len(ids)))):
                tg.start_soon(publisher)
        await channel.close()
        assert not nacked, f"the broker did not confirm {len(nacked)} publish(es), e.g. {nacked[:5]}"

    async def publish_one(
        self, message_id: str, body: bytes, headers: dict[str, Any] | None = None, *, queue: str | None = None
    ) -> None:
        """Publish one message with its own body and headers (malformed input), confirmed."""
        channel = await self.channel(publisher_confirms=True)
        underlay = await channel.get_underlay_channel()
        confirmation = await underlay.basic_publish(
            body,
            routing_key=queue or self.queue,
            properties=aiormq.spec.Basic.Properties(message_id=message_id, delivery_mode=2, headers=headers),
            mandatory=True,
        )
        await channel.close()
        assert isinstance(confirmation, Basic.Ack), f"the broker did not confirm {message_id}"

    # --- draining ------------------------------------------------------------------------------------------
    async def drain(self, name: str) -> list[Drained]:
        """Take every ready message out of `name` with basic.get (exact: an empty get means empty)."""
        channel = await self.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return []
        drained: list[Drained] = []
        while (message := await queue.get(no_ack=True, fail=False, timeout=10)) is not None:
            drained.append(Drained(message.message_id or "", dict(message.headers or {}), message.body))
        await channel.close()
        return drained

    async def settle(
        self,
        scenario: str,
        published: Sequence[str],
        processed: Iterable[str],
        *,
        consumers_gone_within: float = 30,
    ) -> tuple[Accounting, list[Drained]]:
        """Account for every published id (workers must have stopped); assert none is lost.

        Returns the row and the dead-lettered messages (to check their reason headers). Retry queues
        are drained before `Q`, so a copy expiring from one into `Q` meanwhile is still found.
        """
        processed = list(processed)

        async def no_consumers() -> bool:
            return (await self.counts())[1] <= 0

        await wait_until(
            no_consumers, timeout=consumers_gone_within, what=f"no consumer left on {self.queue}"
        )
        remaining: list[str] = []
        for name in sorted(n for n in self.queues if n.startswith(f"{self.queue}.retry.")):
            remaining += [d.message_id for d in await self.drain(name)]
        remaining += [d.message_id for d in await self.drain(self.queue)]
        dead = await self.drain(self.dead)
        dead_ids = [d.message_id for d in dead]
        row = account(
            scenario,
            published,
            processed=processed,
            dead=dead_ids,
            remaining=remaining,
            seconds=time.monotonic() - self._started,
        )
        assert_nothing_lost(row, published, [*processed, *dead_ids, *remaining])
        return row, dead

    def broker(self) -> Any:
        """A swarrow `AmqpBroker` for the code under test, named after the queue (see `close_connection`)."""
        from swarrow.amqp import AmqpBroker

        broker = AmqpBroker(self.url, reconnect_interval=0.5, connection_name=self.connection_name)
        self._brokers.append(broker)
        return broker

    @property
    def connection_name(self) -> str:
        return f"swarrow-test-{self.queue}"

    def close_connection(self, name: str | None = None) -> int:
        """Have the broker close our swarrow connections (`connection_name`), as a network drop would."""
        name = name or self.connection_name
        listing = rabbitmqctl("list_connections", "pid", "client_properties", "-q", "--no-table-headers")
        pids = [line.split("\t", 1)[0] for line in listing.splitlines() if name in line]
        for pid in pids:
            rabbitmqctl("close_connection", pid, "swarrow reliability test: simulated connection drop")
        return len(pids)

    # --- in-process consumers -----------------------------------------------------------------------------
    async def run_until(
        self,
        consumer: Any,
        done: Callable[[], bool | Awaitable[bool]],
        *,
        timeout: float,
        what: str,
        during: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> Any:
        """Run a `swarrow.Consumer` until `done()`, then stop it gracefully; returns its StopReason.

        `during` runs alongside (the fault injection). Fails if the consumer stops on its own first.
        """
        reasons: list[Any] = []

        async def run() -> None:
            reasons.append(await consumer.run())

        async def finished() -> bool:
            if reasons:
                raise AssertionError(f"the consumer stopped by itself ({reasons[0]}) before {what}")
            result = done()
            return result if isinstance(result, bool) else await result

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            if during is not None:
                tg.start_soon(during)
            await wait_until(finished, timeout=timeout, what=what, interval=0.1)
            consumer.control.stop("test", f"{what}: done")
        assert reasons, "the consumer did not return after a graceful stop"
        return reasons[0]

    # --- subprocess workers --------------------------------------------------------------------------------
    def worker_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
        env["PYTHONUNBUFFERED"] = "1"
        env[PROCESSED_LOG_ENV] = str(self.processed_log)
        env[STARTED_LOG_ENV] = str(self.started_log)
        env.update(extra)
        return env

    def consume(
        self, callback: str, *options: str, env: dict[str, str] | None = None, url: str | None = None
    ) -> Worker:
        """Start `swarrow consume tests.reliability.callbacks:<callback> --queue Q --url URL <options>`."""
        args = [
            "consume",
            f"{CALLBACKS}:{callback}",
            "--queue",
            self.queue,
            "--url",
            url or self.url,
            *options,
        ]
        worker = Worker(args, env or self.worker_env(), self.directory, f"worker{len(self.workers)}")
        self.workers.append(worker)
        return worker

    def processed(self) -> list[str]:
        return read_log(self.processed_log)

    def started(self) -> list[str]:
        return read_log(self.started_log)


@pytest.fixture
async def chaos(amqp_url: str, queue_name: str, tmp_path: Path) -> AsyncIterator[Chaos]:
    """A scenario against the real RabbitMQ; its queues are deleted and its workers killed afterwards."""
    harness = Chaos(amqp_url, queue_name, tmp_path)
    try:
        yield harness
    finally:
        await harness.close()
