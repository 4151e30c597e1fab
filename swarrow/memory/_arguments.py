"""Queue arguments as RabbitMQ 3.10 checks them: what it refuses, what memory models, what memory refuses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swarrow.errors import ConfigurationError

__all__ = ["EQUIVALENCE_KEYS", "QueueSpec", "check_redeclare", "parse_queue"]

# Arguments RabbitMQ compares when a queue is declared again; any other argument is ignored there.
EQUIVALENCE_KEYS = (
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-dead-letter-strategy",
)
# RabbitMQ behaviour memory:// does not model: declaring these raises rather than silently differing.
_NOT_MODELLED = {
    "x-max-priority": "priority ordering",
    "x-max-length-bytes": "a byte limit on the queue",
    "x-single-active-consumer": "single active consumer",
    "x-dead-letter-strategy": "at-least-once dead-lettering",
}
_MAX_TTL = 315_360_000_000  # ten years in ms: RabbitMQ's bound for x-message-ttl and x-expires
_OVERFLOWS = ("drop-head", "reject-publish", "reject-publish-dlx")
# RabbitMQ 3.10 refuses (406) an argument another queue type owns: these are each type's own.
_OWNED = {
    "x-queue-mode": "classic",
    "x-queue-version": "classic",
    "x-queue-master-locator": "classic",
    "x-max-priority": "classic",
    "x-max-in-memory-length": "quorum",
    "x-max-in-memory-bytes": "quorum",
    "x-queue-leader-locator": "quorum",
    "x-quorum-initial-group-size": "quorum",
    "x-dead-letter-strategy": "quorum",
    "x-delivery-limit": "quorum",
    "x-max-age": "stream",
    "x-initial-cluster-size": "stream",
    "x-stream-max-segment-size-bytes": "stream",
}
# Arguments with no observable effect in one process, whose values RabbitMQ still checks.
_CHOICES = {
    "x-queue-mode": ("default", "lazy"),
    "x-queue-version": (1, 2),
    "x-queue-master-locator": ("min-masters", "client-local", "random"),
    "x-queue-leader-locator": ("client-local", "balanced"),
    "x-dead-letter-strategy": ("at-most-once", "at-least-once"),
}
# Values of a not-modelled argument that ask for nothing memory:// lacks (the default behaviour).
_HARMLESS = {"x-single-active-consumer": False, "x-dead-letter-strategy": "at-most-once"}


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue's declared shape, with the arguments memory:// acts on parsed once."""

    durable: bool
    arguments: dict[str, Any]
    quorum: bool = False
    ttl_ms: int | None = None
    expires_ms: int | None = None
    max_length: int | None = None
    overflow: str = "drop-head"
    delivery_limit: int | None = None
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None


def _refuse(name: str, queue: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"invalid argument {name!r} for queue {queue!r}: {why}")


def _int_arg(args: dict[str, Any], name: str, queue: str, *, low: int, high: int | None = None) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(name, queue, f"must be an integer, got {value!r} ({type(value).__name__})")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"from {low} to {high}"
        raise _refuse(name, queue, f"must be {bound}, got {value!r}")
    return value


def parse_queue(name: str, durable: bool, arguments: dict[str, Any]) -> QueueSpec:
    """Check `arguments` as RabbitMQ would (ConfigurationError naming the one it refuses) and parse them."""
    args = dict(arguments)
    kind = args.get("x-queue-type", "classic")
    if kind not in ("classic", "quorum", "stream"):
        raise _refuse("x-queue-type", name, f"unknown queue type {kind!r} (classic, quorum or stream)")
    if kind == "stream":
        raise _refuse("x-queue-type", name, "stream queues are not modelled by memory://")
    quorum = kind == "quorum"
    if quorum and not durable:
        raise ConfigurationError(f"queue {name!r}: a quorum queue must be durable (durable=False refused)")
    _check_owned_and_inert(name, str(kind), args)
    ttl = _int_arg(args, "x-message-ttl", name, low=0, high=_MAX_TTL)
    expires = _int_arg(args, "x-expires", name, low=1, high=_MAX_TTL)
    max_length = _int_arg(args, "x-max-length", name, low=0)
    _int_arg(args, "x-max-length-bytes", name, low=0)
    _int_arg(args, "x-max-priority", name, low=0, high=255)
    overflow = args.get("x-overflow", "drop-head")
    if overflow not in _OVERFLOWS:
        raise _refuse("x-overflow", name, f"must be one of {', '.join(_OVERFLOWS)}, got {overflow!r}")
    dlx = args.get("x-dead-letter-exchange")
    if dlx is not None and not isinstance(dlx, str):
        raise _refuse("x-dead-letter-exchange", name, f"must be a string, got {dlx!r}")
    dlrk = args.get("x-dead-letter-routing-key")
    if dlrk is not None:
        if not isinstance(dlrk, str):
            raise _refuse("x-dead-letter-routing-key", name, f"must be a string, got {dlrk!r}")
        if dlx is None:
            raise _refuse("x-dead-letter-routing-key", name, "needs x-dead-letter-exchange as well")
    limit = args.get("x-delivery-limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        # RabbitMQ takes it and ignores it: memory:// says so instead.
        raise _refuse("x-delivery-limit", name, f"memory:// models integer limits only, got {limit!r}")
    for key, what in _NOT_MODELLED.items():
        if key in args and not (key in _HARMLESS and _typed(args[key]) == _typed(_HARMLESS[key])):
            raise ConfigurationError(
                f"argument {key!r} for queue {name!r}: memory:// does not model {what}; "
                "test this against RabbitMQ"
            )
    if quorum and overflow == "reject-publish-dlx":
        raise _refuse("x-overflow", name, "memory:// does not model reject-publish-dlx on quorum queues")
    return QueueSpec(
        durable=durable,
        arguments=args,
        quorum=quorum,
        ttl_ms=ttl,
        expires_ms=expires,
        max_length=max_length,
        overflow=str(overflow),
        delivery_limit=None if limit is None or limit < 0 else int(limit),
        dead_letter_exchange=dlx,
        dead_letter_routing_key=dlrk,
    )


def _check_owned_and_inert(name: str, kind: str, args: dict[str, Any]) -> None:
    """Refuse what RabbitMQ refuses: another type's argument, or a bad value of one memory need not act on."""
    for key, owner in _OWNED.items():
        if key in args and owner != kind:
            raise _refuse(
                key, name, f"{kind} queues do not take it, only {owner} queues (RabbitMQ refuses it)"
            )
    for key, choices in _CHOICES.items():
        value = args.get(key)
        if value is not None and (isinstance(value, bool) or value not in choices):
            raise _refuse(key, name, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
    _int_arg(args, "x-quorum-initial-group-size", name, low=1)
    _int_arg(args, "x-max-in-memory-length", name, low=0)
    _int_arg(args, "x-max-in-memory-bytes", name, low=0)
    single = args.get("x-single-active-consumer")
    if single is not None and not isinstance(single, bool):
        raise _refuse("x-single-active-consumer", name, f"must be true or false, got {single!r}")


def _typed(value: Any) -> tuple[str, Any]:
    # 1000 and 1000.0 are equal in Python, not to RabbitMQ.
    return (type(value).__name__, value)


def check_redeclare(name: str, existing: QueueSpec, durable: bool, arguments: dict[str, Any]) -> None:
    """ConfigurationError naming the first argument RabbitMQ would find inequivalent (its 406)."""
    if existing.durable != durable:
        raise ConfigurationError(
            f"queue {name!r} exists with durable={existing.durable}, not durable={durable}: "
            "delete it or declare it as it is"
        )
    old_type = existing.arguments.get("x-queue-type", "classic")
    new_type = arguments.get("x-queue-type", "classic")
    if old_type != new_type:
        raise ConfigurationError(
            f"queue {name!r} exists with x-queue-type {old_type!r}, not {new_type!r}: "
            "delete it or declare it as it is"
        )
    for key in EQUIVALENCE_KEYS:
        old, new = existing.arguments.get(key), arguments.get(key)
        if _typed(old) != _typed(new):
            raise ConfigurationError(
                f"queue {name!r} exists with argument {key!r} = {old!r}, not {new!r}: "
                "delete it or declare it as it is"
            )
