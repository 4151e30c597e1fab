"""Shared helpers for the benchmark scripts: queues filled with confirms, unique names, timing, output."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

URL = os.environ.get("SWARROW_BENCH_URL", os.environ.get("SWARROW_URL", "amqp://guest:guest@127.0.0.1:5672/"))
BODY = b"x" * 100
ROOT = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(ROOT, "results")


def broker_cpu_seconds() -> float | None:
    """CPU seconds used so far by every RabbitMQ node on this machine (its `beam.smp` processes), or None.

    Why: wall rates here are the broker's. Its CPU per message, taken around each run, shows when a
    run fell into the broker's slow mode (the same consumer then costs the broker about twice the
    CPU per message) rather than leaving a consumer to take the blame. Linux /proc only.
    """
    total = 0.0
    found = False
    try:
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                text = stat.read()
        except OSError:  # gone, or not ours to read
            continue
        name_end = text.rfind(")")
        if text[text.find("(") + 1 : name_end] != "beam.smp":
            continue
        fields = text[name_end + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
        found = True
    return total if found else None


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def unique_queue(label: str) -> str:
    """A queue name no other run (or test) uses."""
    return f"bench.{label}.{uuid.uuid4().hex[:10]}"


async def fill_queue(url: str, queue: str, count: int, *, body: bytes = BODY, window: int = 2000) -> float:
    """Declare a durable queue and publish `count` persistent messages with confirms; return the seconds."""
    import aiormq
    from pamqp.commands import Basic

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.queue_declare(queue, durable=True)
        properties = Basic.Properties(delivery_mode=2, message_id="bench")
        started = time.perf_counter()
        sent = 0
        while sent < count:
            batch = min(window, count - sent)
            confirms = await asyncio.gather(
                *(channel.basic_publish(body, routing_key=queue, properties=properties) for _ in range(batch))
            )
            if not all(isinstance(c, Basic.Ack) for c in confirms):
                raise RuntimeError("the broker nacked a benchmark message")
            sent += batch
        return time.perf_counter() - started
    finally:
        await connection.close()


async def queue_depth(url: str, queue: str) -> int:
    """Ready messages in `queue` (after a consumer closed, unsettled ones are back in it)."""
    import aiormq

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        ok = await channel.queue_declare(queue, passive=True)
        return int(ok.message_count or 0)
    finally:
        await connection.close()


async def delete_queue(url: str, queue: str) -> None:
    """Delete `queue` (no error if absent)."""
    import aiormq

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue)
    finally:
        await connection.close()


def run_loop(main: Callable[[], Awaitable[Any]], *, use_uvloop: bool = False) -> Any:
    """Run `main` on a fresh asyncio loop, uvloop's when asked."""
    if use_uvloop:
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def emit(result: dict[str, Any]) -> None:
    """One JSON line on stdout: what run.py reads back from a worker process."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


async def standalone(
    label: str, url: str, messages: int, consume: Callable[[str], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """For a script run by hand: fill a private queue, consume it, check it is empty, delete it."""
    queue = unique_queue(label)
    try:
        await fill_queue(url, queue, messages)
        result = await consume(queue)
        result["left_in_queue"] = await queue_depth(url, queue)
        return result
    finally:
        await delete_queue(url, queue)
