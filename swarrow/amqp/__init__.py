"""RabbitMQ through aio-pika: the only package that imports `aio_pika` (and `aiormq` under it).

aio-pika owns the connection and its robust reconnect. Deliveries are taken on aio-pika's
underlying aiormq channel and turned into swarrow's own `Message` (an `IncomingMessage` costs
~19 µs; a slotted dataclass ~2 µs). Consumption is re-established by this package, not by
aio-pika's queue objects, after a reconnect and after a server-sent `basic.cancel`.

Rooms: `connection` (connect, queue admin), `broker` (`AmqpBroker`), `provider` (consuming),
`acks` (ack coalescing), `publisher` (confirms), `rpc` (direct reply-to for `RpcClient`), `fastpath`
(aiormq private internals, quarantined).
"""

from swarrow.amqp.broker import AmqpBroker
from swarrow.amqp.provider import AmqpMessageProvider
from swarrow.amqp.publisher import AmqpPublisher

__all__ = ["AmqpBroker", "AmqpMessageProvider", "AmqpPublisher"]
