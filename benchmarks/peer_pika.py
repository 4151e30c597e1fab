"""Ceiling: synchronous pika (BlockingConnection), acking with `multiple=True` every --ack-every messages.

    benchmarks/.venv-peers/bin/python benchmarks/peer_pika.py --messages 50000 --prefetch 1000 [--queue Q]

pika reads the socket in large chunks and decodes many frames per read: the pure-Python limit of a
consumer on this machine, the figure the performance issue sets swarrow's full stack against. It runs
in the peers' venv (pika is pinned in peers-requirements.txt). No callback work, no logging.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from importlib.metadata import version
from typing import Any

import pika
from _common import URL, emit, standalone


def consume(url: str, queue: str, messages: int, prefetch: int, ack_every: int, timeout: float) -> dict[str, Any]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        started = time.perf_counter()
        started_cpu = time.process_time()
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)
        count = 0
        for count, (method, _properties, _body) in enumerate(
            channel.consume(queue, inactivity_timeout=timeout), start=1
        ):
            if method is None:
                raise SystemExit(f"peer_pika: timed out after {timeout:g}s with {count - 1:,} of {messages:,}")
            if count % ack_every == 0 or count == messages:
                channel.basic_ack(method.delivery_tag, multiple=True)
            if count == messages:
                break
        channel.cancel()
        channel.close()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - started_cpu
    finally:
        connection.close()
    return {
        "messages": messages,
        "seconds": elapsed,
        "rate": messages / elapsed,
        "cpu_us_per_message": round(cpu / messages * 1e6, 1),
        "library": f"pika {version('pika')}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=URL)
    parser.add_argument("--queue")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--ack-every", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    def work(queue: str) -> dict[str, Any]:
        return consume(args.url, queue, args.messages, args.prefetch, args.ack_every, args.timeout)

    if args.queue:
        emit(work(args.queue))
    else:

        async def async_work(queue: str) -> dict[str, Any]:
            return await asyncio.to_thread(work, queue)

        emit(asyncio.run(standalone("pika", args.url, args.messages, async_work)))


if __name__ == "__main__":
    main()
