"""How a command fails: `CliError` (an `Error: ...` line and an exit code), and exceptions mapped to it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import IO, Any, NoReturn

import click

from swarrow.errors import BrokerUnavailableError, ConfigurationError
from swarrow.exits import EXIT_BROKER, EXIT_CRASH, EXIT_USAGE
from swarrow.urls import mask_text

__all__ = ["CliError", "fail"]

logger = logging.getLogger("swarrow.cli")


class CliError(click.ClickException):
    """A user-facing failure: printed as `Error: message`, exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class only

    def show(self, file: IO[Any] | None = None) -> None:
        """Print `Error: …` after the log lines still held (`BatchingStreamHandler`): they came first."""
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        super().show(file)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def fail(exc: BaseException, *, crashed: str = "the consumer crashed") -> NoReturn:
    """Turn an exception from a run into the exit code and one-line message of its class.

    `crashed` starts the message of anything else (exit 1): what the command was doing.
    """
    leaves = list(_leaves(exc))
    for leaf in leaves:
        if isinstance(leaf, click.ClickException):
            raise leaf from None
    # mask_text: a library's error may quote a URL with its password, whatever swarrow masked itself.
    for kind, code in ((BrokerUnavailableError, EXIT_BROKER), (ConfigurationError, EXIT_USAGE)):
        for leaf in leaves:
            if isinstance(leaf, kind):
                raise CliError(mask_text(str(leaf)), code) from None
    first = leaves[0] if leaves else exc
    logger.debug(crashed, exc_info=first)
    raise CliError(mask_text(f"{crashed}: {type(first).__name__}: {first}"), EXIT_CRASH) from None
