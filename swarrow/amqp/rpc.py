"""RabbitMQ's direct reply-to for the RPC client: replies arrive on the channel that sent the requests.

`amq.rabbitmq.reply-to` is a pseudo-queue: consuming it (no-ack) on a channel lets requests
published on that same channel carry `reply_to="amq.rabbitmq.reply-to"`, and RabbitMQ routes the
replies straight back. Nothing to declare or delete; the address dies with the channel, so a
channel loss fails the calls in flight (their replies can no longer arrive).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import aiormq
import aiormq.abc
from anyio.abc import TaskGroup
from pamqp.commands import Basic

from swarrow.amqp._errors import CHANNEL_GONE as CHANNEL_GONE
from swarrow.amqp._same_id import OnePerMessageId
from swarrow.amqp.broker import AmqpBroker
from swarrow.amqp.fastpath import SUPPORTED
from swarrow.amqp.intake import tolerate_odd_frames
from swarrow.amqp.publisher import _properties
from swarrow.broker import Broker
from swarrow.errors import PublishError, RpcConnectionLost
from swarrow.message import Message
from swarrow.rpc.transport import Deliver, Lost

__all__ = ["DIRECT_REPLY_TO", "AmqpReplyTransport"]

logger = logging.getLogger(__name__)

DIRECT_REPLY_TO: Final = "amq.rabbitmq.reply-to"
_EMPTY: dict[str, Any] = {}


def _message(delivered: aiormq.abc.DeliveredMessage) -> Message:
    p = delivered.header.properties
    return Message(
        body=delivered.body,
        headers=p.headers or _EMPTY,
        content_type=p.content_type,
        content_encoding=p.content_encoding,
        delivery_mode=p.delivery_mode,
        priority=p.priority,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        expiration=p.expiration,
        message_id=p.message_id,
        timestamp=p.timestamp,
        type=p.message_type,
        user_id=p.user_id,
        app_id=p.app_id,
        exchange=getattr(delivered.delivery, "exchange", "") or "",
        routing_key=getattr(delivered.delivery, "routing_key", "") or "",
    )


class AmqpReplyTransport:
    """One aiormq channel with confirms: requests go out on it, replies come back to it."""

    def __init__(self, broker: Broker, *, confirm_timeout: float = 30.0) -> None:
        if not isinstance(broker, AmqpBroker):
            raise TypeError(f"AmqpReplyTransport needs an AmqpBroker, got {type(broker).__name__}")
        self.broker = broker
        self.confirm_timeout = confirm_timeout
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._opening = asyncio.Lock()
        self._deliver: Deliver | None = None
        self._lost: Lost | None = None
        self._exchanges: set[str] = {""}  # seen to exist: a publish to a missing one closes the channel
        self._same_id = OnePerMessageId()

    @property
    def reply_to(self) -> str:
        """Always `amq.rabbitmq.reply-to`: RabbitMQ rewrites it per channel."""
        return DIRECT_REPLY_TO

    async def start(self, task_group: TaskGroup, deliver: Deliver, lost: Lost) -> None:
        """Open the channel and consume the reply pseudo-queue (`BrokerUnavailableError` if unreachable)."""
        self._deliver = deliver
        self._lost = lost
        await self._open()

    async def _open(self) -> aiormq.abc.AbstractChannel:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._opening:
            channel = self._channel
            if channel is not None and not channel.is_closed:
                return channel
            connection = await self.broker._connect()
            await connection.ready()
            transport = connection.transport
            if transport is None:
                raise RpcConnectionLost(f"not connected to {self.broker.url}")
            channel = await transport.connection.channel(publisher_confirms=True, on_return_raises=True)
            if SUPPORTED:  # a reply another client sent with odd bytes must not fail the connection
                tolerate_odd_frames(transport.connection)
            await channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, no_ack=True)
            channel.closing.add_done_callback(self._on_closed)
            self._channel = channel
            return channel

    async def _on_reply(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        if self._deliver is not None:
            self._deliver(_message(delivered))

    def _on_closed(self, _: object) -> None:
        if self._lost is not None:
            self._lost(RpcConnectionLost("the channel carrying the call closed: its reply cannot arrive"))

    async def publish(self, message: Message, routing_key: str, exchange: str) -> None:
        """Publish mandatory with confirms; `PublishError` when unroutable, nacked or the channel died."""
        where = f"exchange {exchange!r} routing key {routing_key!r}"
        try:
            channel = await self._open()
            if exchange not in self._exchanges:
                await self._check_exchange(channel, exchange)
            async with self._same_id.turn(message.message_id):  # a caller's id may repeat (idempotency)
                confirmation = await channel.basic_publish(
                    message.body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=_properties(message),
                    mandatory=True,
                    timeout=self.confirm_timeout,
                )
        except aiormq.exceptions.PublishError:
            raise PublishError(f"request returned as unroutable ({where}): no queue is bound there") from None
        except (*CHANNEL_GONE,) as exc:
            raise PublishError(f"request to {where} failed before it was confirmed: {exc!r}") from exc
        if not isinstance(confirmation, Basic.Ack):
            raise PublishError(f"broker nacked the request to {where}")

    async def _check_exchange(self, channel: aiormq.abc.AbstractChannel, exchange: str) -> None:
        # RabbitMQ answers a publish to a missing exchange by closing the channel, and the reply
        # address of every call in flight dies with it: ask first, on a throwaway channel.
        probe = await channel.connection.channel()
        try:
            await probe.exchange_declare(exchange, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise PublishError(f"exchange {exchange!r} does not exist (NOT_FOUND)") from None
        finally:
            if not probe.is_closed:
                await probe.close()
        self._exchanges.add(exchange)

    async def close(self) -> None:
        """Close the channel (the reply address goes with it)."""
        channel, self._channel = self._channel, None
        self._lost = None
        if channel is not None and not channel.is_closed:
            try:
                await channel.close()
            except (*CHANNEL_GONE,):
                logger.debug("the RPC channel was already gone when closing it")
