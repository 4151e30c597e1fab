"""Per-layer overhead in memory (no broker): µs per message through stacks of 0, 1, 5 and 12 trivial
layers, and through the CLI's default stack on the in-memory provider.

    python benchmarks/layers.py [--messages 200000] [--repeat 5]

Each figure is the best of --repeat timings of `await processor(message)` in a loop (the consumer loop
and the broker are left out, so what remains is the layers' own cost). The default stack is measured
with its settlement on `MemoryMessageProvider` and against `AckProcessor` + callback on the same
provider, so the difference is what the other layers add.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

import anyio
from _common import RESULTS, emit
from prometheus_client import CollectorRegistry

from processors.ack import AckProcessor
from processors.defaults import default_stack
from swarrow import Layer, MemoryBroker, Message, Processor, Stack
from swarrow.control import ConsumerControl


class Passthrough:
    """The cheapest possible layer: what any processor costs before it does anything."""

    def __init__(self, inner: Processor, /) -> None:
        self.inner = inner

    async def __call__(self, message: Message, /) -> bool:
        return await self.inner(message)


async def callback(message: Message) -> None:
    return None


async def time_stack(
    stack: Stack, messages: list[Message], repeat: int, before: Any = None, clock: Any = time.perf_counter
) -> float:
    """Best µs per message over `repeat` passes, with the stack's lifespans entered (`clock`: wall time
    by default; `time.process_time` counts the process's CPU, its threads included)."""
    built = stack.build()
    control = ConsumerControl(queue_name="bench", concurrency=1)
    control._bind()
    best = float("inf")
    async with built.lifespan(control):
        processor = built.processor
        for _ in range(repeat):
            batch = before() if before is not None else messages
            started = clock()
            for message in batch:
                await processor(message)
            best = min(best, clock() - started)
    return best / len(messages) * 1e6


def memory_batch(broker: MemoryBroker, provider: Any, count: int) -> list[Message]:
    for _ in range(count):
        broker.publish_nowait(Message(b"x" * 100, message_id="m", delivery_mode=2), "bench")
    out = []
    while (m := provider.receive_nowait()) is not None:
        out.append(m)
    assert len(out) == count
    return out


async def measure(count: int, repeat: int, log_path: str) -> dict[str, Any]:
    message = Message(b"x" * 100, message_id="m", queue="bench", delivery_tag=1)
    plain = [message] * count
    result: dict[str, Any] = {}
    for depth in (0, 1, 5, 12):
        stack = Stack(*[Layer(Passthrough) for _ in range(depth)], callback=callback)
        result[f"trivial_{depth}"] = await time_stack(stack, plain, repeat)
    result["per_trivial_layer"] = (result["trivial_12"] - result["trivial_0"]) / 12

    from swarrow.logs import configure_logging

    configure_logging("INFO", "text", stream=open(log_path, "w", buffering=1 << 16))  # noqa: SIM115, ASYNC230
    broker = MemoryBroker("bench-layers")
    broker.declare_queue_nowait("bench")
    publisher = broker.publisher()
    variants: dict[str, Any] = {
        "ack_callback": lambda p: [Layer(AckProcessor, provider=p)],
        "default_no_log": lambda p: default_stack(
            provider=p,
            publisher=publisher,
            max_runtime=3600.0,
            max_messages=10**12,
            memory_limit=4096.0,
            metrics=True,
            registry=CollectorRegistry(),
            log=False,
        ),
        "default": lambda p: default_stack(
            provider=p,
            publisher=publisher,
            max_runtime=3600.0,
            max_messages=10**12,
            memory_limit=4096.0,
            metrics=True,
            registry=CollectorRegistry(),
            log=True,
        ),
    }
    for name, make in variants.items():
        provider = broker.provider("bench", prefetch=10**9)
        await provider.start()
        layers = make(provider)
        chunk = min(count, 50_000)
        result[name] = await time_stack(
            Stack(*layers, callback=callback),
            [message] * chunk,
            repeat,
            before=lambda provider=provider, chunk=chunk: memory_batch(broker, provider, chunk),
        )
        result[f"{name}_layers"] = len(layers)
        await provider.close()
    result["default_stack_cost"] = result["default"] - result["ack_callback"]
    result["default_no_log_cost"] = result["default_no_log"] - result["ack_callback"]
    logging.getLogger().handlers.clear()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--log-file", default=os.path.join(RESULTS, "layers.log"))
    args = parser.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    emit(anyio.run(measure, args.messages, args.repeat, args.log_file, backend="asyncio"))


if __name__ == "__main__":
    main()
