"""Peer: a FastStream RabbitMQ subscriber on a pre-filled queue, for the ratios the performance issue asks for.

    benchmarks/.venv-peers/bin/python benchmarks/peer_faststream.py --messages 50000 --prefetch 1000 [--log] [--queue Q]

Runs in its own venv (`make bench-peers-env`, pinned in peers-requirements.txt): FastStream pins its own
aio-pika range, which must not move the project's. The subscriber is what FastStream's docs show: a
`RabbitBroker`, `@broker.subscriber(queue)` on a trivial `async def` handler taking the body, the default
ack policy (REJECT_ON_ERROR: ack once the handler returns, reject if it raises) and the prefetch given as
the subscriber's `Channel(prefetch_count=...)`. Quiet by default (`RabbitBroker(logger=None)`); `--log`
keeps FastStream's default logger at INFO: two lines per message, on stdout (the JSON line still comes last).

Without --queue it fills (and deletes) a private queue. Prints one JSON line: rate = messages / seconds
from `broker.start()` on an open connection (channel, qos, basic.consume) to `broker.stop()` returning
after the N-th handler: stop waits for the handlers in flight to return and ack, then closes the channel.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from importlib.metadata import version
from typing import Any

from _common import URL, emit, run_loop, standalone
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue


async def consume(url: str, queue: str, messages: int, prefetch: int, *, log: bool, timeout: float) -> dict[str, Any]:
    broker = RabbitBroker(url) if log else RabbitBroker(url, logger=None)
    done = asyncio.Event()
    count = 0

    # durable=True: the queue exists already (filled with confirms); FastStream re-declares it as an app would.
    @broker.subscriber(RabbitQueue(queue, durable=True), channel=Channel(prefetch_count=prefetch))
    async def handle(body: bytes) -> None:
        nonlocal count
        count += 1
        if count == messages:
            done.set()

    await broker.connect()
    try:
        started = time.perf_counter()
        await broker.start()
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except TimeoutError:
            raise SystemExit(
                f"peer_faststream: timed out after {timeout:g}s with {count:,} of {messages:,} messages handled"
            ) from None
        await broker.stop()
        elapsed = time.perf_counter() - started
        if count != messages:
            # The queue held exactly N: more means redeliveries, after a connection was lost mid-run.
            raise SystemExit(f"peer_faststream: handled {count:,} deliveries of {messages:,} messages: redeliveries")
    finally:
        await broker.stop()  # a no-op after a clean stop; closes the connection after a failure
    return {
        "library": f"faststream {version('faststream')} (aio-pika {version('aio-pika')})",
        "messages": count,
        "seconds": elapsed,
        "rate": count / elapsed,
        "logging": "INFO" if log else "off",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=URL)
    parser.add_argument("--queue")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--log", action="store_true", help="FastStream's default INFO logging (to stdout)")
    parser.add_argument("--timeout", type=float, help="give up after this many seconds (default: N/500, min 60)")
    args = parser.parse_args()
    timeout = args.timeout or max(60.0, args.messages / 500)

    def work(queue: str) -> Any:
        return consume(args.url, queue, args.messages, args.prefetch, log=args.log, timeout=timeout)

    async def go() -> dict[str, Any]:
        if args.queue:
            return await work(args.queue)
        return await standalone("faststream", args.url, args.messages, work)

    emit(run_loop(go))


if __name__ == "__main__":
    main()
