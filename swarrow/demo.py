"""`python -m swarrow.demo` (`make run`): publish thousands of messages, consume them through the real stack.

Every 500th message fails on its first try (retried by the broker after 1 s), one fails for good
(dead-lettered to `swarrow.demo.dead`); the queues are deleted at the end.
"""

from __future__ import annotations

import sys
import time

import anyio

from swarrow.broker import Broker, open_broker
from swarrow.errors import BrokerUnavailableError, PermanentError
from swarrow.message import Message
from swarrow.runner import consume, resolve_url
from swarrow.topology import RETRY_ATTEMPT_HEADER, RetryTopology

__all__ = ["main"]

QUEUE = "swarrow.demo"
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


async def _main() -> int:
    url = resolve_url(None)
    broker = open_broker(url)
    try:
        await broker.connect()
    except BrokerUnavailableError as exc:
        print(f"swarrow demo: {exc}", file=sys.stderr)
        print("Start RabbitMQ with `make rabbitmq`, or point SWARROW_URL at a broker.", file=sys.stderr)
        return 4
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


def main() -> None:
    """Run the demo; exit 4 when no broker is reachable."""
    from swarrow.logs import configure_logging

    configure_logging("WARNING")
    sys.exit(anyio.run(_main, backend="asyncio"))


if __name__ == "__main__":
    main()
