"""The in-memory broker's exchanges: direct, fanout and topic routing, `amq.*`, alternate exchanges."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from swarrow.errors import ConfigurationError, PublishError

__all__ = ["Exchanges"]

_PREDECLARED = {
    "amq.direct": "direct",
    "amq.fanout": "fanout",
    "amq.topic": "topic",
    "amq.headers": "headers",
    "amq.match": "headers",
}
_MODELLED = ("direct", "fanout", "topic")


@dataclass(slots=True)
class _Exchange:
    name: str
    type: str
    bindings: dict[str, set[str]] = field(default_factory=dict)
    alternate: str | None = None  # `alternate-exchange`: where what routes nowhere goes instead
    durable: bool = True


def _topic_match(pattern: str, key: str) -> bool:
    """RabbitMQ's topic matching: words split on '.', `*` is exactly one word, `#` zero or more."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    # An empty routing key (or pattern) has no words: `*` does not match it, `#` does.
    return match(pattern.split(".") if pattern else [], key.split(".") if key else [])


class Exchanges:
    """The named exchanges of one broker (the default exchange is the broker's: it routes by queue name)."""

    def __init__(self) -> None:
        self._by_name = {n: _Exchange(n, t) for n, t in _PREDECLARED.items()}

    def declare(self, name: str, type: str, durable: bool, arguments: dict[str, Any] | None) -> None:
        """Declare `name`; `ConfigurationError` for what memory:// does not model, or a conflict."""
        if type not in _MODELLED:
            raise ConfigurationError(
                f"the in-memory broker supports direct, fanout and topic exchanges, not {type!r}"
            )
        options = dict(arguments or {})
        alternate = options.pop("alternate-exchange", None)
        if options:
            raise ConfigurationError(
                f"exchange {name!r}: memory:// models only the alternate-exchange argument, "
                f"not {sorted(options)}"
            )
        if alternate is not None and not isinstance(alternate, str):
            raise ConfigurationError(
                f"exchange {name!r}: alternate-exchange must be a name, got {alternate!r}"
            )
        existing = self._by_name.get(name)
        if existing is None and name.startswith("amq."):
            raise ConfigurationError(
                f"exchange name {name!r} starts with 'amq.', reserved by RabbitMQ (ACCESS_REFUSED): "
                "choose another"
            )
        if existing is not None and (
            existing.type != type or existing.alternate != alternate or existing.durable != durable
        ):
            raise ConfigurationError(
                f"exchange {name!r} exists with type {existing.type!r}, alternate-exchange "
                f"{existing.alternate!r} and durable={existing.durable}, not {type!r}, {alternate!r} and "
                f"durable={durable} (PRECONDITION_FAILED)"
            )
        self._by_name.setdefault(name, _Exchange(name, type, alternate=alternate, durable=durable))

    def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        """Route `exchange`'s messages with `routing_key` into `queue` (topic: `*` and `#`)."""
        found = self._by_name.get(exchange)
        if found is None:
            raise ConfigurationError(f"exchange {exchange!r} does not exist")
        if found.type not in _MODELLED:
            raise ConfigurationError(
                f"exchange {exchange!r} is a {found.type} exchange: memory:// does not model its routing"
            )
        found.bindings.setdefault(routing_key, set()).add(queue)

    def unbind(self, queue: str) -> None:
        """Remove every binding of a deleted `queue`."""
        for exchange in self._by_name.values():
            for queues in exchange.bindings.values():
                queues.discard(queue)

    def route(self, exchange: str, keys: list[str]) -> list[str]:
        """The queues `exchange` routes any of `keys` to; `PublishError` (NOT_FOUND) if it does not exist."""
        found = self._by_name.get(exchange)
        if found is None:
            raise PublishError(f"exchange {exchange!r} does not exist (NOT_FOUND)")
        seen = {exchange}
        while True:
            if found.type == "fanout":
                targets = {q for queues in found.bindings.values() for q in queues}
            elif found.type == "topic":
                targets = {
                    q
                    for pattern, queues in found.bindings.items()
                    if any(_topic_match(pattern, key) for key in keys)
                    for q in queues
                }
            else:
                targets = {q for key in keys for q in found.bindings.get(key, ())}
            # RabbitMQ hands what routes nowhere to the alternate exchange, once per exchange.
            alternate = found.alternate
            if targets or alternate is None or alternate in seen or alternate not in self._by_name:
                return sorted(targets)
            seen.add(alternate)
            found = self._by_name[alternate]
