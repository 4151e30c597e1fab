"""What tracing costs per message, in memory (no broker): the default stack without and with `otel=True`.

    python benchmarks/tracing_cost.py [--messages 50000] [--repeat 5]

Three figures, µs per message through the CLI's default stack on the in-memory provider (best of
--repeat): tracing off (the layer is not in the stack); on, with only the OpenTelemetry API (no SDK:
the no-op tracer an application gets before it configures one); on, with the SDK recording every span
and a BatchSpanProcessor feeding an exporter that drops them (what a configured application pays
before its exporter's own network cost). Each in CPU time of the process (`*_cpu_us`, the batch
processor's thread included; what a shared machine disturbs least) and wall time (`*_wall_us`); the
ratios to "off" are of the same run; "off" is measured again last to show the drift, and the load
average is reported.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import anyio
from _common import emit
from layers import callback, memory_batch, time_stack
from prometheus_client import CollectorRegistry

from processors.defaults import default_stack
from swarrow import MemoryBroker, Message, Stack


async def _stack_cost(broker: MemoryBroker, count: int, repeat: int, otel: bool, clock: Any) -> float:
    publisher = broker.publisher()
    provider = broker.provider("bench", prefetch=10**9)
    await provider.start()
    layers = default_stack(
        provider=provider, publisher=publisher, metrics=True, registry=CollectorRegistry(), log=False, otel=otel,
    )  # fmt: skip
    message = Message(b"x" * 100, message_id="m", queue="bench", delivery_tag=1)
    cost = await time_stack(
        Stack(*layers, callback=callback), [message] * count, repeat,
        before=lambda: memory_batch(broker, provider, count), clock=clock,
    )  # fmt: skip
    await provider.close()
    return cost


async def _both(
    broker: MemoryBroker, count: int, repeat: int, otel: bool, name: str, out: dict[str, Any]
) -> None:
    out[f"{name}_cpu_us"] = round(await _stack_cost(broker, count, repeat, otel, time.process_time), 2)
    out[f"{name}_wall_us"] = round(await _stack_cost(broker, count, repeat, otel, time.perf_counter), 2)


async def measure(count: int, repeat: int) -> dict[str, Any]:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    logging.disable(logging.CRITICAL)
    broker = MemoryBroker("bench-tracing")
    broker.declare_queue_nowait("bench")
    result: dict[str, Any] = {"loadavg_before": os.getloadavg()[0], "messages": count, "repeat": repeat}
    await _both(broker, count, repeat, False, "off", result)
    await _both(broker, count, repeat, True, "api_only", result)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=count * 2))
    trace.set_tracer_provider(provider)
    await _both(broker, count, repeat, True, "sdk", result)
    provider.shutdown()
    await _both(broker, count, repeat, False, "off_again", result)
    for clock in ("cpu", "wall"):
        off = result[f"off_{clock}_us"]
        for name in ("api_only", "sdk"):
            result[f"{name}_{clock}_cost_us"] = round(result[f"{name}_{clock}_us"] - off, 2)
            result[f"{name}_{clock}_ratio"] = round(result[f"{name}_{clock}_us"] / off, 2)
    result["loadavg_after"] = os.getloadavg()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    emit(anyio.run(measure, args.messages, args.repeat, backend="asyncio"))


if __name__ == "__main__":
    main()
