"""Memory: RSS every 10,000 messages over 1,000,000 messages through the full default stack, in memory.

    python benchmarks/memory_soak.py [--messages 1000000] [--every 10000] [--concurrency 10]

`Consumer` + `MemoryMessageProvider` + the CLI's default stack (per-message log lines at INFO go to
/dev/null: formatting and writing happen, a growing file does not). A feeder keeps the queue topped
up in batches so the queue itself never holds more than ~2 batches. Reports the RSS samples and the
growth between 100k messages and the end (the target: <= 5%).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import anyio
from _common import emit
from prometheus_client import CollectorRegistry

from processors.defaults import default_stack
from swarrow import Consumer, MemoryBroker, Message, Stack

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


async def soak(messages: int, every: int, concurrency: int, clear_settled_log: bool) -> dict[str, Any]:
    from swarrow.logs import configure_logging

    configure_logging("INFO", "text", stream=open(os.devnull, "w"))  # noqa: SIM115, ASYNC230
    broker = MemoryBroker("soak")
    broker.declare_queue_nowait("soak")
    provider = broker.provider("soak", prefetch=max(100, concurrency))
    layers = default_stack(
        provider=provider, publisher=broker.publisher(), max_runtime=3600.0, max_messages=messages,
        memory_limit=4096.0, metrics=True, registry=CollectorRegistry(), log=True,
    )
    samples: list[tuple[int, float]] = []
    count = 0
    published = 0
    template = Message(b"x" * 100, message_id="soak", delivery_mode=2)

    def top_up() -> None:
        nonlocal published
        batch = min(every, messages - published)
        for _ in range(batch):
            broker.publish_nowait(template, "soak")
        published += batch

    async def callback(message: Message) -> None:
        nonlocal count
        count += 1
        if count % every == 0:
            if clear_settled_log:
                # MemoryMessageProvider appends every acked tag to `.acked` (for tests): ~36 bytes a
                # message that is not the stack's. Cleared here so the samples show the stack itself.
                provider.acked.clear()
                provider.rejected.clear()
            samples.append((count, rss_mib()))
        if broker.message_count("soak") < every // 2 and published < messages:
            top_up()

    top_up()
    consumer = Consumer(provider, Stack(*layers, callback=callback), concurrency=concurrency)
    started = time.perf_counter()
    reason = await consumer.run()
    elapsed = time.perf_counter() - started
    at = dict(samples)
    base = at.get(100_000) or (samples[len(samples) // 10][1] if samples else float("nan"))
    end = samples[-1][1] if samples else float("nan")
    return {
        "messages": count,
        "seconds": elapsed,
        "us_per_message": elapsed / max(count, 1) * 1e6,
        "stop": reason.code,
        "cleared_provider_ack_log": clear_settled_log,
        "rss_at_100k_mib": base,
        "rss_end_mib": end,
        "growth_pct": (end - base) / base * 100 if base == base else float("nan"),
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument(
        "--keep-ack-log", action="store_true", help="leave MemoryMessageProvider.acked growing (measures it)"
    )
    args = parser.parse_args()
    emit(anyio.run(soak, args.messages, args.every, args.concurrency, not args.keep_ack_log, backend="asyncio"))


if __name__ == "__main__":
    main()
