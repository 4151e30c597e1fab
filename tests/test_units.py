from __future__ import annotations

import pytest

from swarrow.units import (
    format_duration,
    format_size,
    parse_delays,
    parse_duration,
    parse_megabytes,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1s", 1.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("  2H ", 7200.0),
        ("45", 45.0),
        (12, 12.0),
        (0.25, 0.25),
    ],
)
def test_parses_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "1s2", "-1s", "ms5", "1 day", "nan"])
def test_rejects_bad_durations_naming_the_value(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_zero_duration_only_when_allowed() -> None:
    with pytest.raises(ValueError, match="> 0"):
        parse_duration("0s")
    assert parse_duration("0s", allow_zero=True) == 0.0


def test_rejects_bool_as_duration() -> None:
    with pytest.raises(ValueError):
        parse_duration(True)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256MiB", 256 * 2**20),
        ("256MB", 256 * 2**20),
        ("256M", 256 * 2**20),
        ("1G", 2**30),
        ("1GiB", 2**30),
        ("1.5g", int(1.5 * 2**30)),
        ("512K", 512 * 1024),
        ("100", 100 * 2**20),
        (64, 64 * 2**20),
    ],
)
def test_parses_binary_sizes_and_bare_mib(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "12XB", "-1G", "0", "1 2M"])
def test_rejects_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_megabytes_for_the_memory_limit_processor() -> None:
    assert parse_megabytes("1G") == 1024.0
    assert parse_megabytes("512K") == 0.5


def test_parses_delay_lists() -> None:
    assert parse_delays("1s,5s,30s") == (1.0, 5.0, 30.0)
    assert parse_delays("500ms, 2m") == (0.5, 120.0)
    assert parse_delays(["1s", 5, "1m"]) == (1.0, 5.0, 60.0)
    assert parse_delays(7) == (7.0,)


def test_exponential_delays_double_until_the_cap_and_end_on_it() -> None:
    delays = parse_delays("exp:1s..16m")
    assert delays == tuple(float(d) for d in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 960))
    assert parse_delays("exp:1s..8s") == (1.0, 2.0, 4.0, 8.0)
    assert parse_delays("exp:2s..2s") == (2.0,)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("exp:1s", "exp:FIRST..CAP"),
        ("exp:10s..1s", "below the first delay"),
        ("1s,x", "invalid"),
        (",", "element 1 is empty"),
        ("", "at least one"),
        ("1s,,2s", "element 2 is empty"),
        ("1s,2s,", "element 3 is empty"),
        (",1s", "element 1 is empty"),
        ("0.0001s", "at least 1ms"),
        (",".join(["1s"] * 51), "at most"),
    ],
)
def test_rejects_bad_delays(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_delays(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (1.0, "1s"), (90.0, "90s"), (960.0, "16m"), (7200.0, "2h"), (1.5, "1500ms")],
)
def test_formats_durations_exactly(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_formats_sizes_in_the_largest_exact_unit() -> None:
    assert format_size(256 * 2**20) == "256MiB"
    assert format_size(2**30) == "1GiB"
    assert format_size(1000) == "1000B"
