"""A raw AMQP 0-9-1 publisher on a plain socket: it puts on the wire what aio-pika never would.

Other clients (C, Go, Java, older ones) can publish short strings that are not UTF-8 — a routing key,
a `message_id`, a header name — and RabbitMQ passes them through as bytes. pamqp refuses to encode
such strings, so tests write them here: the frame is marshalled by pamqp with a placeholder
character whose UTF-8 bytes are then swapped for invalid ones of the same length.
"""

from __future__ import annotations

import socket
import struct
from urllib.parse import unquote, urlsplit

import pamqp.frame
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

#: Write this character in a string; it goes out as the two bytes of NOT_UTF8.
PLACEHOLDER = "\u00ff"
_PLACEHOLDER_BYTES = PLACEHOLDER.encode()
NOT_UTF8 = b"\xff\xfe"


class RawPublisher:
    """One connection, one channel; blocking calls with a timeout (run them in a thread)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self._sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout)
        self._buf = bytearray()
        self._sock.sendall(b"AMQP\x00\x00\x09\x01")
        self._expect(commands.Connection.Start)
        response = f"\0{unquote(parts.username or 'guest')}\0{unquote(parts.password or 'guest')}"
        self._send(0, commands.Connection.StartOk(client_properties={}, mechanism="PLAIN", response=response))
        tune = self._expect(commands.Connection.Tune)
        self._send(0, commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0))
        self._send(0, commands.Connection.Open(unquote(parts.path[1:]) or "/"))
        self._expect(commands.Connection.OpenOk)
        self._send(1, commands.Channel.Open())
        self._expect(commands.Channel.OpenOk)

    def _send(self, channel: int, frame: object) -> None:
        self._sock.sendall(pamqp.frame.marshal(frame, channel))  # type: ignore[arg-type]

    def _expect(self, kind: type) -> object:
        while True:
            if len(self._buf) >= 7:
                (size,) = struct.unpack_from(">I", self._buf, 3)
                if len(self._buf) >= size + 8:
                    _, _, frame = pamqp.frame.unmarshal(bytes(self._buf[: size + 8]))
                    del self._buf[: size + 8]
                    if not isinstance(frame, kind):
                        raise AssertionError(f"expected {kind.__name__}, got {frame!r}")
                    return frame
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("the broker closed the raw connection")
            self._buf += data

    def fanout_to(self, exchange: str, queue: str) -> None:
        """Declare an auto-deleted fanout exchange bound to `queue` (gone once the queue is deleted)."""
        self._send(1, commands.Exchange.Declare(exchange=exchange, exchange_type="fanout", auto_delete=True))
        self._expect(commands.Exchange.DeclareOk)
        self._send(1, commands.Queue.Bind(queue=queue, exchange=exchange))
        self._expect(commands.Queue.BindOk)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: commands.Basic.Properties,
        swaps: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Publish, turning every PLACEHOLDER in the method and header frames into NOT_UTF8.

        `swaps`: more (old, new) byte strings of equal length replaced in the header frame.
        """
        method = pamqp.frame.marshal(commands.Basic.Publish(exchange=exchange, routing_key=routing_key), 1)
        header = pamqp.frame.marshal(ContentHeader(0, len(body), properties), 1)
        content = pamqp.frame.marshal(ContentBody(body), 1) if body else b""
        swap = (_PLACEHOLDER_BYTES, NOT_UTF8)
        header = header.replace(*swap)
        for old, new in swaps:
            if len(old) != len(new) or old not in header:
                raise ValueError(f"cannot swap {old!r} in the header frame")
            header = header.replace(old, new)
        self._sock.sendall(method.replace(*swap) + header + content)

    def publish_header(self, exchange: str, routing_key: str, body: bytes, properties_payload: bytes) -> None:
        """Publish with a content header whose properties part (flags onwards) is given as bytes:
        what pamqp cannot encode (tables nested hundreds deep)."""
        method = pamqp.frame.marshal(commands.Basic.Publish(exchange=exchange, routing_key=routing_key), 1)
        payload = struct.pack(">HHQ", 60, 0, len(body)) + properties_payload
        header = struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce"
        content = pamqp.frame.marshal(ContentBody(body), 1) if body else b""
        self._sock.sendall(method + header + content)

    def close(self) -> None:
        self._send(1, commands.Channel.Close(200, "done", 0, 0))
        self._expect(commands.Channel.CloseOk)  # the broker has every message published before it
        self._send(0, commands.Connection.Close(200, "done", 0, 0))
        self._expect(commands.Connection.CloseOk)
        self._sock.close()
