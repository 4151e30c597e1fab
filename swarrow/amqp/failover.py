"""Several broker nodes behind one robust connection: try them in turn, move on when one dies.

Why a robust connection whose URL is swapped, not a reconnect loop of our own: aio-pika's
`RobustConnection` takes one URL (its multi-host request has been open for years), but everything
else it does is what a failover needs — it reopens every robust channel with its QoS, fires the
`reopen_callbacks` our providers consume again from, and resets nothing we have not asked for. A
loop of our own around plain connections would re-implement all of that. What the robust
connection lacks is a choice of node, and it reads `self.url` afresh on every connection attempt,
and calls `_on_connection_close` both when a connection drops and when an attempt fails (aio-pika
>= 9.1, `UnderlayConnection.connect`). `FailoverConnection` overrides that one hook to point `url` at
the next node: the first reconnect after a drop goes to the next node at once, a refused node costs
`node_pause`, a whole round of refusals `reconnect_interval`. `test_failover_connection.py` proves
the hook still fires with the installed aio-pika (a silent fallback would pin a worker to a dead node).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import aio_pika
import aiormq
from aio_pika.connection import make_url

from swarrow.amqp._errors import describe_connect_error
from swarrow.errors import BrokerUnavailableError
from swarrow.urls import BrokerNode, BrokerURL

__all__ = ["FailoverConnection", "connect_first"]

logger = logging.getLogger(__name__)

# Seconds `connect_first` waits for the close of a connection that never opened.
CLOSE_NEVER_OPENED = 1.0
# What a node that is down, refusing or too slow raises on connect.
CONNECT_ERRORS = (TimeoutError, asyncio.TimeoutError, OSError, aiormq.exceptions.AMQPError)


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection over the nodes of `broker_url`, starting at node `start`.

    `failovers` counts connections re-established after a loss (to the same node or another);
    `node` is the node of the current (or next) attempt.
    """

    def __init__(
        self,
        broker_url: BrokerURL,
        start: int,
        *,
        node_pause: float = 0.1,
        **kwargs: Any,
    ) -> None:
        self.broker_url = broker_url
        self._index = start % len(broker_url.nodes)
        self._tried_in_round = 0
        self._node_pause = node_pause
        self._lost_at: float | None = None
        self._was_up = False  # before the first connection, `connect_first` reports refusals itself
        self.failovers = 0
        super().__init__(make_url(broker_url.node_url(broker_url.nodes[self._index])), **kwargs)
        self._round_pause = float(self.reconnect_interval)

    @property
    def node(self) -> BrokerNode:
        """The node connected to (or tried next)."""
        return self.broker_url.nodes[self._index]

    def _advance(self) -> None:
        nodes = self.broker_url.nodes
        self._index = (self._index + 1) % len(nodes)
        self._tried_in_round += 1
        self.url = make_url(self.broker_url.node_url(nodes[self._index]))
        # Read by the robust connection's loop before its next attempt: a short pause between the
        # nodes of one round, the full interval once every node refused.
        if self._tried_in_round >= len(nodes):
            self._tried_in_round = 0
            self.reconnect_interval = self._round_pause
        else:
            self.reconnect_interval = self._node_pause

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        was_connected = self.connected.is_set()
        await super()._on_connection_close(closing)
        if self._close_called or self.is_closed:
            return
        # No await from here on: the robust loop's next attempt reads `url` and `reconnect_interval`.
        left = self.broker_url.masked_node(self.node)
        if was_connected:
            self._lost_at = time.monotonic()
            self._tried_in_round = 0
        self._advance()
        if self._was_up and len(self.broker_url.nodes) > 1:
            logger.warning(
                "%s %s; trying %s next",
                "lost the connection to" if was_connected else "cannot connect to",
                left,
                self.broker_url.masked_node(self.node),
            )

    async def _on_connected(self) -> None:
        await super()._on_connected()
        self._was_up = True
        self._tried_in_round = 0
        self.reconnect_interval = self._round_pause
        lost_at, self._lost_at = self._lost_at, None
        where = self.broker_url.masked_node(self.node)
        if lost_at is None:
            logger.info("connected to %s", where)
            return
        self.failovers += 1
        logger.warning(
            "connected to %s %.1f s after the connection was lost (failover %d)",
            where,
            time.monotonic() - lost_at,
            self.failovers,
        )


async def connect_first(
    broker_url: BrokerURL,
    *,
    node_timeout: float,
    reconnect_interval: float,
    shuffle: bool = True,
    **kwargs: Any,
) -> FailoverConnection:
    """Connect to the first node that accepts, trying each once from a random one (or the first).

    `BrokerUnavailableError` naming every node (password masked) only when all of them refuse.
    """
    nodes = broker_url.nodes
    start = random.randrange(len(nodes)) if shuffle else 0
    errors: list[str] = []
    for k in range(len(nodes)):
        index = (start + k) % len(nodes)
        connection = FailoverConnection(broker_url, index, reconnect_interval=reconnect_interval, **kwargs)
        try:
            await connection.connect(timeout=node_timeout)
        except BaseException as exc:
            # Closed on every failure, a cancellation (a stop, Ctrl-C) included: aio-pika's robust
            # connection tries in a task of its own, which would otherwise reconnect forever.
            await _close_quietly(connection)
            if not isinstance(exc, CONNECT_ERRORS):
                raise
            detail = describe_connect_error(exc, broker_url.node_url(nodes[index]))
            errors.append(f"{nodes[index].authority}: {detail}")
            if len(nodes) > 1:
                logger.warning("cannot connect to %s: %s", broker_url.masked_node(nodes[index]), detail)
            continue
        return connection
    if len(nodes) == 1:
        raise BrokerUnavailableError(f"cannot connect to {broker_url.masked}: {errors[0].split(': ', 1)[1]}")
    raise BrokerUnavailableError(
        f"cannot connect to any of the {len(nodes)} nodes of {broker_url.masked}: " + "; ".join(errors)
    )


async def _close_quietly(connection: FailoverConnection) -> None:
    """Close a connection that never opened, even from a cancelled task (its reconnect task goes)."""
    closing = asyncio.ensure_future(connection.close())
    try:
        await asyncio.wait_for(asyncio.shield(closing), CLOSE_NEVER_OPENED)
    except BaseException:  # cancelled again or timed out: the close goes on by itself
        closing.add_done_callback(_ignore_result)


def _ignore_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
