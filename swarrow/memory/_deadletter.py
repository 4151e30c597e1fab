"""Dead-lettering as RabbitMQ 3.10 does it: the `x-death` history, and the cycles it drops."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from swarrow.message import Message

__all__ = ["dead_lettered", "is_cycle"]


def dead_lettered(message: Message, queue: str, reason: str) -> Message:
    """`message` as it leaves `queue` for `reason`: `x-death` updated, expiration moved into it."""
    headers = dict(message.headers)
    deaths = [dict(d) for d in headers.get("x-death", ()) if isinstance(d, dict)]
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
            "routing-keys": [message.routing_key],
        }
        if message.expiration is not None:
            death["original-expiration"] = message.expiration
        deaths.insert(0, death)
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-exchange", message.exchange)
    headers.pop("x-delivery-count", None)
    return message.replace(headers=headers, expiration=None)


def is_cycle(target: str, deaths: list[Any]) -> bool:
    """True when dead-lettering into `target` closes a loop with no reject in it (RabbitMQ drops those).

    `deaths` is the updated `x-death` list, newest first: a cycle is the entries down to the last
    death in `target`; it is "fully automatic" (expiry, length limit) unless one of them is a reject.
    """
    for index, death in enumerate(deaths):
        if isinstance(death, dict) and death.get("queue") == target:
            return all(isinstance(d, dict) and d.get("reason") != "rejected" for d in deaths[: index + 1])
    return False
