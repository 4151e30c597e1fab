"""Peer for benchmarks/rpc.py: FastStream's RPC, a subscriber that returns a value and `broker.request()`.

    benchmarks/.venv-peers/bin/python benchmarks/peer_faststream_rpc.py server --queue Q [--concurrency 10]
    benchmarks/.venv-peers/bin/python benchmarks/peer_faststream_rpc.py client --queue Q --callers 100 --calls 5000

Runs in the peers' venv (`make bench-peers-env`). The server is what FastStream's docs show for RPC: a
subscriber whose return value is the reply, prefetch given as the subscriber's channel. The client sends
`--calls` requests from `--callers` concurrent tasks with `broker.request()` and prints one JSON line:
calls per second and p50 / p99 latency in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import time
from importlib.metadata import version

from _common import URL, emit
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue


async def serve(url: str, queue: str, concurrency: int) -> None:
    broker = RabbitBroker(url, logger=None)

    @broker.subscriber(RabbitQueue(queue, auto_delete=True), channel=Channel(prefetch_count=concurrency))
    async def echo(body: bytes) -> bytes:
        return body

    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.stop()


async def call(url: str, queue: str, callers: int, calls: int) -> dict[str, object]:
    broker = RabbitBroker(url, logger=None)
    await broker.connect()
    latencies: list[float] = []
    body = b"x" * 100
    per_caller = calls // callers

    async def caller() -> None:
        for _ in range(per_caller):
            started = time.perf_counter()
            reply = await broker.request(body, queue=queue, timeout=30)
            latencies.append(time.perf_counter() - started)
            if reply.body != body:
                raise RuntimeError("FastStream returned another body")

    await broker.request(body, queue=queue, timeout=30)  # warm-up: channel and reply consumer ready
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    seconds = time.perf_counter() - started
    await broker.stop()
    latencies.sort()
    return {
        "peer": f"faststream {version('faststream')}",
        "calls": len(latencies),
        "rate": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["server", "client"])
    parser.add_argument("--queue", required=True)
    parser.add_argument("--url", default=URL)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--callers", type=int, default=1)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    if args.mode == "server":
        asyncio.run(serve(args.url, args.queue, args.concurrency))
    else:
        emit(asyncio.run(call(args.url, args.queue, args.callers, args.calls)))


if __name__ == "__main__":
    main()
