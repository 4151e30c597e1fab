"""Dead-lettering as RabbitMQ 3.10 does it: the `x-death` history, and the cycles it drops."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from swarrow.message import Message
from swarrow.publishable import route_headers

__all__ = ["dead_lettered", "is_cycle"]


def dead_lettered(message: Message, queue: str, reason: str, routing_key: str | None) -> Message:
    """`message` as it leaves `queue` for `reason`: `x-death` updated, expiration moved into it.

    `routing_key` is the queue's `x-dead-letter-routing-key` (None: the message keeps its own keys).
    As RabbitMQ does: `routing-keys` lists the published key and its `CC` keys; a dead-letter
    routing key drops the `CC` header; the `x-first-death-*` headers are written (overwriting a
    producer's) only when the message had no `x-death` yet; a non-list `x-death` is replaced.
    """
    headers = dict(message.headers)
    previous = headers.get("x-death")
    deaths = [dict(d) for d in previous if isinstance(d, dict)] if isinstance(previous, list) else []
    for death in deaths:
        if death.get("queue") == queue and death.get("reason") == reason:
            # RabbitMQ bumps the count and moves the entry first; `time` stays the first death's.
            death["count"] = int(death.get("count", 0)) + 1
            deaths.remove(death)
            deaths.insert(0, death)
            break
    else:
        death = {
            "count": 1,
            "reason": reason,
            "queue": queue,
            "time": datetime.now(UTC).replace(microsecond=0),
            "exchange": message.exchange,
            "routing-keys": [message.routing_key, *route_headers(headers, "CC")],
        }
        if message.expiration is not None:
            death["original-expiration"] = message.expiration
        deaths.insert(0, death)
    headers["x-death"] = deaths
    if previous is None:
        headers["x-first-death-queue"] = queue
        headers["x-first-death-reason"] = reason
        headers["x-first-death-exchange"] = message.exchange
    if routing_key is not None:
        headers.pop("CC", None)
    return message.replace(headers={key: headers[key] for key in sorted(headers)}, expiration=None)


def is_cycle(target: str, deaths: list[Any]) -> bool:
    """True when dead-lettering into `target` closes a loop with no reject in it (RabbitMQ drops those).

    `deaths` is the updated `x-death` list, newest first: a cycle is the entries down to the last
    death in `target`; it is "fully automatic" (expiry, length limit) unless one of them is a reject.
    """
    for index, death in enumerate(deaths):
        if isinstance(death, dict) and death.get("queue") == target:
            return all(isinstance(d, dict) and d.get("reason") != "rejected" for d in deaths[: index + 1])
    return False
