"""Ticket estimates as the seed wrote them, read as seconds."""

from __future__ import annotations

import pytest

from sage_tasks.core.estimate import format_duration, parse_estimate

READABLE = [
    ("30 minutes", 1800),
    ("1 hour", 3600),
    ("2h", 7200),
    ("45m", 2700),
    ("1.5 hours", 5400),
    ("20 min", 1200),
    ("5 minutes", 300),
    ("~4.5 hours", 16200),
    ("1h 30m", 5400),
    ("1 hour, 15 minutes", 4500),
    ("90s", 90),
    ("2 days", 172800),
    (" 10 MINUTES ", 600),
    ("90", 90),
    (90, 90),
    (12.5, 12.5),
    (0, 0),
]


@pytest.mark.parametrize(("text", "seconds"), READABLE)
def test_an_estimate_reads_as_seconds(text: object, seconds: float) -> None:
    assert parse_estimate(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "soon", "3 fortnights", "h", "1 2", "-5m", "1e3", True, None, [1], -1, "5 m x"]
)
def test_an_unreadable_estimate_is_a_value_error(text: object) -> None:
    with pytest.raises(ValueError, match="not an estimate"):
        parse_estimate(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (45, "45s"),
        (1800, "30m"),
        (1830, "30m 30s"),
        (16200, "4h 30m"),
        (7200, "2h"),
        (97200, "1d 3h"),
    ],
)
def test_durations_print_short(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "0.0s"), (4.24, "4.2s"), (59.9, "59.9s"), (185, "3m 5s"), (3720, "1h 2m")],
)
def test_durations_with_tenths_keep_a_tenth_under_a_minute_only(seconds: float, text: str) -> None:
    assert format_duration(seconds, tenths=True) == text
