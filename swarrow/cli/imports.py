"""Importing the user's `module:callable`, with an exit code and a message saying what failed."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from swarrow.callback import check_callback
from swarrow.cli.errors import CliError
from swarrow.exits import EXIT_IMPORT, EXIT_USAGE

__all__ = ["import_callable", "import_object"]


def import_callable(spec: str) -> Callable[..., Any]:
    """Import `module:attr` (attr may be dotted) from the working directory first, like uvicorn.

    Raises CliError with exit code 3 saying which module or attribute failed and why, or that the
    callable cannot take one message.
    """
    obj = import_object(spec)
    try:
        check_callback(obj)  # `def f(a, b)` would fail every message: say so now, once
    except TypeError as exc:
        raise CliError(f"{spec!r}: {exc}", EXIT_IMPORT) from None
    return obj


def import_object(spec: str, *, example: str = "myapp.handlers:handle") -> Callable[..., Any]:
    """Import the callable `module:attr` names (exit 3 when it cannot be), without checking its signature."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"expected module:callable (e.g. {example}), got {spec!r}", EXIT_USAGE)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    prefix = f"cannot import {spec!r}"
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CliError(f"{prefix}: module {exc.name!r} not found", EXIT_IMPORT) from None
        raise CliError(f"{prefix}: {type(exc).__name__}: {exc}", EXIT_IMPORT) from None
    except Exception as exc:
        raise CliError(f"{prefix}: {type(exc).__name__} while importing: {exc}", EXIT_IMPORT) from None
    owner = module_name
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"{prefix}: module {owner!r} has no attribute {part!r}", EXIT_IMPORT) from None
        owner = f"{owner}.{part}" if owner != module_name else f"{module_name}:{part}"
    if not callable(obj):
        raise CliError(f"{prefix}: {attr!r} is a {type(obj).__name__}, not a callable", EXIT_IMPORT)
    return obj  # type: ignore[no-any-return]
