"""Several queues behind one provider, taken in order of preference (or by weight) by one consumer."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Sequence

import anyio

from swarrow.errors import ConfigurationError
from swarrow.message import Message
from swarrow.provider import MessageProvider

__all__ = ["MultiQueueProvider", "parse_queue_spec"]


def parse_queue_spec(spec: str) -> tuple[str, int | None]:
    """Split `name` or `name:weight` (weight a positive int) as `--queue` takes it."""
    name, sep, weight = spec.rpartition(":")
    if not sep or not weight.isdigit():
        return spec, None
    if not name or int(weight) < 1:
        raise ConfigurationError(f"--queue {spec!r}: the weight after ':' must be an integer >= 1")
    return name, int(weight)


class MultiQueueProvider:
    """One `MessageProvider` over several, each with its own prefetch and retry topology.

    Strict mode (no weights): each pick takes the first queue, in the given order, that has a
    buffered delivery, so `urgent` starves `normal` while it has messages (at most the prefetch
    window of `normal` is in the worker meanwhile). Weighted mode (`weights`, e.g. 5 and 1): picks
    follow a cycle where each queue is first choice `weight` times out of the total, falling back
    to the others in order when the first choice is empty, so no queue with messages starves.
    Settlements go to the provider of the delivery's queue.
    """

    def __init__(self, providers: Sequence[MessageProvider], weights: Sequence[int] | None = None) -> None:
        if not providers:
            raise ConfigurationError("MultiQueueProvider needs at least one queue")
        names = [provider.queue_name for provider in providers]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"a queue is listed twice: {', '.join(names)}")
        if weights is not None and (len(weights) != len(providers) or any(w < 1 for w in weights)):
            raise ConfigurationError("weights: one integer >= 1 per queue")
        self.providers = tuple(providers)
        self._by_queue = {provider.queue_name: provider for provider in providers}
        order = range(len(self.providers))
        if weights is None:
            self._cycle: tuple[tuple[MessageProvider, ...], ...] = (self.providers,)
        else:
            cycle = []
            for index, weight in enumerate(weights):
                first = self.providers[index]
                rest = tuple(self.providers[i] for i in order if i != index)
                cycle.extend([(first, *rest)] * weight)
            self._cycle = tuple(cycle)
        self._turn = 0
        self._closed = False
        self._pending: deque[Message] = deque()

    @property
    def queue_name(self) -> str:
        """The queues, comma-separated in preference order."""
        return ",".join(provider.queue_name for provider in self.providers)

    @property
    def prefetch(self) -> int:
        """The sum of the queues' prefetch windows (what the worker may hold at once)."""
        return sum(provider.prefetch for provider in self.providers)

    @property
    def is_consuming(self) -> bool:
        """True while every queue's provider is consuming."""
        return all(provider.is_consuming for provider in self.providers)

    async def start(self) -> None:
        """Start every queue's provider, in order."""
        for provider in self.providers:
            await provider.start()

    def receive_nowait(self) -> Message | None:
        """The next buffered delivery of the preferred queue that has one, else None."""
        if self._pending:
            return self._pending.popleft()
        cycle = self._cycle
        if len(cycle) > 1:
            self._turn = (self._turn + 1) % len(cycle)
            candidates = cycle[self._turn]
        else:
            candidates = cycle[0]
        for provider in candidates:
            message = provider.receive_nowait()
            if message is not None:
                return message
        return None

    async def receive(self) -> Message | None:
        """Wait for the next delivery of any queue; None once stopped, closed, or one queue's provider ends.

        Waits on every queue's own `receive()` at once (through reconnections, like a single queue);
        deliveries that arrive together are kept, in order, for the next picks: none is dropped.
        """
        message = self.receive_nowait()
        if message is not None or self._closed:
            return message
        got: list[Message] = []
        async with anyio.create_task_group() as race:
            for provider in self.providers:
                race.start_soon(self._wait_one, provider, got, race.cancel_scope)
        if not got:
            return None
        self._pending.extend(got[1:])
        return got[0]

    @staticmethod
    async def _wait_one(provider: MessageProvider, got: list[Message], scope: anyio.CancelScope) -> None:
        message = await provider.receive()
        if message is not None:
            got.append(message)  # no await before this: a delivery received is never cancelled away
        scope.cancel()

    async def messages(self) -> AsyncIterator[Message]:
        """Iterate over deliveries of all queues until stopped (starts them first)."""
        await self.start()
        while (message := await self.receive()) is not None:
            yield message

    def _provider(self, message: Message) -> MessageProvider:
        try:
            return self._by_queue[message.queue]
        except KeyError:
            raise ValueError(f"delivery from queue {message.queue!r} is not from {self.queue_name}") from None

    async def ack(self, message: Message) -> None:
        """Acknowledge on the delivery's own queue."""
        await self._provider(message).ack(message)

    async def reject(self, message: Message, *, requeue: bool = False) -> None:
        """Reject on the delivery's own queue (its own dead-letter topology)."""
        await self._provider(message).reject(message, requeue=requeue)

    async def stop_consuming(self) -> None:
        """Stop taking new deliveries on every queue."""
        self._closed = True
        for provider in self.providers:
            await provider.stop_consuming()

    async def close(self) -> None:
        """Close every queue's provider (unsettled deliveries go back to their queues)."""
        self._closed = True
        for provider in self.providers:
            with anyio.CancelScope(shield=True):
                await provider.close()
