"""Replay speed: `swarrow dead replay` moving N 100-byte dead letters from Q.dead back to Q.

    python benchmarks/dead_replay.py [--messages 50000] [--runs 3] [--list]

Fills a fresh `Q.dead` with persistent (or, with `--transient`, transient) 100-byte messages carrying swarrow's dead-letter headers
(confirmed publishes), runs the real command (`--json`) and reports the rate it measured from its
first read to its last ack, plus the wall time of the whole process (start-up included), and, as
a yardstick of what the machine and broker allow at that moment, the rate of the fill itself (a
bare aiormq publisher with confirms, 2,000 in flight, that does not consume or ack). With
`--list`, also times `swarrow dead list` over the same queue. Checks that Q got every message and
Q.dead none, then deletes both queues.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time

import aiormq
from _common import BODY, URL, delete_queue, emit, queue_depth, unique_queue
from pamqp.commands import Basic


async def fill_dead(url: str, queue: str, count: int, *, persistent: bool = True) -> None:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.queue_declare(queue, durable=True)
        await channel.queue_declare(f"{queue}.dead", durable=True)
        sent = 0
        while sent < count:
            batch = min(2000, count - sent)
            confirms = await asyncio.gather(
                *(
                    channel.basic_publish(
                        BODY,
                        routing_key=f"{queue}.dead",
                        properties=Basic.Properties(
                            delivery_mode=2 if persistent else 1,
                            message_id=f"m{sent + i}",
                            headers={
                                "x-swarrow-error-type": "myapp.errors.Timeout",
                                "x-swarrow-error-message": "upstream timed out",
                                "x-swarrow-attempts": 4,
                                "x-swarrow-failed-at": "2026-01-10T12:00:00+00:00",
                                "x-swarrow-original-queue": queue,
                            },
                        ),
                    )
                    for i in range(batch)
                )
            )
            if not all(isinstance(c, Basic.Ack) for c in confirms):
                raise RuntimeError("the broker nacked a benchmark message")
            sent += batch
    finally:
        await connection.close()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dead(*args: str, url: str) -> tuple[dict[str, object], float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "swarrow", "dead", *args, "--url", url, "--json"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--list", action="store_true", help="also time `swarrow dead list`")
    parser.add_argument("--transient", action="store_true", help="transient messages (delivery mode 1)")
    args = parser.parse_args()
    rates, lists, fills, cpus = [], [], [], []
    for _ in range(args.runs):
        queue = unique_queue("dead-replay")
        try:
            started = time.perf_counter()
            asyncio.run(fill_dead(URL, queue, args.messages, persistent=not args.transient))
            fills.append(args.messages / (time.perf_counter() - started))
            if args.list:
                listed, _ = dead("list", "-q", queue, url=URL)
                lists.append(args.messages / float(listed["elapsed_seconds"]))  # type: ignore[arg-type]
            cpu = _children_cpu()
            result, wall = dead("replay", "-q", queue, url=URL)
            cpus.append((_children_cpu() - cpu) / args.messages * 1e6)
            if result["replayed"] != args.messages:
                raise RuntimeError(f"replayed {result['replayed']} of {args.messages}")
            if asyncio.run(queue_depth(URL, queue)) != args.messages:
                raise RuntimeError("Q did not get every message")
            if asyncio.run(queue_depth(URL, f"{queue}.dead")) != 0:
                raise RuntimeError("Q.dead is not empty")
            rate = args.messages / float(result["elapsed_seconds"])  # type: ignore[arg-type]
            rates.append(rate)
            print(f"replayed {args.messages} in {result['elapsed_seconds']} s ({rate:,.0f} msg/s; "
                  f"process {wall:.2f} s, {cpus[-1]:.0f} µs CPU per message); the fill, a bare aiormq publisher: {fills[-1]:,.0f} msg/s",
                  file=sys.stderr)  # fmt: skip
        finally:
            asyncio.run(delete_queue(URL, queue))
            asyncio.run(delete_queue(URL, f"{queue}.dead"))
    emit({"benchmark": "dead_replay", "messages": args.messages, "runs": args.runs,
          "persistent": not args.transient,
          "replay_msg_per_s_median": round(statistics.median(rates)), "replay_msg_per_s": [round(r) for r in rates],
          "list_msg_per_s": [round(r) for r in lists],
          "fill_msg_per_s": [round(r) for r in fills],
          "replay_cpu_us_per_msg": [round(c) for c in cpus]})  # fmt: skip


if __name__ == "__main__":
    main()
