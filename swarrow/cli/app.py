"""The `swarrow` command group and the console script's `main`."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from swarrow import __version__
from swarrow.cli import bootstrap

__all__ = ["cli", "main"]

# -- the commands ------------------------------------------------------------------------------------------


class _InOrder(click.Group):
    """Lists commands in the order they are registered (consume first), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(
    cls=_InOrder,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog="\b\nEach command's --help lists its options, examples and exit status (0 success, 2 usage,\n"
    "3 cannot import the callable, 4 broker unreachable or credentials refused).",
)
@click.version_option(__version__, "-V", "--version", prog_name="swarrow")
def cli() -> None:
    """Consume RabbitMQ messages through a stack of processors (declare queues, publish test messages)."""


def main(argv: Sequence[str] | None = None) -> None:
    """The `swarrow` console script."""
    _reserve_standard_descriptors()
    cli.main(args=list(argv) if argv is not None else None, prog_name="swarrow")


def _reserve_standard_descriptors() -> None:
    """Point a closed stdin, stdout or stderr (`2>&-`) at /dev/null.

    Why: with descriptor 2 closed, Python's `sys.stderr` is None (the CLI aborted, exit 134), and the
    first descriptor the worker opened took number 2 — the pool supervisor's epoll did, and its log
    lines went there: it never exited. Now the missing stream is a sink and keeps its number.
    """
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            if fd == 0:
                bootstrap.stdin_was_closed = True  # `publish -` must not read it as an empty body
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, encoding="utf-8", closefd=False))  # noqa: SIM115
