"""Memory over RabbitMQ: RSS of a consumer running the full default stack through the bulk intake, 1,000,000 messages.

    python benchmarks/intake_soak.py [--messages 1000000] [--every 50000] [--prefetch 1000] [--concurrency 10]

A feeder (its own aiormq connection, confirms) keeps the queue topped up to about 100,000 messages
while one swarrow consumer (AmqpBroker, `default_stack` with metrics and a log line per message to
/dev/null) consumes them. RSS is sampled in the callback every --every messages; the figure is the
growth between the first sample at or after 100,000 and the end (the performance issue: flat).
Transient, non-persistent messages: the soak is about the consumer's memory, not the broker's disk.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from _common import URL, delete_queue, emit, run_loop, unique_queue
from prometheus_client import CollectorRegistry

from processors.defaults import default_stack
from swarrow import Consumer, Message, Stack
from swarrow.amqp import AmqpBroker

_PAGE = os.sysconf("SC_PAGE_SIZE")
SCRIPT = os.path.abspath(__file__)
BODY = b'{"id": 1, "payload": "' + b"x" * 70 + b'"}'


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


async def feed(url: str, queue: str, total: int, high_water: int) -> None:
    """Publish `total` messages, pausing while the queue holds more than `high_water`."""
    import aiormq
    from pamqp.commands import Basic

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        properties = Basic.Properties(delivery_mode=1, message_id="soak")
        sent = 0
        while sent < total:
            depth = (await channel.queue_declare(queue, passive=True)).message_count or 0
            if depth > high_water:
                await asyncio.sleep(0.2)
                continue
            batch = min(5000, total - sent)
            await asyncio.gather(
                *(channel.basic_publish(BODY, routing_key=queue, properties=properties) for _ in range(batch))
            )
            sent += batch
    finally:
        await connection.close()


async def soak(url: str, messages: int, every: int, prefetch: int, concurrency: int) -> dict[str, Any]:
    queue = unique_queue("intake-soak")
    broker = AmqpBroker(url)
    await broker.connect()
    await broker.declare_queue(queue)
    samples: list[tuple[int, float]] = []
    count = 0

    async def callback(message: Message) -> bool:
        nonlocal count
        count += 1
        if count % every == 0:
            samples.append((count, round(rss_mib(), 1)))
        return count < messages

    # The feeder runs in its own process: publishing with confirms must not take the consumer's CPU.
    feeder = await asyncio.create_subprocess_exec(
        sys.executable, SCRIPT, "--url", url, "--feed", queue, "--messages", str(messages)
    )
    provider = broker.provider(queue, prefetch=prefetch)
    publisher = broker.publisher()
    layers = default_stack(
        provider=provider, publisher=publisher, signals=False, metrics=True, registry=CollectorRegistry(),
        log=True, catch=True, retry=True, max_messages=messages,
    )  # fmt: skip
    started = time.perf_counter()
    try:
        await Consumer(provider, Stack(*layers, callback=callback), concurrency=concurrency).run()
        await asyncio.wait_for(feeder.wait(), 60)
    finally:
        if feeder.returncode is None:
            feeder.kill()
            await feeder.wait()
        await publisher.close()
        await broker.close()
        await delete_queue(url, queue)
    elapsed = time.perf_counter() - started
    base = next((rss for n, rss in samples if n >= 100_000), samples[0][1] if samples else 0.0)
    end = samples[-1][1] if samples else 0.0
    return {
        "messages": count,
        "seconds": round(elapsed, 1),
        "rate": count / elapsed,
        "bulk_intake": bool(provider.fast_path and provider.fast_path.bulk_intake),
        "rss_mib_at_100k": base,
        "rss_mib_at_end": end,
        "growth_percent": round((end - base) / base * 100, 2) if base else None,
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=URL)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=50_000)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--feed", metavar="QUEUE", help=argparse.SUPPRESS)  # the feeder process
    args = parser.parse_args()
    if args.feed:
        asyncio.run(feed(args.url, args.feed, args.messages, 100_000))
        return
    from swarrow.logs import configure_logging

    configure_logging("INFO", "text", stream=open(os.devnull, "w"))  # noqa: SIM115
    emit(run_loop(lambda: soak(args.url, args.messages, args.every, args.prefetch, args.concurrency), use_uvloop=False))


if __name__ == "__main__":
    main()
