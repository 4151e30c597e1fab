"""A worker for the job-tracking end-to-end tests: the default stack with `track_jobs`, on RabbitMQ.

    python tests/integration/jobs_worker.py AMQP_URL QUEUE STORE_URL [--metrics-port N] [--buffer-size N]

Bodies say what to do: `ok`; `once` fails on the first delivery (no attempt header) and then works;
`always` fails every time (so it is dead-lettered after the retries); `slow` sleeps 1 s first.
"""

from __future__ import annotations

import argparse
import logging
import sys

import anyio

from processors.defaults import default_stack
from swarrow import Consumer, Message, Stack
from swarrow.amqp import AmqpBroker
from swarrow.topology import RETRY_ATTEMPT_HEADER

DELAYS = (0.05, 0.1, 0.2)


async def handle(message: Message) -> None:
    kind = message.body
    if kind == b"slow":
        await anyio.sleep(1.0)
    elif kind == b"always":
        raise RuntimeError("always fails")
    elif kind == b"once" and not message.headers.get(RETRY_ATTEMPT_HEADER):
        raise RuntimeError("fails the first time")


async def main(args: argparse.Namespace) -> None:
    broker = AmqpBroker(args.url, reconnect_interval=0.5)
    await broker.connect()
    provider = broker.provider(args.queue, prefetch=args.prefetch)
    layers = default_stack(
        provider=provider,
        publisher=broker.publisher(),
        log=False,
        retry_attempts=len(DELAYS),
        retry_delays=DELAYS,
        track_jobs=None,
        metrics_address=("127.0.0.1", args.metrics_port) if args.metrics_port else None,
    )
    from processors.job_tracker import JobTrackerProcessor
    from swarrow import Layer

    # default_stack's place for it (after the logger, before the catcher), with this test's buffer size
    index = next(i for i, layer in enumerate(layers) if layer.factory.__name__ == "ExceptionCatcherProcessor")
    layers.insert(index, Layer(JobTrackerProcessor, store=args.store, buffer_size=args.buffer_size))
    try:
        await Consumer(provider, Stack(*layers, callback=handle), concurrency=args.concurrency).run()
    finally:
        await broker.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("store")
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--buffer-size", type=int, default=50_000)
    parser.add_argument("--prefetch", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    anyio.run(main, parser.parse_args(), backend="asyncio")
