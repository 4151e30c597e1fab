"""Peer: a dramatiq worker (RabbitmqBroker, 8 threads) running a do-nothing actor over a pre-filled queue.

    benchmarks/.venv-peers/bin/python benchmarks/peer_dramatiq.py --messages 50000 --prefetch 1000 [--threads 8] [--queue Q]

Runs in its own venv (`make bench-peers-env`, pinned in peers-requirements.txt). dramatiq declares its own
queues (`Q`, `Q.DQ` for delays, `Q.XQ` for dead letters, with its own arguments) and reads only its own
JSON envelope, so this script fills the queue itself, outside the timing: it declares the queues through
dramatiq's broker, then publishes N dramatiq messages (`actor.message("x" * 100).encode()`: 100 bytes of
argument inside a ~300-byte envelope, each with its own message id), persistent, with publisher confirms.
All three queues are deleted afterwards (run.py deletes them too, should the script be killed).

Prefetch: dramatiq has no prefetch argument. Its worker gives each queue's consumer
`basic.qos(prefetch_count=dramatiq_queue_prefetch)`, an absolute count read from the environment when
dramatiq is imported, and defaults to 2 × threads (16 with 8 threads). `--prefetch` sets that variable
(1000 by default, like the other scripts; 0 keeps dramatiq's default). The delay queue's consumer keeps
its own default (1000 × threads) and has nothing to do here.

The broker keeps dramatiq's default middleware (AgeLimit, TimeLimit, ShutdownNotifications, Callbacks,
Pipelines, Retries) plus one that counts acks; dramatiq logs nothing per message unless at DEBUG.
Prints one JSON line: rate = messages / seconds from `worker.start()` (consumer connections open, qos,
basic.consume) to the moment the N-th ack has been written: once N acks are counted, a callback queued
behind them on the consumer's connection thread marks that every earlier `basic_ack` has gone out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from importlib.metadata import version
from typing import Any

from _common import URL, delete_queue, emit, queue_depth, unique_queue

BODY_ARG = "x" * 100


async def publish(url: str, queue: str, bodies: list[bytes], *, window: int = 2000) -> float:
    """Publish `bodies` persistently to `queue` (already declared) with confirms; return the seconds."""
    import aiormq
    from pamqp.commands import Basic

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        properties = Basic.Properties(delivery_mode=2)
        started = time.perf_counter()
        for i in range(0, len(bodies), window):
            confirms = await asyncio.gather(
                *(channel.basic_publish(b, routing_key=queue, properties=properties) for b in bodies[i : i + window])
            )
            if not all(isinstance(c, Basic.Ack) for c in confirms):
                raise RuntimeError("the broker nacked a benchmark message")
        return time.perf_counter() - started
    finally:
        await connection.close()


def run(url: str, queue: str, messages: int, prefetch: int, threads: int, timeout: float) -> dict[str, Any]:
    if prefetch:
        # Read once, when dramatiq.worker is imported: it has to be set before the import below.
        os.environ["dramatiq_queue_prefetch"] = str(prefetch)  # noqa: SIM112 (dramatiq's own spelling)
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.middleware import Middleware

    acked = 0
    failed = 0
    lock = threading.Lock()
    all_acked = threading.Event()

    class AckCounter(Middleware):
        """Counts acks (after dramatiq queued the basic_ack for its consumer thread) and failures."""

        def after_ack(self, broker: Any, message: Any) -> None:
            nonlocal acked
            with lock:
                acked += 1
                if acked == messages:
                    all_acked.set()

        def after_nack(self, broker: Any, message: Any) -> None:
            nonlocal failed
            with lock:
                failed += 1
            all_acked.set()  # stop waiting: the run has failed

    broker = RabbitmqBroker(url=url, confirm_delivery=True)
    broker.add_middleware(AckCounter())

    def noop(payload: str) -> None:
        """The trivial callback: takes the 100-byte argument, does nothing."""

    actor = dramatiq.actor(noop, broker=broker, queue_name=queue, actor_name="noop", max_retries=0)
    try:
        broker.declare_queue(queue, ensure=True)  # Q, Q.DQ and Q.XQ, with dramatiq's arguments
        bodies = [actor.message(BODY_ARG).encode() for _ in range(messages)]
        asyncio.run(publish(url, queue, bodies))

        worker = dramatiq.Worker(broker, worker_threads=threads)
        started = time.perf_counter()
        worker.start()
        try:
            if not all_acked.wait(timeout):
                raise SystemExit(
                    f"peer_dramatiq: timed out after {timeout:g}s with {acked:,} of {messages:,} messages acked"
                )
            if failed:
                raise SystemExit(f"peer_dramatiq: {failed} message(s) failed in the actor")
            # Callbacks on a pika connection run in the order they were added: once this one has run on the
            # queue's consumer thread (the delay queue's saw no message), every basic_ack queued before it
            # has been written to the socket.
            flushed = threading.Event()
            worker.consumers[queue].consumer.connection.add_callback_threadsafe(flushed.set)
            if not flushed.wait(timeout):
                raise SystemExit("peer_dramatiq: the consumer thread did not write its acks")
            elapsed = time.perf_counter() - started
        finally:
            worker.stop()  # not timed: it waits for idle threads to notice (worker_timeout, 1 s)
        queue_prefetch = worker.queue_prefetch
    finally:
        broker.close()
    envelope = len(bodies[0]) if bodies else 0
    return {
        "library": f"dramatiq {version('dramatiq')} (pika {version('pika')})",
        "messages": acked,
        "seconds": elapsed,
        "rate": acked / elapsed,
        "threads": threads,
        "queue_prefetch": queue_prefetch,
        "body_bytes": envelope,
    }


async def leftovers(url: str, queue: str) -> dict[str, int]:
    """Messages left in dramatiq's queue and its delay queue (unacked), and in its dead-letter queue."""
    return {
        "left_in_queue": await queue_depth(url, queue) + await queue_depth(url, f"{queue}.DQ"),
        "dead_lettered": await queue_depth(url, f"{queue}.XQ"),
    }


async def delete_all(url: str, queue: str) -> None:
    for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
        await delete_queue(url, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=URL)
    parser.add_argument("--queue", help="base name for dramatiq's queues (default: a fresh unique name)")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--prefetch", type=int, default=1000, help="dramatiq_queue_prefetch (0: dramatiq's default)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--timeout", type=float, help="give up after this many seconds (default: N/500, min 60)")
    args = parser.parse_args()
    timeout = args.timeout or max(60.0, args.messages / 500)
    queue = args.queue or unique_queue("dramatiq")
    try:
        result = run(args.url, queue, args.messages, args.prefetch, args.threads, timeout)
        result.update(asyncio.run(leftovers(args.url, queue)))
    finally:
        asyncio.run(delete_all(args.url, queue))
    emit(result)


if __name__ == "__main__":
    main()
