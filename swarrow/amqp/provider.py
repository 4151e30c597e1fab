"""Consuming one queue: channel, delivery buffer, consuming again after a reconnect or a cancel."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import aiormq
import aiormq.abc
from aio_pika.abc import AbstractRobustChannel

from swarrow.amqp._errors import CHANNEL_GONE, EMPTY_HEADERS
from swarrow.amqp.acks import AckTracker, Settlement
from swarrow.amqp.buffer import DeliveryBuffer
from swarrow.amqp.connection import AmqpConnection
from swarrow.amqp.fastpath import FastPath, apply_fast_path
from swarrow.amqp.frame_tuples import DeliverFields, PropertyValues, undecodable_values, values_of
from swarrow.amqp.frames import RefusedProperties
from swarrow.amqp.stall import watch_for_stall
from swarrow.backoff import Backoff
from swarrow.errors import BrokerUnavailableError, ConfigurationError
from swarrow.message import Message, delivered_message
from swarrow.validation import require_int, require_seconds

__all__ = ["AmqpMessageProvider"]

logger = logging.getLogger(__name__)


class AmqpMessageProvider(DeliveryBuffer, Settlement):
    """Consumes one RabbitMQ queue (push mode, `prefetch` unsettled at most).

    Survives a broker restart (aio-pika reopens the channel, this re-consumes) and a server-sent
    `basic.cancel` such as a deleted queue (this re-consumes once the queue exists again). Deliveries
    buffered or in flight from a channel that died are never settled on the new one: their consumer
    tag is no longer live, so the settlement is logged and dropped and the broker redelivers them.

    Acks are coalesced: `ack()` records the delivery, and one `basic.ack(multiple=True)` covers the
    finished prefix every `ack_batch_size` acks or `ack_flush_interval` seconds, and always before a
    reject, a stop and a close. At-least-once holds: a crash before a flush only redelivers.
    Default batch: min(100, prefetch // 2); `ack_batch_size=1` acks every message on its own.
    """

    def __init__(
        self,
        broker: AmqpConnection | str,
        queue: str,
        *,
        prefetch: int = 100,
        ack_batch_size: int | None = None,
        ack_flush_interval: float = 0.02,
        stall_check_interval: float | None = 5.0,
        consume_timeout: float = 15.0,
    ) -> None:
        try:
            require_int("prefetch", prefetch)
            if stall_check_interval is not None:
                require_seconds("stall_check_interval", stall_check_interval)
            require_seconds("consume_timeout", consume_timeout)
            if ack_batch_size is not None:
                require_int("ack_batch_size", ack_batch_size)
            require_seconds("ack_flush_interval", ack_flush_interval)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if not queue:
            raise ConfigurationError("a queue name is required")
        self._owns_broker = isinstance(broker, str)
        self.broker = AmqpConnection(broker) if isinstance(broker, str) else broker
        self._queue_name = queue
        self._prefetch = prefetch
        self.ack_batch_size = (
            ack_batch_size if ack_batch_size is not None else max(1, min(100, prefetch // 2))
        )
        self.ack_flush_interval = float(ack_flush_interval)
        # Past this many finished acks stuck behind a slow head, ack them singly: they hold prefetch slots.
        # A batch or fallback threshold the prefetch window cannot hold would stall the consumer behind
        # one slow message (the window fills with finished, unacked deliveries): both stay below it.
        if self.ack_batch_size > 1 and self.ack_batch_size > prefetch // 2:
            capped = max(1, prefetch // 2)
            logger.warning(
                "ack batch size %d is more than half the prefetch (%d): using %d, so finished messages "
                "behind a slow one never fill the prefetch window",
                self.ack_batch_size,
                prefetch,
                capped,
                extra={"queue": queue},
            )
            self.ack_batch_size = capped
        self._fallback_after = max(1, prefetch // 2)
        self._waiting: set[int] = set()
        self._waiting_since = 0.0
        self._coalesce = self.ack_batch_size > 1
        self._tracker = AckTracker()
        self._open_single: set[int] = set()  # delivered, unsettled: the double-settle guard for single acks
        self._since_flush = 0
        self._settle_lock = asyncio.Lock()
        self._flush_due: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._eager_flush: asyncio.Task[None] | None = None
        self._buffer: deque[Message] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._woken = 0
        self._channel: AbstractRobustChannel | None = None
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self._consumer_tag: str | None = None
        self._live_tags: set[str] = set()
        self._wanted = False
        self._closed = False
        self._recovery: asyncio.Task[None] | None = None
        self.stale_settlements = 0
        self.fast_delivery = True  # False: aiormq's task-per-delivery consumer callback (benchmarks)
        self.bulk_intake = True  # False: aiormq reads and decodes each frame (benchmarks' A/B)
        self.fast_path: FastPath | None = None  # what the fast path managed on the current channel
        self.slow_deliveries = 0  # taken through aiormq's consumer callback: 0 while the fast path works
        self.delivered = 0  # deliveries taken, ever (progress for the stall watch)
        self._unsettled = 0
        self.stalled = False
        self.stall_check_interval = stall_check_interval
        self.consume_timeout = consume_timeout
        self._stall_watch: asyncio.Task[None] | None = None

    @property
    def queue_name(self) -> str:
        """The queue consumed."""
        return self._queue_name

    @property
    def prefetch(self) -> int:
        """Unsettled deliveries the broker may push at once."""
        return self._prefetch

    @property
    def consumer_registered(self) -> bool:
        """True while the channel is open and our consumer is registered."""
        underlay = self._underlay
        return (
            self._wanted
            and self._consumer_tag is not None
            and underlay is not None
            and not underlay.is_closed
            and self.broker.is_connected
        )

    @property
    def is_consuming(self) -> bool:
        """True while our consumer is registered and not stalled (see `swarrow.amqp.stall`)."""
        return self.consumer_registered and not self.stalled

    @property
    def unsettled(self) -> int:
        """Deliveries of the live channel the application has not acked or rejected yet."""
        return self._unsettled

    async def start(self) -> None:
        """Connect, open a channel with the prefetch, and consume; `ConfigurationError` if no such queue."""
        if self._closed:
            raise RuntimeError("this provider is closed")
        if self._wanted:
            return
        timeout = self.broker.connect_timeout
        try:
            async with asyncio.timeout(timeout):  # a broker gone silent must not hold the start forever
                await self._start()
        except TimeoutError:
            raise BrokerUnavailableError(
                f"{self.broker.url} did not answer within {timeout:g}s (connect_timeout) while starting "
                f"to consume {self._queue_name!r}"
            ) from None

    async def _start(self) -> None:
        connection = await self.broker._connect()
        if await self.broker.inspect_queue(self._queue_name) is None:
            raise ConfigurationError(
                f"queue {self._queue_name!r} does not exist on {self.broker.url}: "
                f"declare it first (swarrow declare --queue {self._queue_name})"
            )
        channel = connection.channel(publisher_confirms=False)
        await channel
        self._channel = channel
        await self._channel.set_qos(prefetch_count=self._prefetch)
        self._wanted = True
        self._start_flusher()
        if self.stall_check_interval is not None and self._stall_watch is None:
            self._stall_watch = asyncio.get_running_loop().create_task(
                watch_for_stall(self, self.stall_check_interval)
            )
        try:
            await self._consume()
        except aiormq.exceptions.ChannelAccessRefused as exc:
            # A permission, not a connection loss: no "reopened … consuming again" for this channel.
            raise ConfigurationError(
                f"RabbitMQ refused to consume from queue {self._queue_name!r}: "
                f"{exc.args[0] if exc.args else exc} (the user needs read permission on it)"
            ) from None
        self._channel.reopen_callbacks.add(self._on_reopen)

    def _on_channel_closed(self, underlay: aiormq.abc.AbstractChannel, _: object) -> None:
        """Forget what a dead channel delivered at once, not at the reconnect.

        Buffered deliveries can no longer be acked: running them during the outage would only make
        duplicates, so the broker's redelivery is the one that gets processed.
        """
        if underlay is not self._underlay:
            return
        dropped = len(self._buffer)
        self._buffer.clear()
        self._live_tags.clear()
        self._unsettled = 0
        if dropped:
            logger.warning(
                "channel to %s closed: dropped %d buffered deliveries, the broker redelivers them",
                self.broker.url,
                dropped,
                extra={"queue": self._queue_name},
            )

    def _start_flusher(self) -> None:
        if self._coalesce and self._flusher is None:
            self._flush_due = asyncio.Event()
            self._flusher = asyncio.get_running_loop().create_task(self._flush_periodically(self._flush_due))

    async def _consume(self) -> None:
        if self._channel is None:
            raise RuntimeError("internal state: self._channel is unset here")
        underlay = await self._channel.get_underlay_channel()
        if underlay is not self._underlay:
            # A new channel: its delivery tags restart at 1, so nothing from the old one may be settled.
            dropped = len(self._buffer)
            unflushed = self._tracker.finished
            self._buffer.clear()
            self._live_tags.clear()
            self._tracker = AckTracker()
            self._open_single = set()
            self._since_flush = 0
            self._unsettled = 0
            self._underlay = underlay
            underlay.on_consumer_cancel_callbacks.add(self._on_cancel)
            underlay.closing.add_done_callback(functools.partial(self._on_channel_closed, underlay))
            self.fast_path = apply_fast_path(
                underlay,
                self._take,
                self._queue_name,
                take_decoded=self._take_decoded,
                inline=self.fast_delivery,
                bulk=self.bulk_intake,
            )
            if dropped or unflushed:
                self.stale_settlements += unflushed
                logger.warning(
                    "dropped %d buffered deliveries and %d unflushed acks of a closed channel on %s; "
                    "the broker redelivers them",
                    dropped,
                    unflushed,
                    self._queue_name,
                    extra={"queue": self._queue_name},
                )
        tag = f"swarrow.{self._queue_name}.{uuid.uuid4().hex[:12]}"
        self._live_tags.add(tag)
        # Bounded: a quorum queue without a majority never answers basic.consume; _recover retries.
        await underlay.basic_consume(
            self._queue_name, self._on_delivery, consumer_tag=tag, timeout=self.consume_timeout
        )
        self._consumer_tag = tag
        logger.debug(
            "consuming %s on %s (prefetch %d, ack batch %d)",
            self._queue_name,
            self.broker.node,
            self._prefetch,
            self.ack_batch_size,
            extra={"queue": self._queue_name},
        )

    async def _on_delivery(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        self.slow_deliveries += 1
        self._take(delivered.delivery, delivered.header.properties, delivered.body, delivered.channel)

    def _take(self, d: Any, p: Any, body: bytes, channel: aiormq.abc.AbstractChannel) -> None:
        """Buffer one delivery aiormq assembled (pamqp's `Basic.Deliver` and properties)."""
        deliver = (d.consumer_tag, d.delivery_tag, d.redelivered, d.exchange, d.routing_key)
        if type(p) is RefusedProperties:  # its properties do not decode: dead-lettered by the stack
            self._take_decoded(deliver, undecodable_values(p.reason, p.raw), body, channel)
            return
        self._take_decoded(deliver, values_of(p, EMPTY_HEADERS), body, channel)

    def _take_decoded(
        self, d: DeliverFields, properties: PropertyValues, body: bytes, channel: aiormq.abc.AbstractChannel
    ) -> None:
        """Buffer one delivery as a `Message` and wake one waiting worker.

        `d`: (consumer_tag, delivery_tag, redelivered, exchange, routing_key); `properties` in
        `Message` order (`swarrow.amqp.frames.property_values`).
        """
        consumer_tag, tag, redelivered, exchange, routing_key = d
        if consumer_tag not in self._live_tags:
            # Read from a channel that has closed since: its ack could not reach the broker, which
            # redelivers it, so processing it now would only make a duplicate.
            return
        self.delivered += 1
        self._unsettled += 1
        if self._coalesce and channel is self._underlay:
            self._tracker.delivered(tag)
        elif channel is self._underlay:
            self._open_single.add(tag)
        self._buffer.append(
            delivered_message(
                body, *properties, tag, consumer_tag, redelivered, exchange, routing_key, self._queue_name
            )
        )
        if self._waiters:
            self.wake_for_delivery()

    def _on_reopen(self, *_: Any) -> None:
        logger.warning("channel to %s reopened after a connection loss; consuming again", self.broker.url)
        self._consumer_tag = None
        self._schedule_recovery()

    def _on_cancel(self, frame: Any) -> None:
        if frame.consumer_tag != self._consumer_tag:
            return
        logger.warning(
            "the broker cancelled our consumer of %s (queue deleted?); will consume again once it exists",
            self._queue_name,
            extra={"queue": self._queue_name},
        )
        self._consumer_tag = None
        self._schedule_recovery()

    def _schedule_recovery(self) -> None:
        if self._wanted and (self._recovery is None or self._recovery.done()):
            self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        cap = self.broker.reconnect_interval * 2
        backoff = Backoff(initial=min(0.2, cap), maximum=cap)
        failures = 0
        while self._wanted and self._consumer_tag is None:
            try:
                if self._channel is None:
                    raise RuntimeError("internal state: self._channel is unset here")
                async with asyncio.timeout(self.broker.connect_timeout):  # a silent broker: try again
                    await self._channel.ready()
                    if await self.broker.inspect_queue(self._queue_name) is not None:
                        await self._consume()
                        return
            except TimeoutError:  # a silent broker, or a quorum queue without a majority: say so, retry
                logger.warning(
                    "%s on %s did not accept our consumer in time (no quorum?); retrying",
                    self._queue_name,
                    self.broker.node,
                    extra={"queue": self._queue_name},
                )
            except Exception as exc:  # the broker may still be going down or up: try again
                logger.debug("re-consuming %s failed: %r", self._queue_name, exc)
            failures += 1
            await asyncio.sleep(backoff.delay(failures))

    def refill_soon(self) -> None:
        """Write the acks held for coalescing now, so the broker refills the prefetch window at once.

        A consumer preferring this queue (`swarrow.multi_queue`) calls it when it found the buffer empty
        and is about to take from a less preferred queue: held acks would keep urgent work waiting.
        """
        if self._since_flush and (self._eager_flush is None or self._eager_flush.done()):
            self._eager_flush = asyncio.get_running_loop().create_task(self._flush())

    async def messages(self) -> AsyncIterator[Message]:
        """Deliveries until the provider stops (starts it first)."""
        await self.start()
        while (message := await self.receive()) is not None:
            yield message

    async def stop_consuming(self) -> None:
        """Flush acks, cancel our consumer; buffered deliveries stay unsettled and return on close."""
        if not self._wanted:
            return
        self._wanted = False
        self._release_waiters()
        if self._recovery is not None:
            self._recovery.cancel()
        await self._flush()
        tag, self._consumer_tag = self._consumer_tag, None
        underlay = self._underlay
        if tag is not None and underlay is not None and not underlay.is_closed:
            try:
                await underlay.basic_cancel(tag, timeout=5)
            except CHANNEL_GONE as exc:
                logger.debug("basic.cancel on %s failed: %r", self._queue_name, exc)

    async def close(self) -> None:
        """Flush acks, stop consuming, close the channel (the broker requeues unsettled deliveries)."""
        if self._closed:
            return
        await self.stop_consuming()
        # Final: the workers are done, so a finished delivery behind a cancelled one is acked now
        # rather than redelivered and run again.
        await self._flush(final=True)
        self._closed = True
        for task in (self._flusher, self._stall_watch):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._flusher = self._stall_watch = None
        if self._recovery is not None:
            await asyncio.gather(self._recovery, return_exceptions=True)
        channel, self._channel = self._channel, None
        self._buffer.clear()
        self._live_tags.clear()
        self._tracker = AckTracker()
        self._open_single = set()
        if channel is not None and not channel.is_closed:
            try:
                async with asyncio.timeout(self.broker.connect_timeout):  # bounded, as every broker call
                    await channel.close()
            except CHANNEL_GONE as exc:
                logger.debug("closing the channel of %s failed: %r", self._queue_name, exc)
        if self._owns_broker:
            await self.broker.close()
