"""Job tracking's cost: the default stack with and without `track_jobs` (SQLite, PostgreSQL), in one run.

    python benchmarks/jobs_tracking.py [--messages 20000] [--runs 3] [--memory-messages 20000] [--memory-only]
        [--postgres-url postgresql://swarrow:swarrow@127.0.0.1:55432/swarrow]   (scripts/postgresql.sh start)

1. In memory (no broker): µs per message on the event loop's thread (`time.thread_time`, so the SQLite
   writer thread is not counted, the to_thread hand-off and the asyncpg writes are) and wall µs, for the
   default stack (as `swarrow consume` builds it, logger at INFO to a file) without and with tracking;
   `sqlite-hot` times the layer alone, with no write running meanwhile.
   The target: tracking with SQLite adds ≤ 10 µs per message on the loop.
2. Against RabbitMQ: a queue of N persistent messages with unique ids, consumed by one worker (prefetch
   1000, concurrency 10) with that stack; runs alternate none / sqlite / postgresql; medians and the ratio
   to the untracked run. Each tracked run checks that the store holds every job as succeeded.
Prints one JSON line; `benchmarks/results/jobs_tracking.json` keeps it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

import anyio
import anyio.lowlevel
from _common import RESULTS, URL, emit
from prometheus_client import CollectorRegistry

from processors.defaults import default_stack
from processors.exception_catcher import ExceptionCatcherProcessor
from processors.job_tracker import JobTrackerProcessor
from swarrow import Consumer, Layer, MemoryBroker, Message, Stack
from swarrow.amqp import AmqpBroker
from swarrow.control import ConsumerControl
from swarrow.jobs import JobStore

DEFAULT_PG = os.environ.get("SWARROW_TEST_POSTGRES_URL", "postgresql://swarrow:swarrow@127.0.0.1:55432/swarrow")
SCHEMA = "bench_jobs"


async def callback(message: Message) -> None:
    return None


def stack_layers(provider: Any, publisher: Any, store: str | None, registry: CollectorRegistry) -> list[Any]:
    return default_stack(
        provider=provider, publisher=publisher, signals=False, max_runtime=3600.0, max_messages=10**12,
        memory_limit=4096.0, metrics=True, registry=registry, log=True, track_jobs=store,
    )  # fmt: skip


async def fresh_store(kind: str, pg_url: str | None, tmp: str) -> str | None:
    """A URL to an empty store of `kind` (PostgreSQL: a schema of the benchmark's own, truncated)."""
    if kind == "none":
        return None
    if kind == "sqlite":
        return f"sqlite:///{tmp}/jobs-{uuid.uuid4().hex[:8]}.db"
    import asyncpg

    assert pg_url is not None
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        await conn.execute(f"DROP TABLE IF EXISTS {SCHEMA}.swarrow_jobs, {SCHEMA}.swarrow_jobs_schema")
    finally:
        await conn.close()
    return f"{pg_url}?search_path={SCHEMA}"


async def count_succeeded(url: str) -> int:
    async with JobStore.open(url) as store:
        return (await store.stats()).by_state["succeeded"]


async def in_memory(kind: str, count: int, repeat: int, pg_url: str | None, tmp: str) -> dict[str, float]:
    """Best of `repeat`: loop-thread CPU µs and wall µs per message through the stack.

    `sqlite-hot`: the layer's own work alone — nothing is written while the messages run (the writes
    happen when the stack's lifespan ends, outside the timing).
    """
    hot = kind.endswith("-hot")
    kind = kind.removesuffix("-hot")
    best_cpu = best_wall = float("inf")
    recorded = count
    for _ in range(repeat):
        store = await fresh_store(kind, pg_url, tmp)
        broker = MemoryBroker(f"bench-jobs-{uuid.uuid4().hex[:6]}")
        broker.declare_queue_nowait("bench")
        provider = broker.provider("bench", prefetch=10**9)
        await provider.start()
        for n in range(count):
            broker.publish_nowait(Message(b"x" * 100, message_id=f"m{n}", delivery_mode=2), "bench")
        batch = []
        while (m := provider.receive_nowait()) is not None:
            batch.append(m)
        registry = CollectorRegistry()
        if hot:
            layers = stack_layers(provider, broker.publisher(), None, registry)
            at = next(i for i, layer in enumerate(layers) if layer.factory is ExceptionCatcherProcessor)
            layers.insert(at, Layer(JobTrackerProcessor, store=store, registry=registry, flush_interval=3600))
        else:
            layers = stack_layers(provider, broker.publisher(), store, registry)
        built = Stack(*layers, callback=callback).build()
        control = ConsumerControl(queue_name="bench", concurrency=1)
        control._bind()
        async with built.lifespan(control):
            processor = built.processor
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            for n, message in enumerate(batch):
                await processor(message)
                if n % 100 == 99:
                    await anyio.lowlevel.checkpoint()  # let the flusher (and the ack flusher) run, as a real loop would
            cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
        await provider.close()
        best_cpu, best_wall = min(best_cpu, cpu), min(best_wall, wall)
        if store is not None:  # in memory the stack outruns a database: the bounded buffer may drop some
            recorded = min(recorded, await count_succeeded(store))
    return {"loop_cpu_us": best_cpu / count * 1e6, "wall_us": best_wall / count * 1e6, "recorded": recorded}


async def fill(url: str, queue: str, count: int) -> None:
    import aiormq
    from pamqp.commands import Basic

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.queue_declare(queue, durable=True)
        for start in range(0, count, 2000):
            await asyncio.gather(
                *(channel.basic_publish(b"x" * 100, routing_key=queue,
                                        properties=Basic.Properties(delivery_mode=2, message_id=f"m{n}"))
                  for n in range(start, min(count, start + 2000)))
            )  # fmt: skip
    finally:
        await connection.close()


async def on_broker(kind: str, count: int, pg_url: str | None, tmp: str) -> float:
    """msg/s of one worker draining `count` messages with the default stack (+ tracking)."""
    queue = f"bench.jobs.{uuid.uuid4().hex[:10]}"
    store = await fresh_store(kind, pg_url, tmp)
    await fill(URL, queue, count)
    broker = AmqpBroker(URL)
    await broker.connect()
    try:
        for name in (f"{queue}.retry.1", f"{queue}.retry.2", f"{queue}.retry.3", f"{queue}.dead"):
            await broker.declare_queue(name)
        provider = broker.provider(queue, prefetch=1000)
        done = 0

        async def counting(message: Message) -> bool:
            nonlocal done
            done += 1
            return done < count

        layers = stack_layers(provider, broker.publisher(), store, CollectorRegistry())
        consumer = Consumer(provider, Stack(*layers, callback=counting), concurrency=10)
        started = time.perf_counter()
        await consumer.run()
        elapsed = time.perf_counter() - started
        if store is not None and (stored := await count_succeeded(store)) != count:
            raise RuntimeError(f"{kind}: {stored} of {count} jobs recorded as succeeded")
        return count / elapsed
    finally:
        for name in (queue, f"{queue}.retry.1", f"{queue}.retry.2", f"{queue}.retry.3", f"{queue}.dead"):
            await broker.delete_queue(name)
        await broker.close()


async def postgres_reachable(url: str) -> bool:
    try:
        async with JobStore.open(url):
            return True
    except Exception:
        return False


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from swarrow.logs import configure_logging

    configure_logging("INFO", "text", stream=open(os.path.join(RESULTS, "jobs_tracking.log"), "w", buffering=1 << 16))  # noqa: SIM115, ASYNC230
    kinds = ["none", "sqlite"]
    pg_url = args.postgres_url
    if await postgres_reachable(pg_url):
        kinds.append("postgresql")
    result: dict[str, Any] = {"kinds": kinds, "messages": args.messages, "runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        memory_kinds = ["none", "sqlite-hot", *kinds[1:]]
        memory = {k: await in_memory(k, args.memory_messages, 3, pg_url, tmp) for k in memory_kinds}
        for k in memory_kinds:
            memory[k]["loop_cost_us"] = memory[k]["loop_cpu_us"] - memory["none"]["loop_cpu_us"]
        result["memory"] = memory
        rates: dict[str, list[float]] = {k: [] for k in kinds}
        if args.memory_only:
            logging.getLogger().handlers.clear()
            return result
        for _ in range(args.runs):
            for k in kinds:  # interleaved, so drift hits every variant alike
                rates[k].append(await on_broker(k, args.messages, pg_url, tmp))
    medians = {k: statistics.median(v) for k, v in rates.items()}
    result["broker"] = {
        k: {"median": medians[k], "min": min(rates[k]), "max": max(rates[k]), "ratio": medians[k] / medians["none"]}
        for k in kinds
    }
    logging.getLogger().handlers.clear()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-messages", type=int, default=20_000)
    parser.add_argument("--postgres-url", default=DEFAULT_PG)
    parser.add_argument("--memory-only", action="store_true", help="part 1 alone (no RabbitMQ needed)")
    args = parser.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    result = anyio.run(measure, args, backend="asyncio")
    with open(os.path.join(RESULTS, "jobs_tracking.json"), "w") as out:
        json.dump(result, out, indent=2)
    emit(result)


if __name__ == "__main__":
    main()
