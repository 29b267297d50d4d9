"""Ticket estimates: "30 minutes", "1 hour", "2h", "1.5 hours", "1h 30m", 90.

A bare number is seconds. Units are seconds, minutes, hours and days in
their usual spellings (``s sec secs second seconds``, ``m min mins minute
minutes``, ``h hr hrs hour hours``, ``d day days``); several amounts add up
("1 hour 30 minutes"), and a leading ``~`` (as the seed writes "~4.5 hours")
is allowed.
"""

from __future__ import annotations

import math
import re

_UNITS: dict[str, float] = {
    **dict.fromkeys(("", "s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
}
_AMOUNT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*,?")


def parse_estimate(value: object) -> float:
    """Seconds for an estimate; raises :class:`ValueError` when it cannot be read."""
    if isinstance(value, bool):
        raise ValueError(f"not an estimate: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"not an estimate: {value!r}")
        return seconds
    if not isinstance(value, str):
        raise ValueError(f"not an estimate: {value!r}")
    text = value.strip().lower().removeprefix("~").strip()
    total = 0.0
    pos = 0
    while pos < len(text):
        m = _AMOUNT.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"not an estimate: {value!r}")
        unit = _UNITS.get(m.group(2))
        if unit is None or (m.group(2) == "" and m.end() < len(text)):
            raise ValueError(f"not an estimate: {value!r}")
        total += float(m.group(1)) * unit
        pos = m.end()
    if pos == 0:
        raise ValueError(f"not an estimate: {value!r}")
    return total


def format_duration(seconds: float, *, tenths: bool = False) -> str:
    """A short human duration: ``45s``, ``30m``, ``4h 30m``, ``2d 3h``.

    With ``tenths``, under a minute keeps a tenth of a second (``4.2s``): what
    a run's report shows of tickets that take less than a second.
    """
    if tenths and seconds < 60:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes}m {s}s" if s else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"
