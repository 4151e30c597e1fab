"""swarrow against the real broker: (b) ack + callback only, or (c) the CLI's full default stack.

    python benchmarks/swarrow_consumer.py --stack default --messages 50000 --prefetch 1000 --concurrency 10 \
        [--uvloop] [--ack-batch-size N] [--ack-flush-ms T] [--queue Q] [--profile out.txt]

`--stack callback` is the least a consumer needs for at-least-once: `AckProcessor` around the callback.
`--stack default` is `processors.defaults.default_stack` as `swarrow consume` builds it: signal handler,
max_runtime, max_messages, memory_limit, metrics (own registry), logger at INFO to a file, exception
catcher, ack, retry. Prints one JSON line: rate = messages / seconds from `Consumer.run()` (opens the
channel) to its return (last ack flushed, channel closed).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

from _common import RESULTS, URL, emit, run_loop, standalone
from prometheus_client import CollectorRegistry

from processors.ack import AckProcessor
from swarrow import Consumer, Layer, Message, Stack
from swarrow.amqp import AmqpBroker


def build_layers(kind: str, provider: Any, publisher: Any, messages: int, *, log: bool = True) -> list[Any]:
    if kind == "callback":
        return [Layer(AckProcessor, provider=provider)]
    from processors.defaults import default_stack

    return default_stack(
        provider=provider,
        publisher=publisher,
        signals=True,
        max_runtime=3600.0,
        max_messages=messages,
        memory_limit=4096.0,
        metrics=True,
        registry=CollectorRegistry(),
        log=log,
        catch=True,
        retry=True,
    )


def log_to_file(path: str) -> None:
    """INFO to a file, the way `swarrow consume --log-level INFO > file` runs."""
    from swarrow.logs import configure_logging

    configure_logging("INFO", "text", stream=open(path, "w", buffering=1 << 16))  # noqa: SIM115


async def consume(
    url: str,
    queue: str,
    *,
    kind: str,
    messages: int,
    prefetch: int,
    concurrency: int,
    ack_batch_size: int | None,
    ack_flush_ms: float | None,
    task_per_delivery: bool = False,
    frame_per_read: bool = False,
    log: bool = True,
) -> dict[str, Any]:
    broker = AmqpBroker(url)
    await broker.connect()
    options: dict[str, Any] = {}
    if ack_batch_size is not None:
        options["ack_batch_size"] = ack_batch_size
    if ack_flush_ms is not None:
        options["ack_flush_interval"] = ack_flush_ms / 1000.0
    provider = broker.provider(queue, prefetch=prefetch, **options)
    provider.fast_delivery = not task_per_delivery
    provider.bulk_intake = not frame_per_read
    publisher = broker.publisher()
    count = 0

    async def callback(message: Message) -> bool:
        nonlocal count
        count += 1
        return count < messages

    layers = build_layers(kind, provider, publisher, messages, log=log)
    consumer = Consumer(provider, Stack(*layers, callback=callback), concurrency=concurrency, grace_period=30)
    try:
        started = time.perf_counter()
        started_cpu = time.process_time()
        reason = await consumer.run()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - started_cpu
        fast_path = provider.fast_path
        route = fast_path.bulk_route if fast_path is not None else None
        bulk_taken = route.taken if route is not None else 0
    finally:
        await publisher.close()
        await broker.close()
    return {
        "messages": count,
        "seconds": elapsed,
        "rate": count / elapsed,
        "stop": reason.code,
        "stale_settlements": getattr(provider, "stale_settlements", 0),
        "bulk_intake": bool(provider.fast_path and provider.fast_path.bulk_intake),
        "bulk_taken": bulk_taken,  # deliveries the bulk intake decoded; the rest went aiormq's way
        "cpu_us_per_message": round(cpu / max(count, 1) * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=URL)
    parser.add_argument("--queue")
    parser.add_argument("--stack", choices=("callback", "default"), default="default")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--ack-batch-size", type=int)
    parser.add_argument("--ack-flush-ms", type=float)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument(
        "--task-per-delivery", action="store_true", help="aiormq's task per delivery (A/B check)"
    )
    parser.add_argument(
        "--frame-per-read", action="store_true", help="no bulk intake: aiormq reads each frame (A/B check)"
    )
    parser.add_argument("--no-log", action="store_true", help="default stack without its logger layer")
    parser.add_argument("--log-file", default=os.path.join(RESULTS, "consumer.log"))
    parser.add_argument("--profile", help="write a cProfile summary of the run to this file")
    args = parser.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.log_file)), exist_ok=True)
    if args.stack == "default":
        log_to_file(args.log_file)
    else:
        logging.basicConfig(level=logging.WARNING)

    def work(queue: str) -> Any:
        return consume(
            args.url,
            queue,
            kind=args.stack,
            messages=args.messages,
            prefetch=args.prefetch,
            concurrency=args.concurrency,
            ack_batch_size=args.ack_batch_size,
            ack_flush_ms=args.ack_flush_ms,
            task_per_delivery=args.task_per_delivery,
            frame_per_read=args.frame_per_read,
            log=not args.no_log,
        )

    async def go() -> dict[str, Any]:
        if args.queue:
            return await work(args.queue)
        return await standalone("swarrow", args.url, args.messages, work)

    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        result = run_loop(go, use_uvloop=args.uvloop)
        profiler.disable()
        with open(args.profile, "w") as out:
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
    else:
        result = run_loop(go, use_uvloop=args.uvloop)
    emit(result)


if __name__ == "__main__":
    main()
