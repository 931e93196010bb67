"""Durations as operators write them: ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (pure)."""

from __future__ import annotations

import re
from datetime import timedelta

UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
MAX_AGE = timedelta(days=36_500)
_DURATION = re.compile(r"\s*(?P<number>[+-]?\d+(?:\.\d*)?)?\s*(?P<unit>[^\d\s.+-]*)\s*")


def parse_duration(text: str) -> timedelta:
    """Pure: ``30d``, ``12h``, ``90m``, ``45s`` or ``2w`` as a timedelta.

    A whole number greater than zero and one unit; anything else is a :class:`ValueError`
    whose message says what is wrong with it.
    """
    shown = repr(text.strip())
    match = _DURATION.fullmatch(text)
    if not text.strip():
        raise ValueError("is empty; give a number and a unit, e.g. 30d")
    if match is None:
        raise ValueError(f"{shown} is not a duration; give a number and a unit, e.g. 30d")
    number, unit = match["number"], match["unit"]
    if number is None:
        raise ValueError(f"{shown} has no number; give one before the unit, e.g. 30d")
    if not unit:
        raise ValueError(f"{shown} has no unit; use s, m, h, d or w, e.g. {number}d")
    if unit not in UNITS:
        raise ValueError(
            f"{shown}: unknown unit {unit!r}; use s, m, h, d or w (months are not a fixed "
            "length: say 30d)"
        )
    if not number.lstrip("+-").isdigit():
        raise ValueError(f"{shown} is not a whole number of {unit}")
    value = int(number)
    if value <= 0:
        raise ValueError(f"{shown} must be greater than zero")
    if value * UNITS[unit] > MAX_AGE.total_seconds():
        raise ValueError(f"{shown} is longer than {MAX_AGE.days} days")
    return timedelta(seconds=value * UNITS[unit])
