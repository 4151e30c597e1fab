"""Callables for the first-day CLI tests (issue 23): `tests.first_day_callbacks:two_args` and friends."""

from __future__ import annotations

from typing import Any

from swarrow import Message

__all__ = ["ok", "two_args"]


def ok(message: Message) -> None:
    """Accept every message."""


def two_args(a: Any, b: Any) -> None:
    """Cannot take one message: refused at start."""
