"""Kantata OX project status keys.

Keys are numeric and grouped by colour in hundreds: 1xx grey (not started), 2xx light green,
3xx green (in progress), 4xx yellow, 5xx red, 6xx blue (finished). Each account enables its own
subset; ``DEFAULT_STATUSES`` is the set the sandbox enables unless told otherwise.
"""

from __future__ import annotations

COLORS: dict[int, str] = {
    1: "grey",
    2: "light_green",
    3: "green",
    4: "yellow",
    5: "red",
    6: "blue",
}

DEFAULT_STATUSES: dict[int, str] = {
    100: "Not Started",
    110: "Estimate",
    120: "Prospect",
    200: "In Setup",
    210: "Okay to Start",
    300: "In Progress",
    310: "Active",
    320: "In Review",
    400: "On Hold",
    410: "At Risk",
    500: "Cancelled",
    501: "Cancelled",
    510: "Blocked",
    600: "Completed",
    610: "Closed",
}


def color_for(key: int) -> str | None:
    """The colour group of a status key, or None when the key is outside 100-699."""
    return COLORS.get(key // 100) if 100 <= key <= 699 else None
