"""A strict sliding-window rate limiter and the window counters behind the statistics.

Windows are half-open, ``(t - width, t]``: an event at exactly ``t - width`` has left the window.
The busiest window always ends at an event, so a running maximum updated on each event is the
exact maximum over every window, at O(1) amortised cost.
"""

from __future__ import annotations

from collections import deque


class SlidingWindow:
    """Counts events in the trailing window and remembers the busiest window seen."""

    __slots__ = ("_events", "max", "width")

    def __init__(self, width: float = 1.0) -> None:
        self.width = width
        self._events: deque[float] = deque()
        self.max = 0

    def _expire(self, now: float) -> None:
        events = self._events
        horizon = now - self.width
        while events and events[0] <= horizon:
            events.popleft()

    def count(self, now: float) -> int:
        """How many events fall in the window ending at ``now``."""
        self._expire(now)
        return len(self._events)

    def add(self, now: float) -> int:
        """Record an event at ``now``; returns the count in the window ending at it."""
        self._expire(now)
        self._events.append(now)
        count = len(self._events)
        if count > self.max:
            self.max = count
        return count

    def reset_max(self) -> None:
        """Forget the busiest window; the events themselves are kept."""
        self.max = 0


class SlidingWindowLimiter:
    """Accepts at most ``limit`` events in any window of ``width`` seconds (0 = unlimited).

    Rejected events do not count against the budget. ``window`` holds the accepted events, so
    ``window.max`` is the most ever accepted in one window, whether or not a limit is set.
    """

    __slots__ = ("limit", "window")

    def __init__(self, limit: int, window: SlidingWindow | None = None) -> None:
        self.limit = limit
        self.window = window if window is not None else SlidingWindow()

    def try_acquire(self, now: float) -> bool:
        """Accept and record the event at ``now`` if the window has room."""
        if self.limit and self.window.count(now) >= self.limit:
            return False
        self.window.add(now)
        return True
