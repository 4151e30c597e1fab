"""The `swarrow` command group and the console script's `main`."""

from __future__ import annotations

from collections.abc import Sequence

import click

from swarrow import __version__

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
    cli.main(args=list(argv) if argv is not None else None, prog_name="swarrow")
