"""Baseline: raw aiormq `basic_consume`, acking each message or `multiple=True` every --ack-every messages.

    python benchmarks/raw_aiormq.py --messages 50000 --prefetch 1000 --ack-every 100 [--uvloop] [--queue Q]

The ceiling for any consumer built on aiormq: no wrapper objects, one ack frame per --ack-every messages.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiormq
import aiormq.abc
from _common import URL, emit, run_loop, standalone


async def consume(url: str, queue: str, messages: int, prefetch: int, ack_every: int) -> dict[str, Any]:
    connection = await aiormq.connect(url)
    try:
        started = time.perf_counter()
        started_cpu = time.process_time()
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=prefetch)
        done = asyncio.Event()
        count = 0

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            nonlocal count
            count += 1
            tag = message.delivery_tag
            assert tag is not None
            if ack_every == 1:
                await channel.basic_ack(tag)
            elif count % ack_every == 0 or count == messages:
                # Deliveries run in order (one task each, FIFO), so every tag <= this one is finished.
                await channel.basic_ack(tag, multiple=True)
            if count == messages:
                done.set()

        await channel.basic_consume(queue, on_message)
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
    parser.add_argument("--ack-every", type=int, default=1)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()

    def work(q: str) -> Any:
        return consume(args.url, q, args.messages, args.prefetch, args.ack_every)

    async def go() -> dict[str, Any]:
        if args.queue:
            return await work(args.queue)
        return await standalone("aiormq", args.url, args.messages, work)

    emit(run_loop(go, use_uvloop=args.uvloop))


if __name__ == "__main__":
    main()
