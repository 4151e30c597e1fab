"""The in-memory broker's side of consuming: subscribers, pushing prefetch windows, settlements."""

from __future__ import annotations

import bisect
import time

from swarrow.errors import ConfigurationError
from swarrow.memory._queue import Entry, Queue, Subscriber
from swarrow.message import Message

__all__ = ["ConsumerSide"]


class ConsumerSide:
    """What `MemoryMessageProvider` calls on its broker (a mixin of `MemoryBroker`): its internal API."""

    _queues: dict[str, Queue]
    _orphans: dict[str, list[Subscriber]]

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _dead_letter(self, queue: Queue, message: Message, reason: str, bcc: tuple[str, ...] = ()) -> None:
        raise NotImplementedError

    def _notify(self) -> None:
        raise NotImplementedError

    def _trim(self, queue: Queue) -> None:
        raise NotImplementedError

    def _has_queue(self, name: str) -> bool:
        return name in self._queues

    def _subscribe(self, name: str, subscriber: Subscriber) -> None:
        queue = self._queues.get(name)
        if queue is None:
            raise ConfigurationError(f"queue {name!r} does not exist on {self.url}: declare it first")
        queue.subscribers.append(subscriber)
        self._dispatch(queue)
        self._notify()

    def _unsubscribe(self, name: str, subscriber: Subscriber) -> None:
        queue = self._queues.get(name)
        subscribers = queue.subscribers if queue is not None else self._orphans.get(name, [])
        if subscriber in subscribers:
            subscribers.remove(subscriber)
        if queue is not None and not queue.subscribers:
            queue.last_used = time.monotonic()
        self._notify()

    def _dispatch(self, queue: Queue, now: float | None = None) -> None:
        """Push ready messages to subscribers with room, round robin, as RabbitMQ fills prefetch windows."""
        subscribers = queue.subscribers
        ready = queue.ready
        if not subscribers or not ready:
            return
        now = time.monotonic() if now is None else now
        count = len(subscribers)
        while ready:
            head = ready[0]
            if head.expires_at is not None and head.expires_at < now:
                expired = ready.popleft()
                self._dead_letter(queue, expired.message, "expired", expired.bcc)
                continue
            for offset in range(count):
                subscriber = subscribers[(queue.turn + offset) % count]
                if subscriber._has_room():
                    break
            else:
                return
            queue.turn = (queue.turn + offset + 1) % count
            subscriber._push(ready.popleft(), queue.spec.quorum)
            self._notify()

    def _settled(self, name: str) -> None:
        """A delivery of `name` was acked (or dropped): its consumer has room again."""
        queue = self._queues.get(name)
        if queue is not None:
            self._dispatch(queue)
        self._notify()

    def _requeue(self, name: str, entries: list[Entry], *, closing: bool = False) -> None:
        """Return deliveries: classic queues put them back at their old place; quorum queues at the
        back when rejected and, when their consumer closes, in delivery order after the deliveries
        other closed consumers returned before (RabbitMQ serves its returns first, oldest first)."""
        queue = self._queues.get(name)
        if queue is None:
            return
        ready = queue.ready
        returned: list[Entry] = []
        for entry in entries:
            entry.redelivered = True
            entry.delivery_count += 1
            limit = queue.spec.delivery_limit
            if queue.spec.quorum:
                entry.returned = closing
                if limit is not None and entry.delivery_count > limit:
                    self._dead_letter(queue, entry.message, "delivery_limit", entry.bcc)
                elif closing:
                    returned.append(entry)
                else:
                    ready.append(entry)
            else:
                ready.insert(bisect.bisect_left(ready, entry.seq, key=lambda e: e.seq), entry)
        if returned:
            at = 0
            while at < len(ready) and ready[at].returned:
                at += 1
            for offset, entry in enumerate(returned):
                ready.insert(at + offset, entry)
        self._trim(queue)  # RabbitMQ applies x-max-length to what comes back too
        self._dispatch(queue)
        self._notify()

    def _reject(self, name: str, entry: Entry) -> None:
        """A delivery rejected without requeue: dead-lettered (reason `rejected`) or dropped."""
        queue = self._queues.get(name)
        if queue is not None:
            self._dead_letter(queue, entry.message, "rejected", entry.bcc)
            self._dispatch(queue)
        self._notify()
