"""What every command does around its work: logging, the event loop, a connected broker."""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from typing import IO, Any, TypeVar

import anyio

from swarrow.broker import Broker
from swarrow.cli.errors import CliError
from swarrow.errors import ConfigurationError
from swarrow.exits import EXIT_USAGE
from swarrow.factory import open_broker
from swarrow.stop_signals import exiting_after_the_watch, ignore_stop_signals

__all__ = [
    "Connected",
    "configure_cli_logging",
    "connected",
    "read_body",
    "run_anyio",
    "then_ignore_stop_signals",
]

T = TypeVar("T")

logger = logging.getLogger("swarrow.cli")

#: Set by `swarrow.cli.app` when the process started with descriptor 0 closed (`<&-`); it is /dev/null since.
stdin_was_closed = False


def read_body(file: IO[bytes] | None) -> bytes:
    """The message body from `--file FILE` or, when `file` is None or `--file -`, from stdin.

    Why: a closed stdin reads as empty (the CLI points it at /dev/null), and publishing an empty body the
    caller never gave loses what they meant to send; an empty pipe (`printf '' |`) is still an empty body.
    """
    if file is None or _is_stdin(file):
        if stdin_was_closed:
            raise CliError(
                "cannot read the body from stdin: it is closed (give --body, --file or a pipe)", EXIT_USAGE
            )
        return sys.stdin.buffer.read() if file is None else file.read()
    return file.read()


def _is_stdin(file: IO[bytes]) -> bool:
    try:
        return file.fileno() == 0
    except (OSError, ValueError):  # an in-memory file has no descriptor
        return False


def configure_cli_logging(level: str, fmt: str) -> None:
    from swarrow.logs import configure_logging
    from swarrow.pool.status import pool_worker_env

    try:
        pool = pool_worker_env()
    except ValueError:
        pool = None  # reported where the pool settings are used
    configure_logging(level, "json" if fmt == "json" else "text", worker=None if pool is None else pool.slot)


def then_ignore_stop_signals(fn: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
    """`fn`, after which SIGINT and SIGTERM are ignored for the rest of the process: it is leaving.

    Why: once a consumer or a pool has ended (acks flushed, workers gone), the rest of the exit is
    bounded (connection closes within the connect timeout, the OTel flush within its budget), and a
    further Ctrl-C raised KeyboardInterrupt into the event loop's teardown (a traceback, exit 1 or
    130) while a further SIGTERM killed it (143) where it was exiting 0. Only from the main thread.
    """

    async def run_then_ignore() -> T:
        exiting_after_the_watch()  # and from the moment the consumer's or pool's signal watch ends
        try:
            return await fn()
        finally:
            ignore_stop_signals()  # also where no signal watch ran (signal handling off)

    return run_then_ignore


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
