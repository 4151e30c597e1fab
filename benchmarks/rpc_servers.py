"""Servers for benchmarks/rpc.py: swarrow's callback, and aio-pika's `patterns.RPC` server.

swarrow:  swarrow consume rpc_servers:echo --queue Q --concurrency 10 (run by rpc.py)
aio-pika: python benchmarks/rpc_servers.py aiopika --queue Q [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from _common import URL


async def echo(message: Any) -> bytes:
    """swarrow's callback: answer with the request's body (the reply layer publishes it)."""
    return bytes(message.body)


async def _aiopika_server(url: str, queue: str, concurrency: int) -> None:
    import aio_pika
    from aio_pika.patterns import RPC

    async def echo_body(*, body: bytes) -> bytes:
        return body

    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=concurrency)
    rpc = await RPC.create(channel)
    await rpc.register(queue, echo_body, auto_delete=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await rpc.close()
    await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["aiopika"])
    parser.add_argument("--queue", required=True)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--url", default=URL)
    args = parser.parse_args()
    asyncio.run(_aiopika_server(args.url, args.queue, args.concurrency))


if __name__ == "__main__":
    main()
