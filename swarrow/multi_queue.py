"""Several queues behind one consumer: workers take the next message from the queue they prefer.

`swarrow consume app:fn --queue urgent --queue normal` opens one provider per queue on one connection
(each with its own prefetch window, its own acks, its own retry queues) and merges them here:

- **strict preference** (no weights): a free worker takes from the first queue holding a delivery.
  `normal` runs only while `urgent` has nothing buffered, so at most `normal`'s prefetch window of
  its messages is in progress when urgent work arrives — and a steady stream of urgent work starves
  `normal` completely. That is the point for e-mails behind imports; it is the trade-off to know.
- **weighted** (`--queue urgent:5 --queue normal:1`): while several queues hold deliveries, they are
  taken in the ratio of their weights (smooth weighted round-robin: `u u n u u u` rather than bursts);
  a queue with nothing buffered is skipped, so no worker ever waits while another queue has work.

Settling goes back to the provider the delivery came from (by `message.queue`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import anyio

from swarrow.errors import ConfigurationError
from swarrow.message import Message
from swarrow.provider import MessageProvider

__all__ = [
    "MergeableProvider",
    "MultiQueueProvider",
    "QueueChoice",
    "check_choices",
    "parse_queue_choice",
    "parse_queue_choices",
]

_WEIGHTED = re.compile(r"^(?P<name>.+):(?P<weight>[0-9]+)$")
MAX_WEIGHT = 1000


@runtime_checkable
class MergeableProvider(MessageProvider, Protocol):
    """A provider that can say what it holds and wait for a delivery without taking it."""

    @property
    def buffered(self) -> int:
        """Deliveries waiting for a worker."""
        ...

    @property
    def delivering(self) -> bool:
        """False once stopped: no more deliveries will come."""
        ...

    async def wait_buffered(self) -> bool:
        """Wait until a delivery is buffered (True) or the provider stops (False)."""
        ...


@dataclass(frozen=True, slots=True)
class QueueChoice:
    """One queue of a multi-queue consumer and, in weighted mode, its share."""

    name: str
    weight: int | None = None


def parse_queue_choice(text: str) -> QueueChoice:
    """`'urgent'` or `'urgent:5'` (a weight 1–1000 after the last colon); ConfigurationError otherwise."""
    if not text.strip():
        raise ConfigurationError(f"a queue name is required, got {text!r}")
    match = _WEIGHTED.match(text)
    if match is None:
        return QueueChoice(text)
    weight = int(match["weight"])
    if not 1 <= weight <= MAX_WEIGHT:
        raise ConfigurationError(
            f"queue {text!r}: the weight after ':' must be 1..{MAX_WEIGHT}, got {weight}"
        )
    return QueueChoice(match["name"], weight)


def parse_queue_choices(specs: Sequence[str]) -> list[QueueChoice]:
    """Every `--queue` given: one is taken literally (a name may hold a colon); several may carry weights."""
    if len(specs) == 1:
        return [QueueChoice(specs[0])]
    choices = [parse_queue_choice(spec) for spec in specs]
    check_choices(choices)
    return choices


def check_choices(choices: Sequence[QueueChoice]) -> None:
    """Distinct names, and weights on every queue or on none (a mix has no clear meaning)."""
    names = [c.name for c in choices]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigurationError(f"queue {repeated[0]!r} is given twice")
    weighted = [c.weight is not None for c in choices]
    if any(weighted) and not all(weighted):
        plain = next(c.name for c in choices if c.weight is None)
        raise ConfigurationError(
            f"give a weight to every queue or to none (queue {plain!r} has none): "
            "e.g. --queue urgent:5 --queue normal:1"
        )


class MultiQueueProvider:
    """One `MessageProvider` over several, in order of preference (or by weight)."""

    def __init__(self, providers: Sequence[MergeableProvider], weights: Sequence[int] | None = None) -> None:
        if len(providers) < 2:
            raise ConfigurationError("a multi-queue provider needs at least two queues")
        if weights is not None and len(weights) != len(providers):
            raise ConfigurationError("one weight per queue")
        for provider in providers:
            if not isinstance(provider, MergeableProvider):
                raise ConfigurationError(
                    f"{type(provider).__name__} cannot be merged with other queues: "
                    "it lacks buffered / delivering / wait_buffered"
                )
        self.providers: tuple[MergeableProvider, ...] = tuple(providers)
        self.queue_names: tuple[str, ...] = tuple(p.queue_name for p in providers)
        self._by_queue = dict(zip(self.queue_names, self.providers, strict=True))
        self.weights: tuple[int, ...] | None = None if weights is None else tuple(weights)
        # Held acks of a preferred queue delay its refill: flushed when a worker passes it by empty.
        self._refills = tuple(getattr(p, "refill_soon", _nothing) for p in self.providers)
        self._credit = [0] * len(providers)

    @property
    def queue_name(self) -> str:
        """The queues, in order of preference, joined by commas (for logs)."""
        return ",".join(self.queue_names)

    @property
    def prefetch(self) -> int:
        """The sum of the queues' prefetch windows: how many deliveries may be unsettled at once."""
        return sum(p.prefetch for p in self.providers)

    @property
    def is_consuming(self) -> bool:
        """True while every queue's consumer is registered (`/readyz` names the one that is not)."""
        return all(p.is_consuming for p in self.providers)

    @property
    def broker(self) -> object:
        """The connection the providers share (the metrics layer reads its failovers)."""
        return getattr(self.providers[0], "broker", None)

    def provider_for(self, queue: str) -> MessageProvider | None:
        """The provider consuming `queue`, if any."""
        return self._by_queue.get(queue)

    async def start(self) -> None:
        """Start consuming every queue; a queue that cannot be consumed fails the start."""
        for provider in self.providers:
            await provider.start()

    def receive_nowait(self) -> Message | None:
        """A buffered delivery from the preferred queue that has one, or None."""
        if self.weights is None:
            for index, provider in enumerate(self.providers):
                message = provider.receive_nowait()
                if message is not None:
                    for refill in self._refills[:index]:
                        refill()
                    return message
            return None
        return self._receive_weighted()

    def _receive_weighted(self) -> Message | None:
        # Smooth weighted round-robin over the queues that hold a delivery now (nginx's scheme):
        # each candidate earns its weight, the richest is served and pays the candidates' total.
        weights, credit, providers = self.weights, self._credit, self.providers
        if weights is None:
            raise RuntimeError("internal state: weights are unset here")
        while True:
            best, total = -1, 0
            for index, provider in enumerate(providers):
                if provider.buffered:
                    credit[index] += weights[index]
                    total += weights[index]
                    if best < 0 or credit[index] > credit[best]:
                        best = index
                else:
                    self._refills[index]()  # its share must not be lost to held acks
            if best < 0:
                return None
            credit[best] -= total
            message = providers[best].receive_nowait()
            if message is not None:
                return message

    async def receive(self) -> Message | None:
        """Wait for a delivery from any queue; None once every queue stopped delivering."""
        while True:
            message = self.receive_nowait()
            if message is not None:
                return message
            waiting = [p for p in self.providers if p.delivering]
            if not waiting:
                return None
            async with anyio.create_task_group() as race:
                for provider in waiting:
                    race.start_soon(_wait_then_cancel, provider, race.cancel_scope)

    async def messages(self) -> AsyncIterator[Message]:
        """Deliveries until every queue stops (starts them first)."""
        await self.start()
        while (message := await self.receive()) is not None:
            yield message

    async def ack(self, message: Message) -> None:
        """Ack on the provider the delivery came from."""
        await self._owner(message).ack(message)

    async def reject(self, message: Message, *, requeue: bool = False) -> None:
        """Reject on the provider the delivery came from."""
        await self._owner(message).reject(message, requeue=requeue)

    def _owner(self, message: Message) -> MessageProvider:
        provider = self._by_queue.get(message.queue)
        if provider is None:
            raise ConfigurationError(
                f"message from queue {message.queue!r} does not belong to this consumer ({self.queue_name})"
            )
        return provider

    async def stop_consuming(self) -> None:
        """Stop taking deliveries on every queue."""
        for provider in self.providers:
            await provider.stop_consuming()

    async def close(self) -> None:
        """Close every queue's provider (each flushes its acks, unsettled deliveries go back)."""
        errors: list[BaseException] = []
        for provider in self.providers:
            try:
                await provider.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def _nothing() -> None:
    return None


async def _wait_then_cancel(provider: MergeableProvider, scope: anyio.CancelScope) -> None:
    await provider.wait_buffered()
    scope.cancel()
