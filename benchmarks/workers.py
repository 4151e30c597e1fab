"""One worker against `--workers 2` on one queue, through the CLI: what a second process gives on this machine.

    python benchmarks/workers.py [--messages 50000] [--runs 3] [--workers 1,2]

Each run fills a fresh durable queue with N persistent ~100-byte messages, starts
`swarrow consume workers:noop --queue Q --workers W --prefetch 1000 --concurrency 10 --declare` (the full default
stack, INFO log lines to a file) and rates it by the workers' own log lines: N over the time between the
first and the last `acked` line. Then SIGTERM, and the queue must be empty. Runs alternate between the worker counts. The
consumer's rate is N over that time; the broker (on the same 2 cores) shares the CPU with the workers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import statistics
import sys
import time
from typing import Any

from _common import RESULTS, ROOT, URL, delete_queue, fill_queue, unique_queue

SWARROW = os.path.join(os.path.dirname(sys.executable), "swarrow")
HERE = os.path.dirname(os.path.abspath(__file__))


def noop(message: Any) -> None:
    """The callback the workers run: nothing, so the figure is swarrow's own cost."""


async def ready(channel: Any, queue: str) -> int:
    return int((await channel.queue_declare(queue, passive=True)).message_count or 0)


async def one_run(url: str, workers: int, messages: int, timeout: float) -> float:
    import aiormq

    queue = unique_queue(f"workers{workers}")
    await fill_queue(url, queue, messages)
    log = open(os.path.join(RESULTS, f"workers{workers}.log"), "w")  # noqa: SIM115, ASYNC230
    proc = await asyncio.create_subprocess_exec(
        SWARROW, "consume", "workers:noop", "--url", url, "--queue", queue, "--workers", str(workers),
        "--prefetch", "1000", "--concurrency", "10", "--log-level", "info", "--declare",
        stdout=log, stderr=log, cwd=HERE, env={**os.environ, "PYTHONPATH": HERE},
    )  # fmt: skip
    connection = await aiormq.connect(url)
    path = log.name
    try:
        channel = await connection.channel()
        deadline = time.monotonic() + timeout
        count_acked = AckedLines(path)
        while (acked := count_acked()) < messages:
            if proc.returncode is not None:
                raise RuntimeError(f"swarrow consume exited {proc.returncode} after {acked} messages: see {path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{acked} of {messages} messages acked before the timeout: see {path}")
            await asyncio.sleep(0.05)
        count_acked.file.close()
        first, last = acked_span(path)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
        if left := await ready(channel, queue):
            raise RuntimeError(f"{left} messages back in the queue after every one was acked")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
        await connection.close()
        for name in (queue, f"{queue}.dead", *(f"{queue}.retry.{k}" for k in (1, 2, 3))):
            await delete_queue(url, name)  # --declare made the retry and dead queues too
    return (messages - 1) / (last - first)


class AckedLines:
    """Counts the workers' `acked` log lines, reading only what was appended since the last call."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "rb")  # noqa: SIM115
        self.count = 0
        self.tail = b""

    def __call__(self) -> int:
        data = self.tail + self.file.read()
        cut = data.rfind(b"\n") + 1
        self.count += data[:cut].count(b" acked in ")
        self.tail = data[cut:]
        return self.count


def acked_span(path: str) -> tuple[float, float]:
    """Seconds (log timestamps) of the first and the last acked message."""
    stamps = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if " acked in " in line:
                day, clock = line.split(" ", 2)[:2]
                when = dt.datetime.strptime(f"{day} {clock}", "%Y-%m-%d %H:%M:%S,%f")
                stamps.append(when.timestamp())
    return min(stamps), max(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=URL)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    counts = [int(x) for x in args.workers.split(",")]
    rates: dict[int, list[float]] = {w: [] for w in counts}
    for _ in range(args.runs):
        for w in counts:
            rates[w].append(asyncio.run(one_run(args.url, w, args.messages, max(60.0, args.messages / 500))))
    medians = {w: statistics.median(r) for w, r in rates.items()}
    result = {
        "messages": args.messages,
        "runs": args.runs,
        "load_at_end": os.getloadavg()[0],
        "rates": {str(w): [round(x) for x in r] for w, r in rates.items()},
        "medians": {str(w): round(m) for w, m in medians.items()},
        "ratio_to_one_worker": {str(w): round(m / medians[counts[0]], 2) for w, m in medians.items()},
        "root": ROOT,
    }
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
