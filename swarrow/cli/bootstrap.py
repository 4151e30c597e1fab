"""What every command does around its work: logging, the event loop, a connected broker, the final exit."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
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
    "exit_now_if_threads_hang",
    "run_anyio",
    "worker_threads",
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


def worker_threads() -> frozenset[threading.Thread]:
    """The AnyIO worker threads alive now: pass them to `exit_now_if_threads_hang` as not this run's."""
    return frozenset(t for t in threading.enumerate() if t.name == "AnyIO worker thread")


def exit_now_if_threads_hang(
    code: int,
    *,
    before: frozenset[threading.Thread] = frozenset(),
    last_words: Callable[[], None] | None = None,
) -> None:
    """Exit without joining callback threads abandoned by a time limit or a stop: they may never return.

    Only this run's threads count (not those in `before`): a thread of another event loop in the
    process (a test runner's) is not a hung callback of this consumer. The threads share one short
    deadline (joined one by one, a hundred hung threads took 50 s), and SIGINT / SIGTERM are ignored
    meanwhile: a second Ctrl-C there raised into the check and left the process waiting for the
    threads for ever. `last_words` runs before the exit when threads hang (an error still to print).
    """
    workers = [t for t in worker_threads() if t not in before]
    if not workers:
        return
    previous = _ignore_stop_signals()
    try:
        deadline = time.monotonic() + _HUNG_THREAD_WAIT
        for thread in workers:  # idle ones are being told to exit; a busy one is what we look for
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        hung = [t for t in workers if t.is_alive()]
        if hung:
            logger.warning(
                "%d sync callback thread(s) still running after the stop; exiting without them", len(hung)
            )
            if last_words is not None:
                last_words()
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    finally:
        _restore_signals(previous)


_HUNG_THREAD_WAIT = 0.5  # seconds, for all of a run's worker threads together
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore_stop_signals() -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers (a test calling from a thread)
    return {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


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
