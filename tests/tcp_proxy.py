"""A loopback TCP forwarder for tests that need a broker to go silent: it freezes on a chosen AMQP method."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import anyio
import anyio.abc

__all__ = [
    "BASIC_CONSUME",
    "BASIC_QOS",
    "CHANNEL_OPEN",
    "CONNECTION_OPEN",
    "QUEUE_DECLARE",
    "FreezingProxy",
    "freezing_proxy",
]

CONNECTION_OPEN = (10, 40)
QUEUE_DECLARE = (50, 10)
BASIC_QOS = (60, 10)
BASIC_CONSUME = (60, 20)
CHANNEL_OPEN = (20, 10)
_GONE = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)


class FreezingProxy:
    """Forwards client ↔ broker; once the client sends method `freeze_on`, nothing more passes either way.

    The sockets stay open, as with a broker that hangs or a network that drops packets: only a
    timeout on the client's side can notice. `port` is where clients connect.
    """

    def __init__(self, target_port: int, freeze_on: tuple[int, int] | None) -> None:
        self.target_port = target_port
        self.freeze_on = freeze_on
        self.frozen = anyio.Event()
        self.port = 0
        self.connections = 0  # TCP connections accepted so far
        self._channel_frames = 0

    def _scan(self, buffer: bytearray) -> int:
        """Bytes of `buffer` that may pass: whole frames before the freezing method (or all, if none)."""
        offset = 0
        if buffer[:4] == b"AMQP":  # the protocol header opens the connection
            offset = 8
        while len(buffer) - offset >= 7:
            kind, _channel, size = struct.unpack_from(">BHI", buffer, offset)
            end = offset + 7 + size + 1
            if len(buffer) < end:
                break
            if kind == 1 and size >= 4:
                method = struct.unpack_from(">HH", buffer, offset + 7)
                if method == self.freeze_on:
                    self.frozen.set()
                    return offset
            offset = end
        return offset

    async def _client_to_broker(self, client: anyio.abc.SocketStream, broker: anyio.abc.SocketStream) -> None:
        buffer = bytearray()
        async for chunk in client:
            if self.frozen.is_set():
                continue
            buffer += chunk
            passing = self._scan(buffer) if self.freeze_on is not None else len(buffer)
            if passing:
                await broker.send(bytes(buffer[:passing]))
                del buffer[:passing]

    async def _broker_to_client(self, client: anyio.abc.SocketStream, broker: anyio.abc.SocketStream) -> None:
        async for chunk in broker:
            if not self.frozen.is_set():
                await client.send(chunk)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        self.connections += 1
        with suppress(*_GONE):  # one side went away: so does the other
            broker = await anyio.connect_tcp("127.0.0.1", self.target_port)
            async with client, broker, anyio.create_task_group() as tg:
                tg.start_soon(self._pump_back, client, broker)
                await self._client_to_broker(client, broker)
                tg.cancel_scope.cancel()

    async def _pump_back(self, client: anyio.abc.SocketStream, broker: anyio.abc.SocketStream) -> None:
        with suppress(*_GONE):
            await self._broker_to_client(client, broker)


@asynccontextmanager
async def freezing_proxy(target_port: int, freeze_on: tuple[int, int] | None) -> AsyncIterator[FreezingProxy]:
    """Serve a `FreezingProxy` on a free loopback port for the duration of the block."""
    proxy = FreezingProxy(target_port, freeze_on)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, proxy._handle)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()
