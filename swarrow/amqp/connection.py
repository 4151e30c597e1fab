"""A robust aio-pika connection to RabbitMQ (one node or a cluster) and the queue administration on it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import ssl
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, Final, ParamSpec, Self, TypeVar

import aiormq
import aiormq.abc
import anyio

from swarrow._names import check_arguments, check_binding, check_declared_name, check_name
from swarrow.amqp._errors import CHANNEL_GONE, QuietFirstConnect
from swarrow.amqp.failover import FailoverConnection, connect_first
from swarrow.broker import QueueInfo
from swarrow.errors import BrokerUnavailableError, ConfigurationError
from swarrow.urls import DEFAULT_URL, BrokerURL, parse_url

__all__ = ["AmqpConnection"]

logger = logging.getLogger(__name__)

# A TTL no retry queue has (RabbitMQ's largest); RabbitMQ's 406 for it names the current value.
_TTL_PROBE: Final = 2**31 - 1
_DLX_PROBE: Final = "swarrow.probe.no-such-exchange"
# "inequivalent arg 'K' for queue 'q' in vhost '/': received ... but current is X", X one of: none,
# 'V', the value 'V' of type 'T'.
_INEQUIVALENT: Final = re.compile(
    r"inequivalent arg '([^']+)' for queue .*? but current is "
    r"(?:(none)|the value '(.*)' of type '([^']+)'|'(.*)')$"
)
_INTEGER_TYPES: Final = ("byte", "short", "signedint", "long", "unsignedbyte", "unsignedshort", "unsignedint")
# RabbitMQ's 406 reply names what it refused: "invalid arg 'x-message-ttl' ...", "inequivalent arg
# 'durable' ...", "invalid property 'non-durable' ...", "invalid type 'byte' for arg 'x-...'".
_EXCHANGE_TYPES: Final = ("direct", "fanout", "topic", "headers")
_REFUSED_ARG = re.compile(r"(?:arg|property) '([^']+)'")
# Seconds to wait for a scratch channel's close-ok; a silent broker's channel is left to the connection.
_SCRATCH_CLOSE_TIMEOUT: Final = 1.0
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _bounded(
    method: Callable[Concatenate[AmqpConnection, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[AmqpConnection, _P], Coroutine[Any, Any, _T]]:
    """Bound a queue administration call by `connect_timeout`, once connected (the connect bounds itself).

    Without it a broker gone silent after the connection held the CLI's queue checks forever.
    """

    @functools.wraps(method)
    async def call(self: AmqpConnection, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        await self._connect()
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await method(self, *args, **kwargs)
        except TimeoutError:
            what = method.__name__.replace("_", " ")
            timeout = self.connect_timeout
            raise BrokerUnavailableError(
                f"{self.url} did not answer within {timeout:g}s (connect_timeout): {what} {args[0]!r}"
            ) from None

    return call


async def _close_scratch(channel: aiormq.abc.AbstractChannel) -> None:
    """Close a one-off channel, waiting at most _SCRATCH_CLOSE_TIMEOUT for the broker's answer."""
    if channel.is_closed:
        return
    with contextlib.suppress(*CHANNEL_GONE):
        await asyncio.wait_for(channel.close(), _SCRATCH_CLOSE_TIMEOUT)


class AmqpConnection:
    """A robust connection to RabbitMQ that declares, inspects, purges and deletes queues.

    `url` names one node or a cluster (`amqp://u:p@h1:5672,h2:5672/vhost`, or a list of URLs): on
    start and after every lost connection the nodes are tried in turn from a random one (`shuffle`),
    each for at most `connect_timeout` seconds (`node_timeout` for a cluster); `BrokerUnavailableError`
    only when every node refuses at start. `reconnect_interval` is the pause once every node refused
    (0.1 s between the nodes of one round). `ssl_context` is passed to aio-pika for `amqps://`.
    """

    def __init__(
        self,
        url: str | Sequence[str] | BrokerURL = DEFAULT_URL,
        *,
        reconnect_interval: float = 2.0,
        connect_timeout: float = 10.0,
        node_timeout: float = 5.0,
        shuffle: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        connection_name: str = "swarrow",
    ) -> None:
        if reconnect_interval <= 0:
            raise ConfigurationError(f"reconnect_interval must be > 0 seconds, got {reconnect_interval!r}")
        parsed = url if isinstance(url, BrokerURL) else parse_url(url)
        if parsed.is_memory:
            raise ConfigurationError(
                f"{parsed.masked!r} is not a RabbitMQ URL: use open_broker() for memory://"
            )
        self.broker_url = parsed
        self.reconnect_interval = reconnect_interval
        self.connect_timeout = connect_timeout
        self.node_timeout = node_timeout
        self.shuffle = shuffle
        self.ssl_context = ssl_context
        self.connection_name = connection_name
        self._connection: FailoverConnection | None = None
        self._lock = asyncio.Lock()

    @property
    def url(self) -> str:
        """The URL (every node) with the password masked."""
        return self.broker_url.masked

    @property
    def node(self) -> str:
        """The node connected to (or tried next), masked; the first node before any connection."""
        connection = self._connection
        if connection is None:
            return self.broker_url.masked_node(self.broker_url.nodes[0])
        return self.broker_url.masked_node(connection.node)

    @property
    def node_url(self) -> str:
        """The URL of `node`, password included, for code that opens a connection of its own: never log it."""
        connection = self._connection
        node = connection.node if connection is not None else self.broker_url.nodes[0]
        return self.broker_url.node_url(node)

    @property
    def failovers(self) -> int:
        """Connections re-established after a loss (to the same node or another) since the start."""
        connection = self._connection
        return connection.failovers if connection is not None else 0

    @property
    def username(self) -> str | None:
        """The user RabbitMQ authenticates (the URL's, else `guest`): a `user_id` property must match.

        None with `auth=external` (a client certificate names the user): then the broker alone checks.
        """
        if "auth=external" in self.broker_url.query.lower():
            return None
        return self.broker_url.username or "guest"

    @property
    def is_connected(self) -> bool:
        """True while the underlying connection is open."""
        return (
            self._connection is not None
            and not self._connection.is_closed
            and bool(self._connection.connected.is_set())
        )

    async def connect(self) -> None:
        """Connect now; `BrokerUnavailableError` (URL masked) when unreachable or refused."""
        await self._connect()

    async def _connect(self) -> FailoverConnection:
        async with self._lock:
            if self._connection is None:
                options: dict[str, Any] = {"client_properties": {"connection_name": self.connection_name}}
                if self.ssl_context is not None:
                    options["ssl_context"] = self.ssl_context
                timeout = self.connect_timeout
                if self.broker_url.is_cluster:
                    timeout = min(timeout, self.node_timeout)
                with QuietFirstConnect():
                    self._connection = await connect_first(
                        self.broker_url,
                        node_timeout=timeout,
                        reconnect_interval=self.reconnect_interval,
                        shuffle=self.shuffle,
                        **options,
                    )
            return self._connection

    async def _scratch_channel(self) -> aiormq.abc.AbstractChannel:
        """A plain aiormq channel for one-off calls whose failure closes the channel (passive declares)."""
        connection = await self._connect()
        await connection.ready()
        transport = connection.transport
        if transport is None:
            raise aiormq.exceptions.ChannelInvalidStateError("the connection is not open")
        channel: aiormq.abc.AbstractChannel = await transport.connection.channel(publisher_confirms=False)
        return channel

    @_bounded
    async def inspect_queue(self, name: str) -> QueueInfo | None:
        """Passive declare: the queue's counts, or None when it does not exist."""
        check_name("queue", name)
        channel = await self._scratch_channel()
        try:
            ok = await channel.queue_declare(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        finally:
            await _close_scratch(channel)
        return QueueInfo(name, False, int(ok.message_count or 0), int(ok.consumer_count or 0))

    @_bounded
    async def declare_queue(
        self, name: str, *, durable: bool = True, arguments: dict[str, Any] | None = None
    ) -> QueueInfo:
        """Declare `name`; `ConfigurationError` naming the queue when it exists with other arguments."""
        check_declared_name("queue", name)
        check_arguments("queue", name, arguments)
        existing = await self.inspect_queue(name)
        channel = await self._scratch_channel()
        try:
            ok = await channel.queue_declare(name, durable=durable, arguments=arguments or None)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise _declare_error(name, durable, arguments, existing is not None, exc) from None
        except aiormq.exceptions.ChannelAccessRefused as exc:
            reason = exc.args[0] if exc.args else exc
            raise ConfigurationError(
                f"RabbitMQ refused to declare queue {name!r}: {reason} (the user needs configure permission "
                "on it, and write permission on its dead-letter exchange: rabbitmqctl set_permissions)"
            ) from None
        finally:
            await _close_scratch(channel)
        return QueueInfo(name, existing is None, int(ok.message_count or 0), int(ok.consumer_count or 0))

    @_bounded
    async def has_dead_letter_exchange(self, name: str) -> bool | None:
        """Whether the existing queue has an `x-dead-letter-exchange` argument; None when it cannot be told.

        Read like `message_ttl`. A RabbitMQ policy can also give a queue a dead-letter exchange; that,
        AMQP does not show.
        """
        told, current = await self._current_argument(name, "x-dead-letter-exchange", _DLX_PROBE)
        return current is not None if told else None

    @_bounded
    async def message_ttl(self, name: str) -> float | None:
        """The existing queue's `x-message-ttl` in seconds; None when it has none, or it cannot be told."""
        told, current = await self._current_argument(name, "x-message-ttl", _TTL_PROBE)
        return current / 1000 if told and isinstance(current, int) else None

    async def _current_argument(self, name: str, key: str, probe: object) -> tuple[bool, object]:
        """(True, the queue's `key`, None if it has none), or (False, None) when it cannot be told.

        AMQP has no call that returns a queue's arguments; declaring it with a value no queue has makes
        RabbitMQ refuse and name the current one. It names the first argument that differs, which may
        be another (`durable`, `x-queue-type`, a TTL beside the dead-letter exchange...): that one is
        declared as it is and the question asked again. Only for a queue that exists (checked first):
        the probe must never create one.
        """
        if await self.inspect_queue(name) is None:
            return False, None
        durable = True
        arguments: dict[str, Any] = {key: probe}
        for _ in range(_EQUIVALENCE_KEYS + 2):
            channel = await self._scratch_channel()
            try:
                await channel.queue_declare(name, durable=durable, arguments=arguments)
                return True, probe  # the probe value itself: possible, if improbable
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                found = _INEQUIVALENT.search(str(exc.args[0] if exc.args else exc))
            finally:
                await _close_scratch(channel)
            if found is None:
                return False, None
            argument, none, value, kind, bare = found.groups()
            current = None if none else _typed_current(value, kind) if kind else _typed_current(bare, None)
            if argument == key:
                return True, current
            if argument == "durable":
                durable = current is True
            elif current is None:
                arguments.pop(argument, None)
            else:
                arguments[argument] = current
        return False, None

    @_bounded
    async def declare_exchange(
        self,
        name: str,
        type: str = "direct",
        *,
        durable: bool = True,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Declare exchange `name`; `ConfigurationError` naming it when it exists with other arguments.

        A new name in RabbitMQ's reserved `amq.` namespace is refused too (ACCESS_REFUSED).
        """
        check_name("exchange", name)
        check_arguments("exchange", name, arguments)
        if type not in _EXCHANGE_TYPES and not type.startswith("x-"):
            raise ConfigurationError(
                f"exchange {name!r}: unknown type {type!r} (direct, fanout, topic, headers, or a plugin's"
                " x-...); RabbitMQ would close the whole connection (COMMAND_INVALID)"
            )
        channel = await self._scratch_channel()
        try:
            await channel.exchange_declare(
                name, exchange_type=type, durable=durable, arguments=arguments or None
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"exchange {name!r} already exists with another type or arguments than {type!r} "
                f"{arguments or {}!r} (durable={durable}): {exc.args[0] if exc.args else exc}"
            ) from None
        except aiormq.exceptions.ConnectionCommandInvalid as exc:  # an unknown plugin type: connection gone
            raise ConfigurationError(
                f"RabbitMQ refused exchange {name!r} of type {type!r}: {exc.args[0] if exc.args else exc}"
            ) from None
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise ConfigurationError(
                f"RabbitMQ refused to declare exchange {name!r}: {exc.args[0] if exc.args else exc}"
            ) from None
        finally:
            await _close_scratch(channel)

    @_bounded
    async def bind_queue(self, queue: str, exchange: str, routing_key: str = "") -> None:
        """Bind `queue` to `exchange` with `routing_key` (idempotent); never to the default exchange."""
        check_binding(queue, exchange)
        channel = await self._scratch_channel()
        try:
            await channel.queue_bind(queue, exchange, routing_key=routing_key)
        except (aiormq.exceptions.ChannelNotFoundEntity, aiormq.exceptions.ChannelAccessRefused) as exc:
            raise ConfigurationError(
                f"cannot bind queue {queue!r} to exchange {exchange!r}: {exc.args[0] if exc.args else exc}"
            ) from None
        finally:
            await _close_scratch(channel)

    @_bounded
    async def delete_queue(self, name: str) -> None:
        """Delete `name` (no error if absent)."""
        check_name("queue", name)
        channel = await self._scratch_channel()
        try:
            await channel.queue_delete(name)
        finally:
            await _close_scratch(channel)

    @_bounded
    async def purge_queue(self, name: str) -> int:
        """Drop the ready messages of `name`; return how many."""
        check_name("queue", name)
        channel = await self._scratch_channel()
        try:
            ok = await channel.queue_purge(name)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0
        finally:
            await _close_scratch(channel)
        return int(ok.message_count or 0)

    async def __aenter__(self) -> Self:
        """`async with open_broker(url) as broker:` connects, and closes whatever happens."""
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close (shielded, so a cancelled block still closes the connection)."""
        with anyio.CancelScope(shield=True):
            await self.close()

    async def close(self) -> None:
        """Close the connection (unsettled deliveries return to their queues)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                async with asyncio.timeout(self.connect_timeout):  # a silent broker: give up, drop it
                    await connection.close()
            except TimeoutError:
                logger.warning("%s did not answer the connection close within %gs; dropped it",
                               self.url, self.connect_timeout)  # fmt: skip


_EQUIVALENCE_KEYS: Final = 14  # RabbitMQ compares about this many arguments on a re-declare


def _typed_current(text: str, kind: str | None) -> object:
    """A value RabbitMQ quoted in a 406, as the Python value that declares it again alike."""
    if kind in _INTEGER_TYPES or (kind is None and text.lstrip("-").isdigit()):
        return int(text)
    if kind == "bool" or (kind is None and text in ("true", "false")):
        return text == "true"
    if kind in ("double", "float"):
        return float(text)
    return text


def _declare_error(
    name: str, durable: bool, arguments: dict[str, Any] | None, exists: bool, exc: Exception
) -> ConfigurationError:
    """RabbitMQ's 406 on a declare, naming the argument it refused (its reply text says which)."""
    reply = str(exc.args[0] if exc.args else exc)
    found = _REFUSED_ARG.search(reply)
    argument = found.group(1) if found else None
    if exists and (argument is None or "inequivalent" in reply):
        return ConfigurationError(
            f"queue {name!r} already exists with different arguments than {arguments or {}!r} "
            f"(durable={durable}): {reply}"
        )
    named = f"argument {argument!r}" if argument else "the arguments"
    return ConfigurationError(f"RabbitMQ refused {named} of queue {name!r} ({arguments or {}!r}): {reply}")
