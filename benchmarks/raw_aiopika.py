"""Baseline (a): the minimal aio-pika consumer, `queue.consume` with a per-message `await message.ack()`.

    python benchmarks/raw_aiopika.py --messages 50000 --prefetch 1000 [--uvloop] [--queue Q]

Without --queue it fills (and deletes) a private queue. Prints one JSON line: rate = messages / seconds
from opening the channel to the last ack written and the channel closed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aio_pika
from _common import URL, emit, run_loop, standalone


async def consume(url: str, queue_name: str, messages: int, prefetch: int) -> dict[str, Any]:
    connection = await aio_pika.connect(url)
    try:
        started = time.perf_counter()
        started_cpu = time.process_time()
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(queue_name, ensure=False)
        done = asyncio.Event()
        count = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal count
            await message.ack()
            count += 1
            if count == messages:
                done.set()

        await queue.consume(on_message)
        await done.wait()
        await channel.close()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - started_cpu
    finally:
        await connection.close()
    return {
        "messages": messages,
        "seconds": elapsed,
        "rate": messages / elapsed,
        "cpu_us_per_message": round(cpu / messages * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=URL)
    parser.add_argument("--queue")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()

    async def go() -> dict[str, Any]:
        if args.queue:
            return await consume(args.url, args.queue, args.messages, args.prefetch)
        return await standalone(
            "aiopika", args.url, args.messages, lambda q: consume(args.url, q, args.messages, args.prefetch)
        )

    emit(run_loop(go, use_uvloop=args.uvloop))


if __name__ == "__main__":
    main()
