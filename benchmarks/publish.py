"""Publish: `swarrow publish` (confirmed rate it reports) vs a raw aio-pika publisher with confirms.

    python benchmarks/publish.py --messages 50000 [--window 100] [--which raw|cli]

Both publish persistent ~100-byte messages to a fresh durable queue with `window` publishes awaiting
their confirm at once (the CLI's default is 100) and time from the first publish to the last confirm.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from typing import Any

import aio_pika
from _common import BODY, URL, delete_queue, emit, unique_queue


async def raw_publish(url: str, queue: str, messages: int, window: int) -> float:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True)
        exchange = channel.default_exchange
        next_n = 0

        async def worker() -> None:
            nonlocal next_n
            while next_n < messages:
                next_n += 1
                await exchange.publish(
                    aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=str(next_n)),
                    routing_key=queue,
                    mandatory=True,
                )

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(window, messages))))
        return time.perf_counter() - started
    finally:
        await connection.close()


def cli_publish(url: str, queue: str, messages: int, window: int) -> float:
    swarrow = os.path.join(os.path.dirname(sys.executable), "swarrow")
    declare = asyncio.run(_declare(url, queue))
    assert declare
    out = subprocess.run(
        [swarrow, "publish", "--queue", queue, "--body", BODY.decode(), "--count", str(messages),
         "--persistent", "--window", str(window), "--url", url, "--no-progress"],
        capture_output=True, text=True, timeout=max(60, messages / 500), check=True,
    )
    found = re.search(r"in ([0-9.]+) s", out.stdout + out.stderr)
    if found is None:
        raise RuntimeError(f"unexpected `swarrow publish` output: {out.stdout!r} {out.stderr!r}")
    return float(found.group(1))


async def _declare(url: str, queue: str) -> bool:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        return True
    finally:
        await connection.close()


def measure(which: str, url: str, messages: int, window: int) -> dict[str, Any]:
    queue = unique_queue(f"publish.{which}")
    try:
        if which == "raw":
            seconds = asyncio.run(raw_publish(url, queue, messages, window))
        else:
            seconds = cli_publish(url, queue, messages, window)
    finally:
        asyncio.run(delete_queue(url, queue))
    return {"which": which, "messages": messages, "seconds": seconds, "rate": messages / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=URL)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--which", choices=("raw", "cli"), default="raw")
    args = parser.parse_args()
    emit(measure(args.which, args.url, args.messages, args.window))


if __name__ == "__main__":
    main()
