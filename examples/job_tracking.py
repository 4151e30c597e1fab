"""Job tracking (README "Job tracking"): consume with `track_jobs`, then ask what became of each job.

    python examples/job_tracking.py [sqlite:///jobs.db]

Runs on the in-memory broker, so it needs no RabbitMQ: three orders, one of which fails once.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta

from processors import default_stack
from swarrow import Consumer, MemoryBroker, Message, Stack
from swarrow.jobs import JobStore
from swarrow.topology import RETRY_ATTEMPT_HEADER, RetryTopology


async def ship(message: Message) -> None:
    if message.message_id == "order-2" and RETRY_ATTEMPT_HEADER not in message.headers:
        raise TimeoutError("the carrier did not answer")  # retried once by the broker, then fine


async def consume(store_url: str) -> None:
    broker = MemoryBroker("job-tracking-example")
    for name, arguments in RetryTopology("orders", (0.05,)).queues():
        broker.declare_queue_nowait(name, arguments=arguments or None)
    for n in (1, 2, 3):
        broker.publish_nowait(Message(b"{}", message_id=f"order-{n}"), "orders")
    provider = broker.provider("orders")
    layers = default_stack(
        provider=provider, publisher=broker.publisher(), signals=False, stop_when_idle=0.5,
        retry_attempts=1, retry_delays=[0.05], track_jobs=store_url,
    )  # fmt: skip
    await Consumer(provider, Stack(*layers, callback=ship)).run()


async def report(store_url: str) -> list[str]:
    async with JobStore.open(store_url) as store:  # "sqlite:///jobs.db", "postgresql://user:pw@host/db"
        for job_id, job in (await store.status(["order-1", "order-2", "order-9"])).items():
            print(job_id, job.state if job else "unknown", job.attempts if job else 0)
        waiting = await store.unfinished(["order-1", "order-2", "order-9"])  # running, retrying or unseen
        recent = await store.list(state="succeeded", since=time.time() - 3600, limit=20)
        stats = await store.stats(queue="orders")  # counts by state, p50/p95 duration, top error types
        await store.prune(timedelta(days=14))  # finished jobs last updated over two weeks ago
    print("unfinished:", waiting, "| succeeded in the last hour:", len(recent), "| by state:", stats.by_state)
    return waiting


async def main(store_url: str = "sqlite:///jobs.db") -> list[str]:
    await consume(store_url)
    return await report(store_url)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
