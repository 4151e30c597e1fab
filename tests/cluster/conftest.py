"""The cluster suite's harness: the 3-node cluster of scripts/rabbitmq-cluster.sh, its faults, and accounting.

The tests here kill, stop and restart nodes of that cluster (rmq1..3@localhost on 127.0.0.1:5701-5703),
never the shared single node on 5672. Each test holds an exclusive lock on the cluster, so two test
runs on one machine take turns instead of killing each other's nodes. Without a cluster the suite is
skipped locally (`make cluster` starts one) and fails when `CI=true` or `SWARROW_REQUIRE_CLUSTER=1`.

The harness talks to RabbitMQ with aio-pika directly, not through swarrow (the code under test must
not also be the witness), always through a node that is up. Every published id is found again: in the
callback's processed log, in `Q.dead`, or still queued; `lost` must be 0 and duplicates are reported.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import anyio
import anyio.to_thread
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection
from pamqp.commands import Basic

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "rabbitmq-cluster.sh"
HOST = "127.0.0.1"
PORTS = {1: 5701, 2: 5702, 3: 5703}
NODES = tuple(PORTS)
CREDENTIALS = "guest:guest"
CLUSTER_DIR = Path(os.environ.get("SWARROW_CLUSTER_DIR", "/tmp/swarrow-cluster"))
LOCK_WAIT = 600.0  # another run's test may hold the cluster for a few minutes


def node_name(n: int) -> str:
    return f"rmq{n}@localhost"


def node_url(n: int) -> str:
    return f"amqp://{CREDENTIALS}@{HOST}:{PORTS[n]}/"


def cluster_url(first: int = 1) -> str:
    """The three-node URL listing node `first` first (workers each start their rotation elsewhere)."""
    order = [NODES[(first - 1 + k) % len(NODES)] for k in range(len(NODES))]
    return f"amqp://{CREDENTIALS}@" + ",".join(f"{HOST}:{PORTS[n]}" for n in order) + "/"


def port_open(n: int, timeout: float = 1.0) -> bool:
    import socket

    try:
        with socket.create_connection((HOST, PORTS[n]), timeout=timeout):
            return True
    except OSError:
        return False


def http_status(url: str) -> int:
    """The HTTP status of a GET (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


async def wait_until(
    predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll `predicate` (sync or async) until true; AssertionError naming `what` after `timeout` s."""
    with anyio.move_on_after(timeout):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


# --- the cluster ----------------------------------------------------------------------------------------
class Cluster:
    """The running 3-node cluster: URLs, faults (kill, stop, start, restart) and queue leaders."""

    node_url = staticmethod(node_url)
    url = staticmethod(cluster_url)

    def script(self, *args: str, timeout: float = 180) -> str:
        """Run scripts/rabbitmq-cluster.sh; raise with its output when it fails."""
        done = subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmq-cluster.sh {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}"
            )
        return done.stdout

    def up(self) -> list[int]:
        """The nodes that accept AMQP now."""
        return [n for n in NODES if port_open(n)]

    def ctl(self, *args: str, node: int | None = None, timeout: float = 60) -> str:
        """rabbitmqctl against `node` (default: the first node up)."""
        target = node if node is not None else next(iter(self.up()), 1)
        done = subprocess.run(
            ["rabbitmqctl", "-q", "-n", node_name(target), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {node_name(target)} failed: {done.stderr}")
        return done.stdout

    async def kill(self, n: int) -> None:
        """kill -9 node `n` (returns once its process is gone)."""
        await anyio.to_thread.run_sync(self.script, "kill", str(n))

    async def stop(self, n: int) -> None:
        await anyio.to_thread.run_sync(self.script, "stop", str(n))

    async def start(self, n: int) -> None:
        """Start node `n` again; returns once it accepts AMQP."""
        await anyio.to_thread.run_sync(self.script, "start", str(n))

    async def restart(self, n: int) -> None:
        await anyio.to_thread.run_sync(self.script, "restart", str(n))

    def leader(self, queue: str) -> int:
        """The node number leading quorum queue `queue` (`rabbitmqctl list_queues name leader`)."""
        listing = self.ctl("list_queues", "name", "leader", "--formatter", "json")
        for row in json.loads(listing):
            if row.get("name") == queue:
                leader = str(row.get("leader", ""))
                for n in NODES:
                    if leader == node_name(n):
                        return n
                raise AssertionError(f"queue {queue!r} has no leader among the cluster's nodes: {leader!r}")
        raise AssertionError(f"queue {queue!r} is not listed by rabbitmqctl list_queues")

    async def heal(self) -> None:
        """Start every node that is down (after a test), then wait until the cluster sees three running."""
        for n in NODES:
            if not port_open(n):
                await self.start(n)

        def three_running() -> bool:
            try:
                status = json.loads(self.ctl("cluster_status", "--formatter", "json", timeout=30))
            except (RuntimeError, ValueError, subprocess.TimeoutExpired):
                return False
            return len(status.get("running_nodes", [])) == len(NODES)

        await wait_until(
            lambda: anyio.to_thread.run_sync(three_running), timeout=120, what="3 running nodes", interval=1
        )


def _require_cluster() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("SWARROW_REQUIRE_CLUSTER") == "1"


@pytest.fixture
def cluster_lock() -> Iterator[None]:
    """Exclusive use of the cluster for one test (another run waits, it does not interleave kills)."""
    CLUSTER_DIR.parent.mkdir(parents=True, exist_ok=True)
    path = CLUSTER_DIR.parent / f"{CLUSTER_DIR.name}.lock"
    with open(path, "a+") as handle:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test run held {path} for {LOCK_WAIT:g} s")
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture
async def cluster(cluster_lock: None) -> AsyncIterator[Cluster]:
    """The 3-node cluster, all nodes up; any node a test left down is started again afterwards."""
    the_cluster = Cluster()
    down = [n for n in NODES if not port_open(n)]
    if len(down) == len(NODES):
        message = f"no RabbitMQ cluster on {HOST}:5701-5703 (run `make cluster`)"
        if _require_cluster():
            pytest.fail(message)
        pytest.skip(message)
    if down:
        await the_cluster.heal()
    try:
        yield the_cluster
    finally:
        await the_cluster.heal()


# --- accounting -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Accounting:
    """Where every published id of one scenario ended up."""

    scenario: str
    published: int
    processed: int
    dead: int
    remaining: int
    duplicates: int
    lost: int
    unexpected: int
    seconds: float


_RESULTS: list[Accounting] = []
_COLUMNS = ("scenario", "published", "processed", "dead-lettered", "remaining", "duplicates", "lost", "s")


def account(
    scenario: str,
    published: Iterable[str],
    *,
    processed: Iterable[str],
    dead: Iterable[str] = (),
    remaining: Iterable[str] = (),
    seconds: float = 0.0,
) -> Accounting:
    """Count where each published id went and record the row for the session's report."""
    wanted = set(published)
    sightings = Counter(processed) + Counter(dead) + Counter(remaining)
    row = Accounting(
        scenario=scenario,
        published=len(wanted),
        processed=len(wanted & set(processed)),
        dead=len(wanted & set(dead)),
        remaining=len(wanted & set(remaining)),
        duplicates=sum(n - 1 for n in sightings.values() if n > 1),
        lost=len(wanted - sightings.keys()),
        unexpected=len(sightings.keys() - wanted),
        seconds=round(seconds, 1),
    )
    _RESULTS.append(row)
    return row


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print every cluster scenario's accounting once the session is over."""
    if not _RESULTS:
        return
    rows = [
        (r.scenario, r.published, r.processed, r.dead, r.remaining, r.duplicates, r.lost, r.seconds)
        for r in sorted(_RESULTS, key=lambda r: r.scenario)
    ]
    widths = [max(len(str(c[i])) for c in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    terminalreporter.section("swarrow on a 3-node cluster: every published message accounted for")
    for cells in [_COLUMNS, *rows]:
        terminalreporter.write_line(
            "| " + " | ".join(str(v).ljust(w) for v, w in zip(cells, widths, strict=True)) + " |"
        )
    terminalreporter.write_line(f"lost in total: {sum(r.lost for r in _RESULTS)}")


# --- workers --------------------------------------------------------------------------------------------
class Worker:
    """A `python -m swarrow …` subprocess with its output in files (a full pipe never blocks it)."""

    def __init__(self, args: Sequence[str], env: dict[str, str], directory: Path, name: str) -> None:
        self.args = list(args)
        self.name = name
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
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def readyz(self) -> str:
        """The worker's /readyz URL (from its --metrics-addr)."""
        address = self.args[self.args.index("--metrics-addr") + 1]
        return f"http://{address}/readyz"

    def processed(self) -> list[str]:
        """The ids this worker finished (its own log)."""
        return read_log(self.stdout_path.with_suffix(".processed"))

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def send(self, signum: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)

    async def wait(self, timeout: float) -> int:
        try:
            return await anyio.to_thread.run_sync(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} {self.args[:2]} still running after {timeout:g}s:\n{self.output()[-3000:]}"
            ) from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def read_log(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").split("\n") if line]
    except FileNotFoundError:
        return []


class Chaos:
    """One cluster scenario: its queues, publisher, workers and final accounting."""

    wait_until = staticmethod(wait_until)
    account = staticmethod(account)
    http_status = staticmethod(http_status)
    free_port = staticmethod(free_port)
    read_log = staticmethod(read_log)

    def __init__(self, cluster: Cluster, queue: str, directory: Path) -> None:
        self.cluster = cluster
        self.queue = queue
        self.dead = f"{queue}.dead"
        self.directory = directory
        self.workers: list[Worker] = []
        self.queues: set[str] = {queue, self.dead, *(f"{queue}.retry.{k}" for k in range(1, 6))}
        self._connection: AbstractConnection | None = None
        self._started = time.monotonic()

    def ids(self, prefix: str, n: int) -> list[str]:
        return [f"{prefix}-{i:06d}" for i in range(n)]

    # --- the harness's own connection, always to a node that is up ---------------------------------------
    async def connection(self) -> AbstractConnection:
        connection = self._connection
        if connection is not None and not connection.is_closed and connection.transport is not None:
            return connection
        errors = []
        for n in self.cluster.up() or list(NODES):
            try:
                self._connection = await aio_pika.connect(node_url(n), timeout=5)
                return self._connection
            except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
                errors.append(f"{node_name(n)}: {exc!r}")
        raise AssertionError(f"the harness cannot reach any node: {errors}")

    async def channel(self, *, publisher_confirms: bool = False) -> AbstractChannel:
        for attempt in range(5):
            try:
                return await (await self.connection()).channel(publisher_confirms=publisher_confirms)
            except (RuntimeError, ConnectionError, aiormq.exceptions.AMQPError):
                self._connection = None
                await anyio.sleep(0.5 * (attempt + 1))
        return await (await self.connection()).channel(publisher_confirms=publisher_confirms)

    async def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        try:
            with anyio.fail_after(60):
                channel = await self.channel()
                for name in sorted(self.queues):
                    await channel.queue_delete(name)
                await (await self.connection()).close()
        finally:
            self._connection = None

    async def declare_topology(
        self, delays: Sequence[float], *, dead_letter_strategy: str = "at-least-once", **options: Any
    ) -> None:
        """Declare Q, Q.retry.k and Q.dead with swarrow's own topology code: quorum, at-least-once.

        At-most-once dead-lettering lost a retry copy in a rolling restart (its TTL expired on a
        node that was stopping); at-least-once stalls after a kill -9 of the retry queue's leader
        (RabbitMQ 3.10.8): the README's "Quorum queues" says so.
        """
        from swarrow.amqp import AmqpBroker
        from swarrow.topology import RetryTopology

        topology = RetryTopology(
            self.queue, delays, quorum=True, dead_letter_strategy=dead_letter_strategy, **options
        )
        self.queues.update(name for name, _ in topology.queues())
        broker = AmqpBroker(node_url(self.cluster.up()[0]))
        try:
            await topology.declare(broker)
        finally:
            await broker.close()

    async def counts(self, name: str | None = None) -> tuple[int, int]:
        """(ready messages, consumers) of a queue."""
        channel = await self.channel()
        queue = await channel.declare_queue(name or self.queue, passive=True)
        ok = queue.declaration_result
        await channel.close()
        return int(ok.message_count or 0), int(ok.consumer_count or 0)

    async def publish(self, ids: Sequence[str], *, window: int = 500) -> None:
        """Publish one persistent message per id to Q, all confirmed."""
        channel = await self.channel(publisher_confirms=True)
        underlay = await channel.get_underlay_channel()
        pending = iter(ids)
        nacked: list[str] = []

        async def publisher() -> None:
            for message_id in pending:
                confirmation = await underlay.basic_publish(
                    b"{}",
                    routing_key=self.queue,
                    properties=aiormq.spec.Basic.Properties(message_id=message_id, delivery_mode=2),
                    mandatory=True,
                )
                if not isinstance(confirmation, Basic.Ack):
                    nacked.append(message_id)

        async with anyio.create_task_group() as tg:
            for _ in range(min(window, max(1, len(ids)))):
                tg.start_soon(publisher)
        await channel.close()
        assert not nacked, f"the broker did not confirm {len(nacked)} publish(es), e.g. {nacked[:5]}"

    async def drain(self, name: str) -> list[str]:
        """Take every ready message out of `name` (basic.get until empty); their ids."""
        channel = await self.channel()
        queue = await channel.declare_queue(name, passive=True)
        drained: list[str] = []
        while (message := await queue.get(no_ack=True, fail=False, timeout=10)) is not None:
            drained.append(message.message_id or "")
        await channel.close()
        return drained

    async def settle(
        self, scenario: str, published: Sequence[str], *, broker_may_drop: Callable[[str], bool] | None = None
    ) -> Accounting:
        """Account for every published id (workers must have stopped); assert none is lost.

        `broker_may_drop`: ids whose loss is RabbitMQ's, not swarrow's (retry copies the broker's own
        dead-lettering dropped after a node crash, see README "Quorum queues"): reported, not failed.
        """

        async def no_consumers() -> bool:
            return (await self.counts())[1] == 0

        await wait_until(no_consumers, timeout=30, what=f"no consumer left on {self.queue}")
        remaining: list[str] = []
        for name in sorted(n for n in self.queues if n.startswith(f"{self.queue}.retry.")):
            try:
                remaining += await self.drain(name)
            except aiormq.exceptions.ChannelNotFoundEntity:
                self._connection = None
        remaining += await self.drain(self.queue)
        dead = await self.drain(self.dead)
        processed = self.processed()
        row = account(
            scenario,
            published,
            processed=processed,
            dead=dead,
            remaining=remaining,
            seconds=time.monotonic() - self._started,
        )
        missing = sorted(set(published) - set(processed) - set(dead) - set(remaining))
        ours = [m for m in missing if broker_may_drop is None or not broker_may_drop(m)]
        assert not ours, f"{scenario}: {len(ours)} message(s) lost, e.g. {ours[:10]}"
        if missing:
            print(
                f"\n{scenario}: {len(missing)} retry copies dropped by RabbitMQ dead-lettering: {missing[:5]}"
            )
        assert row.unexpected == 0, f"{scenario}: {row.unexpected} id(s) never published were found"
        return row

    # --- workers ------------------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("SWARROW_URL", None)
        env.update(extra)
        return env

    def swarrow(self, *args: str, env: dict[str, str] | None = None) -> Worker:
        """Start `python -m swarrow ARGS` in the background."""
        worker = Worker(args, env or self.env(), self.directory, f"proc{len(self.workers)}")
        self.workers.append(worker)
        return worker

    def consume(self, url: str, *options: str, sleep: float = 0.0) -> Worker:
        """A `swarrow consume` worker of Q running `fail_once`, logging to its own file, /readyz served."""
        name = f"worker{len(self.workers)}"
        worker = Worker(
            [
                "consume",
                "tests.cluster.callbacks:fail_once",
                *("--queue", self.queue, "--url", url),
                *("--metrics-addr", f"{HOST}:{free_port()}", "--no-log"),
                *options,
            ],
            self.env(
                SWARROW_TEST_PROCESSED_LOG=str(self.directory / f"{name}.processed"),
                SWARROW_TEST_SLEEP=str(sleep),
            ),
            self.directory,
            name,
        )
        self.workers.append(worker)
        return worker

    async def wait_processed(
        self, published: Sequence[str], workers: Sequence[Worker], *, timeout: float, idle: float = 30.0
    ) -> None:
        """Until every id is processed, or nothing new was processed for `idle` s (the rest is then
        found by `settle` still queued: counted as remaining, never as lost); fails if a worker exits."""
        wanted = set(published)
        seen, last_change = -1, time.monotonic()

        def done() -> bool:
            nonlocal seen, last_change
            for k, worker in enumerate(workers):
                assert worker.returncode is None, f"worker {k} exited:\n{worker.output()[-3000:]}"
            processed = set(self.processed())
            if processed >= wanted:
                return True
            if len(processed) != seen:
                seen, last_change = len(processed), time.monotonic()
            return time.monotonic() - last_change > idle

        await wait_until(done, timeout=timeout, what="every id processed (or no progress)", interval=0.5)

    def processed(self) -> list[str]:
        """Every id any worker finished, duplicates kept."""
        return [i for path in sorted(self.directory.glob("*.processed")) for i in read_log(path)]


_counter = itertools.count()


@pytest.fixture
async def chaos(cluster: Cluster, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Chaos]:
    """A scenario on the cluster; its queues are deleted and its processes killed afterwards."""
    queue = f"cluster.{request.node.name[:30]}.{os.getpid()}.{next(_counter)}"
    harness = Chaos(cluster, queue, tmp_path)
    try:
        yield harness
    finally:
        await harness.close()
