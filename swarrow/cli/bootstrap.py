"""What every command does around its work: logging, the event loop, a connected broker."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio

from swarrow.broker import Broker
from swarrow.cli.errors import CliError
from swarrow.errors import ConfigurationError
from swarrow.exits import EXIT_USAGE
from swarrow.factory import open_broker

__all__ = [
    "Connected",
    "configure_cli_logging",
    "connected",
    "run_anyio",
]

logger = logging.getLogger("swarrow.cli")


def configure_cli_logging(level: str, fmt: str) -> None:
    from swarrow.logs import configure_logging
    from swarrow.pool.status import pool_worker_env

    try:
        pool = pool_worker_env()
    except ValueError:
        pool = None  # reported where the pool settings are used
    configure_logging(level, "json" if fmt == "json" else "text", worker=None if pool is None else pool.slot)


def run_anyio(fn: Callable[[], Any], *, use_uvloop: bool = True) -> Any:
    options: dict[str, Any] = {}
    if use_uvloop:
        try:
            import uvloop  # noqa: F401

            options["use_uvloop"] = True
        except ImportError:
            pass
    return anyio.run(fn, backend="asyncio", backend_options=options)


class Connected:
    """`async with connected(url) as broker`: connect (exit 4 if unreachable), always close."""

    def __init__(self, url: str) -> None:
        self.broker: Broker = open_broker(url)

    async def __aenter__(self) -> Broker:
        await self.broker.connect()
        return self.broker

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.broker.close()


def connected(url: str) -> Connected:
    try:
        return Connected(url)
    except ConfigurationError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
