"""Names RabbitMQ refuses, checked on both brokers before anything is sent.

Over AMQP a queue, exchange or routing key over 255 bytes is a raw `ValueError` from the encoder
(pamqp), and declaring a queue or exchange whose name starts with `amq.` is refused by RabbitMQ
(ACCESS_REFUSED); memory:// took both. Here each is one error naming the name.
"""

from __future__ import annotations

from swarrow.errors import ConfigurationError, InvalidMessageError

__all__ = ["check_binding", "check_declared_name", "check_name", "check_routing_key"]

_SHORTSTR_MAX_BYTES = 255


def _too_long(value: str) -> int | None:
    size = len(value.encode())
    return size if size > _SHORTSTR_MAX_BYTES else None


def check_name(kind: str, name: str) -> None:
    """`ConfigurationError` when `name` (of a queue or an exchange) cannot travel in AMQP."""
    size = _too_long(name)
    if size is not None:
        raise ConfigurationError(
            f"{kind} name {name[:40]!r}... is {size} bytes, over AMQP's {_SHORTSTR_MAX_BYTES}-byte limit"
        )


def check_declared_name(kind: str, name: str) -> None:
    """`check_name`, and RabbitMQ's refusal to declare a name in the reserved `amq.` namespace."""
    check_name(kind, name)
    if name.startswith("amq."):
        raise ConfigurationError(
            f"{kind} name {name!r} starts with 'amq.', reserved by RabbitMQ (ACCESS_REFUSED): choose another"
        )


def check_binding(queue: str, exchange: str) -> None:
    """`check_name` for both names; the default exchange binds every queue already, and refuses more."""
    check_name("queue", queue)
    check_name("exchange", exchange)
    if exchange == "":
        raise ConfigurationError(
            f"cannot bind queue {queue!r} to the default exchange '' (RabbitMQ: ACCESS_REFUSED): it routes"
            " to every queue by its name already; bind to a named exchange"
        )


def check_routing_key(routing_key: str, exchange: str) -> None:
    """`InvalidMessageError` when the routing key or the exchange name cannot travel in AMQP."""
    for what, value in (("routing key", routing_key), ("exchange name", exchange)):
        size = _too_long(value)
        if size is not None:
            raise InvalidMessageError(
                f"{what} {value[:40]!r}... is {size} bytes, over AMQP's {_SHORTSTR_MAX_BYTES}-byte limit"
            )
