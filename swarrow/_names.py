"""Names RabbitMQ refuses, checked on both brokers before anything is sent.

Over AMQP a queue, exchange or routing key over 255 bytes is a raw `ValueError` from the encoder
(pamqp), and declaring a queue or exchange whose name starts with `amq.` is refused by RabbitMQ
(ACCESS_REFUSED); memory:// took both. Here each is one error naming the name.
"""

from __future__ import annotations

import re
from typing import Any

from swarrow.errors import ConfigurationError, InvalidMessageError
from swarrow.publishable import check_table

__all__ = ["check_arguments", "check_binding", "check_declared_name", "check_name", "check_routing_key"]

_SHORTSTR_MAX_BYTES = 255
_EXCHANGE_MAX_CHARS = 127  # pamqp's limit for an exchange name
# The characters pamqp (aiormq's codec) allows in queue and exchange names; anything else is a raw
# ValueError ("Invalid value for queue") from the client, though RabbitMQ itself would take it.
_NAME = re.compile(r"[a-zA-Z0-9\-_.:@#,/+ ]*")
_ALLOWED = "letters, digits, space and - _ . : @ # , / +"


def _problem(kind: str, name: str) -> str | None:
    if kind == "exchange" and len(name) > _EXCHANGE_MAX_CHARS:
        return f"is {len(name)} characters, over the AMQP client's {_EXCHANGE_MAX_CHARS}"
    size = len(name.encode())
    if size > _SHORTSTR_MAX_BYTES:
        return f"is {size} bytes, over AMQP's {_SHORTSTR_MAX_BYTES}-byte limit"
    if not _NAME.fullmatch(name):
        return f"has characters the AMQP client (pamqp) refuses: use {_ALLOWED}"
    return None


def check_name(kind: str, name: str) -> None:
    """`ConfigurationError` when `name` (of a queue or an exchange) cannot travel in AMQP."""
    problem = _problem(kind, name)
    if problem is not None:
        raise ConfigurationError(f"{kind} name {name[:60]!r} {problem}")


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
    size = len(routing_key.encode())
    if size > _SHORTSTR_MAX_BYTES:
        raise InvalidMessageError(
            f"routing key {routing_key[:60]!r} is {size} bytes, over AMQP's {_SHORTSTR_MAX_BYTES}-byte limit"
        )
    problem = _problem("exchange", exchange)
    if problem is not None:
        raise InvalidMessageError(f"exchange name {exchange[:60]!r} {problem}")


_MASTER_LOCATORS = ("min-masters", "client-local", "random")


def check_arguments(kind: str, name: str, arguments: dict[str, Any] | None) -> None:
    """`ConfigurationError` for declaration arguments that cannot be sent or that break the connection.

    A value the encoder cannot take (bytes, an int past 64 bits) was a raw `TypeError` from pamqp; an
    unknown `x-queue-master-locator` makes RabbitMQ 3.10 close the whole connection (INTERNAL_ERROR).
    """
    if not arguments:
        return
    try:
        check_table("arguments", arguments)
    except InvalidMessageError as exc:
        raise ConfigurationError(f"{kind} {name!r}: {exc}") from None
    locator = arguments.get("x-queue-master-locator")
    if locator is not None and locator not in _MASTER_LOCATORS:
        raise ConfigurationError(
            f"invalid argument 'x-queue-master-locator' for {kind} {name!r}: must be one of"
            f" {', '.join(map(repr, _MASTER_LOCATORS))}, got {locator!r} (RabbitMQ 3.10 drops the connection)"
        )
