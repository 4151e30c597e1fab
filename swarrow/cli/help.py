"""Man-page help: options grouped into sections, the exit-status and environment epilogs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import click

from swarrow.exits import EXIT_CODES

__all__ = [
    "ENV_EPILOG",
    "EXIT_EPILOG",
    "RAW_ARGS",
    "SECTIONS",
    "GroupedOption",
    "ManCommand",
    "exit_epilog",
    "option",
]

T = TypeVar("T")

# -- man-page help: options grouped into sections -----------------------------------------------------------

SECTIONS: Final = ("General", "Connection", "Concurrency", "Limits", "Retry", "Observability", "Lifecycle")


class GroupedOption(click.Option):
    """An option that knows which help section it belongs to."""

    def __init__(self, *args: Any, section: str = "General", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


RAW_ARGS: Final = "swarrow.raw_args"


class ManCommand(click.Command):
    """A command whose `--help` lists options under section headings, man-page style."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Kept as typed: a `--workers` supervisor re-runs the same command line for each worker.
        ctx.meta[RAW_ARGS] = list(args)
        return super().parse_args(ctx, args)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            if isinstance(param, click.Argument):
                continue  # arguments are described in the command's help text
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "section", "General"), []).append(record)
        for name in sorted(sections, key=lambda s: SECTIONS.index(s) if s in SECTIONS else len(SECTIONS)):
            with formatter.section(name):
                formatter.write_dl(sections[name])


def option(*decls: str, section: str, **kwargs: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """`click.option` placed in a help `section`, with its default shown."""
    kwargs.setdefault("show_default", True)
    return click.option(*decls, cls=GroupedOption, section=section, **kwargs)


def exit_epilog(codes: Mapping[int, str]) -> str:
    """The `Exit status:` block of one command's --help (each command documents its own codes)."""
    return "\b\nExit status:\n" + "\n".join(f"  {code}  {text}" for code, text in codes.items())


EXIT_EPILOG = exit_epilog(EXIT_CODES)  # consume's
ENV_EPILOG = "\b\nEnvironment:\n  SWARROW_URL  broker URL used when --url is not given"
