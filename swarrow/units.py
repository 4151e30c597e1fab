"""Human units for flags and config files: `500ms`, `2h`, `256MiB`, `1G`, `1s,5s,30s`, `exp:1s..16m`.

Sizes are binary throughout: `M`, `MB` and `MiB` all mean 2**20 bytes, as in swarrot's and PHP's
`memory_limit`, so `--memory-limit 256MB` and `256MiB` never disagree. A bare number is MiB.
Durations: `ms`, `s`, `m`, `h`, `d`, combinable (`1h30m`); a bare number is seconds.
"""

from __future__ import annotations

import math
import re
from typing import Final

from swarrow.backoff import Backoff

__all__ = [
    "format_duration",
    "format_size",
    "parse_delays",
    "parse_duration",
    "parse_megabytes",
    "parse_size",
]

_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_TOKEN: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
_NUMBER: Final = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_SIZE: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_SIZE_POWERS: Final = {"": 2, "k": 1, "m": 2, "g": 3, "t": 4}  # a bare number is MiB
# Enough for any sane backoff; a typo like exp:1ms..1000d must not declare a thousand queues.
MAX_DELAYS: Final = 50


def parse_duration(text: str | float, *, allow_zero: bool = False) -> float:
    """Seconds from `500ms`, `30s`, `5m`, `2h`, `1d`, `1h30m` or a bare number of seconds."""
    if isinstance(text, bool):
        raise ValueError(f"expected a duration such as 30s, got {text!r}")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        raw = text.strip().lower().replace(" ", "")
        if _NUMBER.fullmatch(raw):
            seconds = float(raw)
        else:
            pos, seconds = 0, 0.0
            for match in _DURATION_TOKEN.finditer(raw):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                pos = match.end()
            if pos != len(raw) or not raw:
                raise ValueError(
                    f"invalid duration {text!r}: use a number with ms, s, m, h or d (500ms, 30s, 2h, 1h30m)"
                )
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"invalid duration {text!r}: must be {'>= 0' if allow_zero else '> 0'}")
    return seconds


def parse_size(text: str | float) -> int:
    """Bytes from `256MiB`, `256MB`, `256M`, `1G`, `1.5GiB`, `512K` (binary units) or a bare number of MiB."""
    if isinstance(text, bool):
        raise ValueError(f"expected a size such as 256MiB, got {text!r}")
    if isinstance(text, int | float):
        value, unit = float(text), ""
    else:
        match = _SIZE.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"invalid size {text!r}: use a number with K, M, G or T (256MiB, 1G, 512M)")
        value, unit = float(match.group(1)), match.group(2).lower()
    size: float = value * float(1024 ** _SIZE_POWERS[unit])
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"invalid size {text!r}: must be > 0")
    return math.ceil(size)


def parse_megabytes(text: str | float) -> float:
    """MiB from any size `parse_size` accepts (what `MemoryLimitProcessor(megabytes=...)` takes)."""
    return parse_size(text) / 2**20


def parse_delays(text: str | float | list[str | float] | tuple[str | float, ...]) -> tuple[float, ...]:
    """Retry delays in seconds from `1s,5s,30s`, a list of durations, or `exp:FIRST..CAP`.

    `exp:1s..16m` doubles from the first delay until the cap and ends on the cap:
    1, 2, 4 … 512, 960 seconds (11 retries).
    """
    if isinstance(text, list | tuple):
        delays = tuple(parse_duration(item) for item in text)
    elif isinstance(text, str) and text.strip().lower().startswith("exp:"):
        first_text, sep, cap_text = text.strip()[4:].partition("..")
        if not sep:
            raise ValueError(f"invalid delays {text!r}: write exp:FIRST..CAP, e.g. exp:1s..16m")
        first, cap = parse_duration(first_text), parse_duration(cap_text)
        if cap < first:
            raise ValueError(f"invalid delays {text!r}: the cap {cap_text!r} is below the first delay")
        backoff = Backoff(initial=first, maximum=cap)
        count = 1
        while backoff.delay(count) < cap and count <= MAX_DELAYS:
            count += 1
        delays = backoff.delays(count)
    elif isinstance(text, str):
        items = text.split(",")
        # `1s,,2s` is a typo, not two delays: silently skipping it would declare one retry queue too few.
        empty = [n for n, item in enumerate(items, start=1) if not item.strip()]
        if empty and text.strip():
            raise ValueError(
                f"invalid delays {text!r}: element {empty[0]} is empty (a doubled, leading or trailing comma)"
            )
        delays = tuple(parse_duration(item) for item in items if item.strip())
    else:
        delays = (parse_duration(text),)
    if not delays:
        raise ValueError(f"invalid delays {text!r}: give at least one, e.g. 1s,5s,30s")
    if len(delays) > MAX_DELAYS:
        raise ValueError(f"invalid delays {text!r}: {len(delays)} retry queues, at most {MAX_DELAYS}")
    for delay in delays:
        if round(delay * 1000) < 1:
            raise ValueError(f"invalid delays {text!r}: each delay must be at least 1ms")
    return delays


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 0.5 → `500ms`, 90 → `90s`, 960 → `16m`, 7200 → `2h`."""
    if seconds < 1 or seconds != int(seconds):
        ms = seconds * 1000
        return f"{ms:g}ms" if ms != int(ms) or seconds < 1 else f"{int(ms)}ms"
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def format_size(size: int) -> str:
    """Bytes spelled in the largest binary unit that divides them: 268435456 → `256MiB`."""
    for unit, power in (("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if size % 1024**power == 0:
            return f"{size // 1024**power}{unit}"
    return f"{size}B"
