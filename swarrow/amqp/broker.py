"""`AmqpBroker`: the RabbitMQ broker object, a connection that also makes providers and publishers."""

from __future__ import annotations

from swarrow._names import check_name
from swarrow.amqp.connection import AmqpConnection
from swarrow.amqp.provider import AmqpMessageProvider
from swarrow.amqp.publisher import AmqpPublisher
from swarrow.amqp.scan import AmqpQueueScan

__all__ = ["AmqpBroker"]


class AmqpBroker(AmqpConnection):
    """A robust connection to RabbitMQ; makes providers and publishers, declares queues.

    `reconnect_interval` is the pause between reconnection attempts; `connect_timeout` bounds the
    first connection; `ssl_context` is passed to aio-pika for `amqps://` (CA, client certificate).
    """

    def provider(
        self,
        queue: str,
        *,
        prefetch: int = 100,
        ack_batch_size: int | None = None,
        ack_flush_interval: float = 0.02,
        stall_check_interval: float | None = 5.0,
    ) -> AmqpMessageProvider:
        """A provider consuming `queue` on its own channel (see `AmqpMessageProvider` for ack coalescing).

        `stall_check_interval`: how often an idle consumer checks that its queue has no ready
        messages it is not being fed (see `swarrow.amqp.stall`); None turns the check off.
        """
        check_name("queue", queue)
        return AmqpMessageProvider(
            self,
            queue,
            prefetch=prefetch,
            ack_batch_size=ack_batch_size,
            ack_flush_interval=ack_flush_interval,
            stall_check_interval=stall_check_interval,
        )

    def publisher(self) -> AmqpPublisher:
        """A publisher with confirms on its own channel."""
        return AmqpPublisher(self)

    def scan(self, queue: str) -> AmqpQueueScan:
        """One pass over `queue` that takes only what it acks, on connections of its own (`swarrow.scan`)."""
        return AmqpQueueScan(
            self.node_url, queue, ssl_context=self.ssl_context, connect_timeout=self.connect_timeout
        )
