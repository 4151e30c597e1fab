"""Call a worker and wait for its answer: many concurrent calls on one channel, matched by correlation id."""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio

from swarrow.broker import Broker
from swarrow.errors import ConfigurationError, InvalidMessageError, RemoteError, RpcConnectionLost, RpcTimeout
from swarrow.message import Message
from swarrow.publishable import check_publishable
from swarrow.publisher import Publisher
from swarrow.rpc.deadline import DEADLINE_HEADER
from swarrow.rpc.transport import MemoryReplyTransport, ReplyTransport
from swarrow.rpc.values import encode_value
from swarrow.topology import ERROR_MESSAGE_HEADER, ERROR_TYPE_HEADER

__all__ = ["MAX_TIMEOUT", "Reply", "RpcClient"]

logger = logging.getLogger(__name__)

MAX_TIMEOUT = 30 * 86400.0
"""The longest a call may wait (30 days): its deadline and expiration must still fit what RabbitMQ takes."""


def _check_timeout(timeout: float) -> float:
    if not (0 < timeout <= MAX_TIMEOUT and math.isfinite(timeout)):
        raise ConfigurationError(
            f"timeout must be > 0 seconds and at most 30 days ({MAX_TIMEOUT:.0f} s), got {timeout!r}"
        )
    return float(timeout)


@dataclass(frozen=True, slots=True)
class Reply:
    """A worker's answer: the reply message's body, headers and properties."""

    message: Message

    @property
    def body(self) -> bytes:
        """The reply's bytes, as the worker sent them."""
        return self.message.body

    @property
    def headers(self) -> Mapping[str, Any]:
        """The reply's headers."""
        return self.message.headers

    @property
    def content_type(self) -> str | None:
        """`application/json`, `text/plain; charset=utf-8`, None for raw bytes, or what the worker chose."""
        return self.message.content_type

    def text(self, encoding: str = "utf-8") -> str:
        """The body decoded as text."""
        return self.message.body.decode(encoding)

    def json(self) -> Any:
        """The body decoded as JSON (an empty body is None)."""
        return json.loads(self.message.body) if self.message.body else None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for inner in group.exceptions:
        found.extend(_leaves(inner) if isinstance(inner, BaseExceptionGroup) else [inner])
    return found


class _TransportPublisher:
    """The transport's publish as a `Publisher`, so the tracing wrapper can open a span around it."""

    def __init__(self, transport: ReplyTransport) -> None:
        self.transport = transport

    async def publish(
        self, message: Message, routing_key: str, exchange: str = "", *, mandatory: bool = True
    ) -> None:
        await self.transport.publish(message, routing_key, exchange)

    async def close(self) -> None:
        """Nothing: the client closes the transport."""


class _Pending:
    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.reply: Message | None = None
        self.error: BaseException | None = None


class RpcClient:
    """Send requests to worker queues and wait for their replies (`async with RpcClient(broker) as c`).

    On RabbitMQ it uses direct reply-to (`amq.rabbitmq.reply-to`): no reply queue to declare or
    clean up. Any number of tasks may `call` at once: each call is matched to its reply by
    `correlation_id`, without a lock. A request carries its deadline (`x-swarrow-deadline` and an
    `expiration`), so a worker skips requests nobody waits for any more. After a connection loss,
    calls in flight raise `RpcConnectionLost`; later calls reconnect. `otel=True` opens a PRODUCER
    span per request and carries its context, so the worker's span and its reply join the caller's trace.
    """

    def __init__(self, broker: Broker, *, timeout: float = 30.0, otel: bool = False) -> None:
        self.broker = broker
        self.timeout = _check_timeout(timeout)
        self.otel = otel
        if otel:
            from swarrow.otel import require_otel

            require_otel()
        self._pending: dict[str, _Pending] = {}
        self._transport: ReplyTransport | None = None
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> RpcClient:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            task_group = await stack.enter_async_context(anyio.create_task_group())
            transport = open_reply_transport(self.broker)
            stack.push_async_callback(self._close, task_group)
            await transport.start(task_group, self._deliver, self._lost)
        except BaseException:
            await stack.aclose()
            raise
        self._transport = transport
        self._publisher: Publisher = _TransportPublisher(transport)
        if self.otel:
            from swarrow.otel import TracingPublisher

            self._publisher = TracingPublisher(self._publisher)
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        try:
            await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The reply task group wraps what the `async with` body raised: hand it back as it was, so
            # `except RpcTimeout` around the block works.
            leaves = _leaves(group)
            if exc is not None and all(leaf is exc for leaf in leaves):
                return
            if exc is None and len(leaves) == 1 and isinstance(leaves[0], Exception):
                raise leaves[0] from None
            raise

    async def _close(self, task_group: anyio.abc.TaskGroup) -> None:
        transport, self._transport = self._transport, None
        self._lost(RpcConnectionLost("the RPC client was closed while the call waited"))
        if transport is not None:
            await transport.close()
        task_group.cancel_scope.cancel()

    async def call(
        self,
        queue: str,
        body: Any = b"",
        *,
        timeout: float | None = None,
        headers: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        exchange: str = "",
        routing_key: str | None = None,
        message_id: str | None = None,
    ) -> Reply:
        """Publish a request to `queue` and return its reply.

        `body`: bytes as is, str as UTF-8 text, anything else as JSON. Raises `RpcTimeout` when no
        reply came within `timeout` seconds, `RemoteError` when the worker gave the request up,
        `PublishError` at once when no queue takes the request (it does not exist),
        `InvalidMessageError` for a header or property the broker cannot carry, and
        `RpcConnectionLost` when the connection dropped while waiting.
        """
        transport = self._transport
        if transport is None:
            raise RuntimeError("use the RpcClient as `async with RpcClient(broker) as client:`")
        wait = self.timeout if timeout is None else _check_timeout(timeout)
        encoded = encode_value(body)
        correlation_id = uuid.uuid4().hex
        all_headers = {**encoded.headers, **(headers or {})}
        all_headers[DEADLINE_HEADER] = int((time.time() + wait) * 1000)
        request = Message(
            body=encoded.body,
            headers=all_headers,
            content_type=content_type or encoded.content_type,
            correlation_id=correlation_id,
            reply_to=transport.reply_to,
            # The broker drops a request that waited longer than its caller would.
            expiration=str(max(1, int(wait * 1000))),
            message_id=message_id or correlation_id,
            delivery_mode=1,
        )
        check_publishable(request)  # a bad header is an InvalidMessageError naming it, before the wire
        key = queue if routing_key is None else routing_key
        for name, value in (("routing_key", key), ("exchange", exchange)):
            if (size := len(value.encode())) > 255:
                raise InvalidMessageError(f"{name} is {size} bytes long, over AMQP's 255-byte limit")
        pending = self._pending[correlation_id] = _Pending()
        try:
            with anyio.move_on_after(wait):
                await self._publisher.publish(request, key, exchange)
                await pending.done.wait()
        finally:
            del self._pending[correlation_id]
        if pending.error is not None:
            raise pending.error
        if pending.reply is None:
            raise RpcTimeout(f"no reply from {queue!r} within {wait:g} s (correlation id {correlation_id})")
        reply = pending.reply
        if ERROR_TYPE_HEADER in reply.headers:
            raise RemoteError(
                str(reply.headers.get(ERROR_TYPE_HEADER)),
                str(reply.headers.get(ERROR_MESSAGE_HEADER, "")),
                reply=Reply(reply),
            )
        return Reply(reply)

    def _deliver(self, message: Message) -> None:
        pending = self._pending.get(message.correlation_id or "")
        if pending is None:
            # The call timed out or was never ours: nobody waits for this reply.
            logger.debug("dropping a reply nobody waits for (correlation id %r)", message.correlation_id)
            return
        if pending.reply is None and pending.error is None:
            pending.reply = message
            pending.done.set()

    def _lost(self, error: BaseException) -> None:
        for pending in list(self._pending.values()):
            if pending.reply is None and pending.error is None:
                pending.error = error
                pending.done.set()


def open_reply_transport(broker: Broker) -> ReplyTransport:
    """The transport for `broker`: RabbitMQ's direct reply-to, or a private queue in memory."""
    from swarrow.memory.broker import MemoryBroker

    if isinstance(broker, MemoryBroker):
        return MemoryReplyTransport(broker)
    from swarrow.amqp.rpc import AmqpReplyTransport

    return AmqpReplyTransport(broker)
