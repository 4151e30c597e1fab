"""`python -m swarrow.demo` (`make run`): publish thousands of messages, consume them through the real stack.

Every 500th message fails on its first try (retried by the broker after 1 s), one fails for good
(dead-lettered to `swarrow.demo.dead`); the queues are deleted at the end. Without `SWARROW_URL`
and with no RabbitMQ answering on the default URL (or with `--in-memory`), it runs the same demo on
the in-memory broker and says so on its first line, so the first command always shows the onion.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import anyio

from swarrow.broker import Broker
from swarrow.errors import BrokerUnavailableError, PermanentError
from swarrow.factory import open_broker
from swarrow.message import Message
from swarrow.runner import consume
from swarrow.topology import RETRY_ATTEMPT_HEADER, RetryTopology
from swarrow.urls import DEFAULT_URL

__all__ = ["main"]

QUEUE = "swarrow.demo"
MEMORY_URL = "memory://demo"
TOTAL = 3000
DELAYS = (1.0, 2.0)
FLAKY_EVERY = 500
POISON = 1234


class _Tally:
    def __init__(self) -> None:
        self.processed = 0
        self.retried = 0
        self.dead = 0

    def handle(self, message: Message) -> bool:
        n = int(message.body)
        if n == POISON:
            self.dead += 1
            self._maybe_done()
            raise PermanentError(f"message {n} can never succeed (demo)")
        if n % FLAKY_EVERY == 0 and RETRY_ATTEMPT_HEADER not in message.headers:
            self.retried += 1
            raise RuntimeError(f"message {n} fails on its first try (demo)")
        self.processed += 1
        return not self._maybe_done()

    def _maybe_done(self) -> bool:
        return self.processed + self.dead >= TOTAL


async def _publish(broker: Broker) -> None:
    publisher = broker.publisher()
    numbers = iter(range(1, TOTAL + 1))

    async def worker() -> None:
        for n in numbers:
            await publisher.publish(Message(str(n).encode(), message_id=f"demo-{n}"), QUEUE)

    async with anyio.create_task_group() as group:
        for _ in range(100):
            group.start_soon(worker)


async def _progress(tally: _Tally, started: float) -> None:
    while True:
        await anyio.sleep(1)
        done = tally.processed + tally.dead
        elapsed = time.perf_counter() - started
        print(
            f"  consumed {done:>5}/{TOTAL}  ({done / elapsed:,.0f} msg/s, {tally.retried} retried)",
            flush=True,
        )


async def _open(in_memory: str | None, default_url: str) -> tuple[str, Broker] | None:
    """The broker to run on: SWARROW_URL's (None if unreachable), else the default, else the in-memory one."""
    given = os.environ.get("SWARROW_URL")
    if in_memory is None:
        url = given or default_url
        broker = open_broker(url)
        try:
            await broker.connect()
            return url, broker
        except BrokerUnavailableError as exc:
            if given:  # the user named a broker: falling back would hide their mistake
                print(f"swarrow demo: {exc}", file=sys.stderr)
                print(
                    "Check SWARROW_URL, or unset it to run the demo on the in-memory broker.", file=sys.stderr
                )
                return None
            in_memory = f"no RabbitMQ answers at {broker.url}"
    print(
        f"swarrow demo on the in-memory broker ({MEMORY_URL}) because {in_memory} "
        "and SWARROW_URL is not set: the same stack, retries and dead letters, inside this process "
        "(start RabbitMQ with `make rabbitmq`, or set SWARROW_URL, for the real thing)",
        flush=True,
    )
    broker = open_broker(MEMORY_URL)
    await broker.connect()
    return MEMORY_URL, broker


async def _main(in_memory: str | None = None, default_url: str = DEFAULT_URL) -> int:
    opened = await _open(in_memory, default_url)
    if opened is None:
        return 4
    url, broker = opened
    topology = RetryTopology(QUEUE, DELAYS)
    try:
        for name, _ in topology.queues():
            await broker.delete_queue(name)  # a clean start, whatever an interrupted run left
        await topology.declare(broker)
        print(f"swarrow demo on {broker.url}: publishing {TOTAL} messages to {QUEUE} (with confirms)")
        started = time.perf_counter()
        await _publish(broker)
        print(f"  published in {time.perf_counter() - started:.2f} s; consuming with concurrency 10")
        tally = _Tally()
        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            group.start_soon(_progress, tally, started)
            reason = await consume(
                tally.handle,
                queue=QUEUE,
                url=url,
                prefetch=100,
                concurrency=10,
                retry_attempts=len(DELAYS),
                retry_delays=DELAYS,
                log=False,
            )
            group.cancel_scope.cancel()
        elapsed = time.perf_counter() - started
        rate = (tally.processed + tally.dead) / elapsed
        print(
            f"done ({reason}): {tally.processed} processed, {tally.retried} retried, "
            f"{tally.dead} dead-lettered in {elapsed:.2f} s ({rate:,.0f} msg/s)"
        )
        return 0
    finally:
        with anyio.CancelScope(shield=True):
            for name, _ in topology.queues():
                await broker.delete_queue(name)
            await broker.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the demo; exit 4 when the broker SWARROW_URL names is unreachable."""
    from swarrow.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m swarrow.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--in-memory",
        metavar="REASON",
        default=None,
        help="run on the in-memory broker, saying why on the first line (make run passes it when "
        "RabbitMQ could not be installed or started)",
    )
    options = parser.parse_args(argv)
    configure_logging("WARNING")
    sys.exit(anyio.run(_main, options.in_memory, backend="asyncio"))


if __name__ == "__main__":
    main()
