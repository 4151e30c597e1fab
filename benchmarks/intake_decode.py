"""The bulk intake without a broker: consumer CPU µs per delivery to decode it and build its `Message`.

    python benchmarks/intake_decode.py [--messages 50000] [--repeat 7]

Wall rates and even CPU per message on the real broker move by ±20% between runs on these shared
machines; this measures the intake's own work, deterministic, so two checkouts can be compared
(`PYTHONPATH=<checkout> python benchmarks/intake_decode.py`). pamqp marshals N deliveries (100-byte
body, delivery_mode, message_id, content_type: what a typical producer sends) into one byte stream;
the bulk receiver reads it from an `asyncio.StreamReader` in 64 KiB chunks and hands each delivery
to a `take` that builds the `Message` the way the provider does. Best of --repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import time
from collections.abc import Callable
from typing import Any

import pamqp.frame
from _common import emit
from aiormq.connection import FrameReceiver
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from swarrow.amqp._errors import EMPTY_HEADERS
from swarrow.amqp.intake import Route, become_bulk
from swarrow.message import Message, delivered_message

_CHUNK = 65536


class _Channel:
    """What the receiver reads of an aiormq channel: its number and frame queue."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.frames: asyncio.Queue[Any] = asyncio.Queue()


class _Connection:
    """What the receiver reads of an aiormq connection."""

    def __init__(self, channel: _Channel) -> None:
        self.channels = {channel.number: channel}
        self._Connection__last_frame_time = 0.0


def _tuple_decoders() -> bool:
    """Whether this checkout's intake hands the provider tuples (`swarrow.amqp.frame_tuples`)."""
    return importlib.util.find_spec("swarrow.amqp.frame_tuples") is not None or hasattr(
        importlib.import_module("swarrow.amqp.frames"), "property_values"
    )


def _taker(out: list[Message]) -> Callable[..., None]:
    """The provider's Message construction for this checkout's route (tuples, or pamqp-named objects)."""
    if _tuple_decoders():

        def take(d: Any, values: Any, body: bytes, channel: Any) -> None:
            out.append(delivered_message(body, *values, d[1], d[0], d[2], d[3], d[4], "bench"))

        return take

    def take_objects(d: Any, p: Any, body: bytes, channel: Any) -> None:  # before the tuple decoders
        out.append(
            delivered_message(
                body, p.headers or EMPTY_HEADERS, p.content_type, p.content_encoding, p.delivery_mode,
                p.priority, p.correlation_id, p.reply_to, p.expiration, p.message_id, p.timestamp,
                p.message_type, p.user_id, p.app_id, d.delivery_tag, d.consumer_tag, d.redelivered,
                d.exchange, d.routing_key, "bench",
            )
        )  # fmt: skip

    return take_objects


def wire_stream(messages: int) -> bytes:
    """`messages` deliveries on channel 1 as the broker sends them."""
    body = b"x" * 100
    parts = []
    for tag in range(1, messages + 1):
        deliver = commands.Basic.Deliver("swarrow.bench.0123456789ab", tag, False, "", "bench")
        properties = commands.Basic.Properties(
            delivery_mode=2, message_id=f"m-{tag:06d}", content_type="application/octet-stream"
        )
        parts.append(pamqp.frame.marshal(deliver, 1))
        parts.append(pamqp.frame.marshal(ContentHeader(0, len(body), properties), 1))
        parts.append(pamqp.frame.marshal(ContentBody(body), 1))
    return b"".join(parts)


async def one_pass(data: bytes, messages: int) -> float:
    """CPU µs per delivery for one pass over `data`."""
    reader = asyncio.StreamReader()
    channel = _Channel(1)
    receiver = become_bulk(FrameReceiver(reader), _Connection(channel))
    assert receiver is not None
    out: list[Message] = []
    route_args: list[Any] = [channel, _taker(out), "bench", lambda *_: None]
    receiver._swarrow_routes[1] = Route(*route_args)
    for start in range(0, len(data), _CHUNK):
        reader.feed_data(data[start : start + _CHUNK])
    reader.feed_eof()
    started = time.process_time()
    try:
        frame = await receiver.get_frame()
    except StopAsyncIteration:
        frame = None
    cpu = time.process_time() - started
    if frame is not None or len(out) != messages:
        raise SystemExit(f"the intake took {len(out)} of {messages} deliveries and returned {frame!r}")
    return cpu / messages * 1e6


async def measure(messages: int, repeat: int) -> dict[str, Any]:
    data = wire_stream(messages)
    passes = [await one_pass(data, messages) for _ in range(repeat)]
    return {
        "messages": messages,
        "cpu_us_per_delivery": round(min(passes), 3),
        "all_passes": [round(p, 3) for p in passes],
        "tuple_decoders": _tuple_decoders(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    emit(asyncio.run(measure(args.messages, args.repeat)))


if __name__ == "__main__":
    main()
