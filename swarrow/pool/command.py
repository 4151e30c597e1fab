"""The argv of a worker process: this interpreter running `swarrow consume`, minus the pool's own flags."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

__all__ = ["default_command", "strip_options"]


def strip_options(args: Sequence[str], options: Mapping[str, bool]) -> list[str]:
    """`args` without the given long options; `options` maps each name to whether it takes a value.

    Handles `--opt value` and `--opt=value`; stops at `--` (what follows is not an option).
    """
    kept: list[str] = []
    items = iter(args)
    for arg in items:
        if arg == "--":
            kept.append(arg)
            kept.extend(items)
            break
        name, eq, _ = arg.partition("=")
        if name in options:
            if options[name] and not eq:
                next(items, None)
            continue
        kept.append(arg)
    return kept


def default_command(args: Sequence[str]) -> list[str]:
    """The argv of one worker: this interpreter running `swarrow consume` with `args`."""
    return [sys.executable, "-m", "swarrow", "consume", *args]
