"""Publishing with publisher confirms on a channel of its own."""

from __future__ import annotations

import asyncio
import logging

import aiormq
import aiormq.abc
from aio_pika.abc import AbstractRobustChannel
from pamqp.commands import Basic

from swarrow._names import check_routing_key
from swarrow.amqp._errors import CHANNEL_GONE
from swarrow.amqp._same_id import OnePerMessageId
from swarrow.amqp.connection import AmqpConnection
from swarrow.errors import BrokerUnavailableError, PublishError
from swarrow.message import Message
from swarrow.publishable import check_publishable

__all__ = ["AmqpPublisher"]

logger = logging.getLogger(__name__)


def _properties(message: Message) -> aiormq.spec.Basic.Properties:
    return aiormq.spec.Basic.Properties(
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=dict(message.headers) if message.headers else None,
        delivery_mode=message.delivery_mode,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=message.expiration,
        message_id=message.message_id,
        timestamp=message.timestamp,
        message_type=message.type,
        user_id=message.user_id,
        app_id=message.app_id,
    )


class AmqpPublisher:
    """Publishes with publisher confirms; `PublishError` on nack, return (mandatory) or a dead channel.

    aiormq matches a `basic.return` to its publish by `message_id`, and retry copies keep the
    original's id: two copies of one id in flight at once could swap outcomes (an unroutable copy
    reported confirmed, its original then acked and lost). So publishes sharing a `message_id` go one
    at a time (mandatory or not: aiormq maps both); publishes with different ids are not held up.
    """

    def __init__(self, broker: AmqpConnection, *, confirm_timeout: float = 30.0) -> None:
        self.broker = broker
        self.confirm_timeout = confirm_timeout
        self._channel: AbstractRobustChannel | None = None
        self._lock = asyncio.Lock()
        self._same_id = OnePerMessageId()

    async def _underlay(self) -> aiormq.abc.AbstractChannel:
        if self._channel is None:
            async with self._lock:
                if self._channel is None:
                    connection = await self.broker._connect()
                    channel = connection.channel(publisher_confirms=True, on_return_raises=True)
                    await channel
                    self._channel = channel
        if self._channel is None:
            raise RuntimeError("internal state: self._channel is unset here")
        return await self._channel.get_underlay_channel()

    async def publish(
        self, message: Message, routing_key: str, exchange: str = "", *, mandatory: bool = True
    ) -> None:
        """Publish and wait for the broker's confirm.

        `InvalidMessageError` (nothing sent) for a property or header RabbitMQ cannot take. A channel
        the broker closed (a missing exchange) is a `PublishError`, and the next publish opens a new one.
        """
        check_publishable(message, user=self.broker.username)
        check_routing_key(routing_key, exchange)
        async with self._same_id.turn(message.message_id):
            await self._publish(message, routing_key, exchange, mandatory)

    async def _publish(self, message: Message, routing_key: str, exchange: str, mandatory: bool) -> None:
        where = f"exchange {exchange!r} routing key {routing_key!r}"
        try:
            # Bounded: with every node of a cluster down the channel would wait for a reconnect forever.
            channel = await asyncio.wait_for(self._underlay(), self.confirm_timeout)
            confirmation = await channel.basic_publish(
                message.body,
                exchange=exchange,
                routing_key=routing_key,
                properties=_properties(message),
                mandatory=mandatory,
                timeout=self.confirm_timeout,
            )
        except aiormq.exceptions.PublishError:
            raise PublishError(f"message returned as unroutable ({where}): no queue is bound there") from None
        except BrokerUnavailableError:
            raise
        except (aiormq.exceptions.ChannelClosed, aiormq.exceptions.ChannelInvalidStateError) as exc:
            # The broker closed the channel (a missing exchange ...): aio-pika would not reopen it.
            await self._drop_channel(exc)
            raise PublishError(
                f"publish to {where} failed, channel closed: {exc!r} (the next publish opens a new channel)"
            ) from exc
        except (*CHANNEL_GONE,) as exc:
            raise PublishError(f"publish to {where} failed before it was confirmed: {exc!r}") from exc
        if not isinstance(confirmation, Basic.Ack):
            raise PublishError(f"broker nacked the publish to {where}")

    async def _drop_channel(self, exc: BaseException) -> None:
        """Forget a closed channel, saying so; the next publish opens a new one."""
        async with self._lock:
            channel, self._channel = self._channel, None
        if channel is None:
            return
        logger.warning("publisher channel closed by the broker (%r); the next publish opens a new one", exc)
        if not channel.is_closed:
            try:
                await channel.close()
            except CHANNEL_GONE as close_error:
                logger.debug("closing the dead publisher channel failed: %r", close_error)

    async def close(self) -> None:
        """Close the publishing channel."""
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await channel.close()
