"""Option checks for processor constructors (swarrow's and yours): fail early, naming the bad value."""

from __future__ import annotations

import math

__all__ = ["require_int", "require_positive", "require_seconds"]


def require_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Return `value` if it is an int (not a bool) >= `minimum`; raise ValueError naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def require_positive(name: str, value: object, *, unit: str, allow_zero: bool = False) -> float:
    """Return `value` as a float if finite and > 0 (or >= 0); raise ValueError naming it and its unit."""
    bound = ">= 0" if allow_zero else "> 0"
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        raise ValueError(f"{name} must be a finite number of {unit} {bound}, got {value!r}")
    return float(value)


def require_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """`require_positive` in seconds."""
    return require_positive(name, value, unit="seconds", allow_zero=allow_zero)
