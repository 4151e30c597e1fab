"""`AmqpBroker.scan`: one pass over a RabbitMQ queue that takes only what it acks.

Two plain (not robust) aiormq connections: a reader that consumes with manual acks and unlimited
prefetch (a pass must be able to hold every message of the queue unacked), and a writer for
publishes with confirms and passive declares. A lost connection is reported, never papered over by
a reconnect: the broker has already put back every unacked message, and a rerun carries on.

Memory stays bounded however long the queue: deliveries are read in the channel's reader and handed
over through a small queue, so a slow pass stops reading the socket (TCP back-pressure) instead of
piling deliveries up in memory. Confirms arrive on the writer connection, which never waits for
the reader. Closing the reader channel returns the unacked messages to their places (a classic queue
puts them back where they were; a quorum queue returns them ahead of the rest, in their order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Final

import aiormq
import aiormq.abc
from pamqp.commands import Basic

from swarrow.amqp._errors import describe_connect_error
from swarrow.amqp._errors import scrub as _scrub
from swarrow.amqp._scan_fastpath import BatchPublisher, install_inline_delivery
from swarrow.amqp.fastpath import SUPPORTED
from swarrow.amqp.frame_tuples import values_of
from swarrow.amqp.frames import RefusedProperties
from swarrow.amqp.intake import tolerate_odd_frames
from swarrow.amqp.publisher import _properties
from swarrow.errors import BrokerUnavailableError, ConfigurationError, PublishError
from swarrow.message import Message, delivered_message
from swarrow.urls import mask_url

__all__ = ["AmqpQueueScan"]

logger = logging.getLogger(__name__)

_EMPTY: Final[dict[str, Any]] = {}
# Frames the reader channel may buffer (a delivery is 3+): enough to keep the socket busy, and a
# bound on memory (x frame_max, 128 KiB by default) while the pass waits for confirms.
_FRAME_BUFFER: Final = 240
_GONE: Final = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ConnectionClosed,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


def _printable(name: str) -> str:
    """`name` quoted with control characters escaped and cut (it may be a producer's header)."""
    return repr(name[:100] + ("…" if len(name) > 100 else ""))


class AmqpQueueScan:
    """A `QueueScan` over a RabbitMQ queue (see the module docstring for how it stays safe and small)."""

    def __init__(
        self,
        url: str,
        queue: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        confirm_timeout: float = 30.0,
        buffer: int = 256,
        idle_check: float = 1.0,
        stall_timeout: float = 15.0,
    ) -> None:
        self._url = url
        self._queue = queue
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.confirm_timeout = confirm_timeout
        self.idle_check = idle_check
        self.stall_timeout = stall_timeout
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue(maxsize=buffer)
        self._count = 0
        self._reader: aiormq.abc.AbstractConnection | None = None
        self._writer: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._publisher: aiormq.abc.AbstractChannel | None = None
        self._draining = False
        self._floor = 0  # every delivery tag up to this one is acked
        self._stuck = False  # a delivery below the next ack stays unacked: ack singly from now on
        self._lost: str | None = None
        self.inline_delivery = False
        self._batch: BatchPublisher | None = None
        self._reads_before = 0  # the highest x-delivery-count seen: a quorum queue counts every read

    @property
    def queue_name(self) -> str:
        """The queue being read."""
        return self._queue

    @property
    def count(self) -> int:
        """Messages ready when the scan opened."""
        return self._count

    @property
    def url(self) -> str:
        """The broker URL, password masked."""
        return mask_url(self._url)

    async def _connect(self, role: str) -> aiormq.abc.AbstractConnection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                connection: aiormq.abc.AbstractConnection = await aiormq.connect(
                    self._url,
                    context=self.ssl_context,
                    client_properties={"connection_name": f"swarrow dead-letter {role}"},
                )
        except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
            detail = describe_connect_error(exc, self._url)
            raise BrokerUnavailableError(f"cannot connect to {self.url}: {detail}") from None
        return connection

    async def __aenter__(self) -> AmqpQueueScan:
        try:
            await self._open()
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def _open(self) -> None:
        self._writer = await self._connect("writer")
        ready = await self._ready_count(self._queue)
        if ready is None:
            raise ConfigurationError(f"queue {self._queue!r} does not exist on {self.url}")
        self._count = ready
        self._reader = await self._connect("reader")
        try:
            async with asyncio.timeout(self.connect_timeout):  # a broker gone silent: never hang
                await self._subscribe()
        except TimeoutError:
            raise self._silent("opening the scan") from None
        except _GONE as exc:
            raise self._broker_gone(exc) from None

    def _silent(self, what: str) -> BrokerUnavailableError:
        timeout = self.connect_timeout
        return BrokerUnavailableError(f"{self.url} did not answer within {timeout:g}s while {what}")

    async def _subscribe(self) -> None:
        if self._reader is None or self._writer is None:
            raise RuntimeError("the scan is not connected")
        channel = await self._reader.channel(publisher_confirms=False, frame_buffer_size=_FRAME_BUFFER)
        self._channel = channel
        self.inline_delivery = install_inline_delivery(channel, self._take)
        if SUPPORTED:  # a letter another client published with odd bytes must not fail the scan
            tolerate_odd_frames(self._reader)
        channel.closing.add_done_callback(self._on_closed)
        await channel.basic_qos(prefetch_count=0)  # a pass holds the whole queue unacked
        try:
            await channel.basic_consume(self._queue, self._on_delivery, no_ack=False)
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise ConfigurationError(
                f"RabbitMQ refused to read queue {self._queue!r}: {exc.args[0] if exc.args else exc} "
                "(the user needs read permission on it)"
            ) from None
        self._publisher = await self._writer.channel(publisher_confirms=True, on_return_raises=True)
        self._publisher.closing.add_done_callback(self._on_closed)
        batch = BatchPublisher(self._publisher)
        self._batch = batch if batch.install() else None

    def _on_closed(self, future: asyncio.Future[Any]) -> None:
        if self._draining:
            return
        exc = None if future.cancelled() else future.exception()
        self._lost = f"connection to {self.url} lost" + (f" ({_scrub(str(exc), self._url)})" if exc else "")
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(None)  # wake a waiting reader; a full inbox means nobody waits

    def _broker_gone(self, exc: BaseException) -> BrokerUnavailableError:
        detail = self._lost or f"connection to {self.url} lost ({_scrub(str(exc) or repr(exc), self._url)})"
        return BrokerUnavailableError(detail)

    async def _take(self, d: Any, p: Any, body: bytes) -> None:
        if self._draining:
            return  # closing: the broker returns it with the channel
        if type(p) is RefusedProperties:
            # Its headers are not Python's to read (tables nested too deeply): replaying or purging
            # it by a reading of it would be a guess. Left unacked: back in the queue at the end.
            logger.warning(
                "letter %s in %s does not decode (%s): left in the queue",
                d.delivery_tag,
                _printable(self._queue),
                p.reason,
                extra={"queue": self._queue},
            )
            return
        headers = p.headers
        if headers:
            reads = headers.get("x-delivery-count")
            if type(reads) is int and reads > self._reads_before:
                self._reads_before = reads
        message = delivered_message(
            body,
            *values_of(p, _EMPTY),
            d.delivery_tag,
            d.consumer_tag,
            d.redelivered,
            d.exchange,
            d.routing_key,
            self._queue,
        )
        await self._inbox.put(message)

    async def _on_delivery(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        # Only used where the inline path could not be installed (memory then is not bounded).
        await self._take(delivered.delivery, delivered.header.properties, delivered.body)

    async def _ready_count(self, name: str) -> int | None:
        if self._writer is None:
            raise RuntimeError("the scan is not open")
        try:
            async with asyncio.timeout(self.connect_timeout):  # a broker gone silent: never hang
                channel = await self._writer.channel(publisher_confirms=False)
                try:
                    ok = await channel.queue_declare(name, passive=True)
                finally:
                    if not channel.is_closed:
                        with contextlib.suppress(*_GONE, TimeoutError):
                            await asyncio.wait_for(channel.close(), 1.0)
        except TimeoutError:
            raise self._silent(f"checking queue {name!r}") from None
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        except aiormq.exceptions.ChannelLockedResource:
            return 0  # another connection's exclusive queue: it exists, and takes publishes
        except _GONE as exc:
            raise self._broker_gone(exc) from None
        except ValueError:  # pamqp's own check: RabbitMQ takes any UTF-8, the client does not
            raise ConfigurationError(
                f"{_printable(name)} is not a queue name the AMQP client can check "
                "(letters, digits and - _ . : @ # , / + space only)"
            ) from None
        return int(ok.message_count or 0)

    async def queue_exists(self, name: str) -> bool:
        """True when queue `name` exists (passive declare)."""
        return await self._ready_count(name) is not None

    async def _next(self) -> Message | None:
        inbox = self._inbox
        idle = 0
        while True:
            if self._lost:
                raise BrokerUnavailableError(self._lost)
            if inbox.qsize():
                message = inbox.get_nowait()
                if message is not None:
                    return message
                continue
            try:
                async with asyncio.timeout(self.idle_check):  # no task per wait, unlike wait_for
                    message = await inbox.get()
            except TimeoutError:
                # Nothing for a while: someone else may have taken the rest, or it expired.
                ready = await self._ready_count(self._queue)
                if ready == 0 and inbox.empty():
                    return None
                idle += 1
                if ready and idle * self.idle_check >= self.stall_timeout:
                    raise ConfigurationError(
                        f"{self._queue!r} holds {ready} ready message(s) but delivered none for "
                        f"{self.stall_timeout:g} s: another consumer holds it (single active consumer?)"
                    ) from None
                continue
            if message is not None:
                return message

    async def messages(self) -> AsyncIterator[Message]:
        """Up to `count` messages from the head, each once."""
        if self._channel is None:
            raise RuntimeError("enter the scan with `async with` first")
        for _ in range(self._count):
            message = await self._next()
            if message is None:
                return
            yield message

    async def ack(self, message: Message) -> None:
        """Ack `message` on the reader channel (it leaves the queue for good)."""
        channel = self._channel
        if channel is None or message.delivery_tag is None:
            raise RuntimeError("ack of a message this scan did not deliver")
        if self._lost:
            raise BrokerUnavailableError(self._lost)
        self._stuck = True  # an ack of its own: no multiple ack may follow
        try:
            await channel.basic_ack(message.delivery_tag, wait=False)
        except _GONE as exc:
            raise self._broker_gone(exc) from None

    async def ack_all(self, messages: Sequence[Message]) -> None:
        """Ack `messages`: one multiple ack when they are exactly the next unacked tags, else one each.

        A multiple ack settles every unacked tag up to its own, so it is only sent while every
        earlier delivery is acked; once one is left in the queue (kept), the pass acks singly.
        """
        channel = self._channel
        tags = sorted(m.delivery_tag for m in messages if m.delivery_tag is not None)
        if channel is None or len(tags) != len(messages):
            raise RuntimeError("ack of a message this scan did not deliver")
        if not tags:
            return
        if self._lost:
            raise BrokerUnavailableError(self._lost)
        try:
            if not self._stuck and tags[0] == self._floor + 1 and tags[-1] == self._floor + len(tags):
                await channel.basic_ack(tags[-1], multiple=True, wait=False)
                self._floor = tags[-1]
                return
            self._stuck = True
            for tag in tags:
                await channel.basic_ack(tag, wait=False)
        except _GONE as exc:
            raise self._broker_gone(exc) from None

    async def publish(self, batch: Sequence[tuple[Message, str]]) -> list[Exception | None]:
        """Publish the batch with mandatory and confirms; wait for every confirm."""
        channel = self._publisher
        if channel is None:
            raise RuntimeError("the scan is not open")
        if self._lost:
            raise BrokerUnavailableError(self._lost)
        try:
            async with asyncio.timeout(self.confirm_timeout):
                if self._batch is not None:
                    reasons = await self._batch.publish([(m.body, _properties(m), q) for m, q in batch])
                else:
                    reasons = list(
                        await asyncio.gather(*(self._publish_one(channel, m, q) for m, q in batch))
                    )
        except TimeoutError:
            raise BrokerUnavailableError(
                f"{self.url} confirmed nothing for {self.confirm_timeout:g} s "
                "(a memory or disk alarm blocking publishers?)"
            ) from None
        except _GONE as exc:
            raise self._broker_gone(exc) from None
        except aiormq.exceptions.AMQPError as exc:
            raise PublishError(f"the broker closed the publishing channel: {exc}") from exc
        return [None if why is None else PublishError(why) for why in reasons]

    @staticmethod
    async def _publish_one(channel: aiormq.abc.AbstractChannel, message: Message, queue: str) -> str | None:
        """aiormq's own path, where `BatchPublisher` cannot take over the channel."""
        try:
            confirmation = await channel.basic_publish(
                message.body, routing_key=queue, properties=_properties(message), mandatory=True
            )
        except aiormq.exceptions.PublishError:
            return f"returned as unroutable: no queue {queue!r}"
        if isinstance(confirmation, Basic.Nack):
            return "the broker nacked it"
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._shutdown()

    def _warn_reads(self) -> None:
        if self._reads_before:
            logger.warning(
                "%s is a quorum queue: it counts every read of a letter as a delivery (x-delivery-count: "
                "read %d time(s) before, once more now). A delivery limit on it (x-delivery-limit, a policy, "
                "RabbitMQ 4's default of 20) drops a letter read that often: keep dead-letter queues free "
                "of one",
                _printable(self._queue),
                self._reads_before,
            )

    async def _shutdown(self) -> None:
        """Close everything; unacked deliveries return to the queue with the reader channel."""
        self._warn_reads()
        self._draining = True
        while not self._inbox.empty():
            self._inbox.get_nowait()  # unblocks the reader so the close handshake can be read
        channel = self._channel
        if channel is not None and not channel.is_closed and not self._lost:
            # Closing the channel first flushes the acks queued before it (a connection close may not).
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.connect_timeout):
                    await channel.close()
        for connection in (self._reader, self._writer):
            if connection is None:
                continue
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await connection.close()
        self._reader = self._writer = self._channel = self._publisher = None
