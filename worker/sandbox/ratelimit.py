"""Strict sliding-window rate limiting, limits that change on a schedule, and the window
counters behind the statistics.

Windows are half-open, ``(t - width, t]``: an event at exactly ``t - width`` has left the window.
The busiest window always ends at an event, so a running maximum updated on each event is the
exact maximum over every window, at O(1) amortised cost.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass


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
    ``limit`` may be changed at any time; the next event is judged by the new one.
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


@dataclass(frozen=True, slots=True)
class RateSchedule:
    """Rate limits over time: ``(seconds since the sandbox started, limit from then on)``.

    The first step is at 0, times strictly increase and limits are integers >= 0 (0 =
    unlimited). Written as ``"0:37,20:12,40:37"`` (see :meth:`parse`).
    """

    steps: tuple[tuple[float, int], ...]

    def __post_init__(self) -> None:
        steps = tuple((float(at), limit) for at, limit in self.steps)
        if not steps:
            raise ValueError("a rate-limit schedule needs at least one step")
        for at, limit in steps:
            if not (math.isfinite(at) and at >= 0):
                raise ValueError(
                    f"entry {_entry(at, limit)!r}: time must be a finite number of seconds >= 0"
                )
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(f"entry {_entry(at, limit)!r}: limit must be an integer >= 0")
        if steps[0][0] != 0:
            raise ValueError(f"the first entry must be at 0 seconds, not {_entry(*steps[0])!r}")
        for before, after in itertools.pairwise(steps):
            if after[0] <= before[0]:
                raise ValueError(
                    f"times must be strictly increasing: {_entry(*after)!r} comes after"
                    f" {_entry(*before)!r}"
                )
        object.__setattr__(self, "steps", steps)

    @classmethod
    def constant(cls, limit: int) -> RateSchedule:
        """The same limit for ever."""
        return cls(((0.0, limit),))

    @classmethod
    def parse(cls, spec: str) -> RateSchedule:
        """Parse ``SECONDS:LIMIT[,SECONDS:LIMIT...]``, e.g. ``0:37,20:12,40:37``.

        Raises ``ValueError`` naming the offending entry.
        """
        entries = [entry.strip() for entry in spec.split(",")]
        if not any(entries):
            raise ValueError(f"{spec!r} is empty; expected SECONDS:LIMIT[,...], e.g. 0:37,20:12")
        steps: list[tuple[float, int]] = []
        for entry in entries:
            at_text, colon, limit_text = entry.partition(":")
            if not colon:
                raise ValueError(f"entry {entry!r} is not SECONDS:LIMIT")
            try:
                at = float(at_text)
            except ValueError:
                raise ValueError(f"entry {entry!r}: {at_text.strip()!r} is not a number") from None
            try:
                limit = int(limit_text)
            except ValueError:
                raise ValueError(
                    f"entry {entry!r}: limit {limit_text.strip()!r} is not an integer"
                ) from None
            steps.append((at, limit))
        return cls(tuple(steps))

    def limit_at(self, elapsed: float) -> int:
        """The limit in force ``elapsed`` seconds after the start."""
        index = bisect_right(self.steps, elapsed, key=_step_time) - 1
        return self.steps[max(index, 0)][1]

    def __str__(self) -> str:
        return ",".join(f"{_seconds(at)}:{limit}" for at, limit in self.steps)


def _step_time(step: tuple[float, int]) -> float:
    return step[0]


def _seconds(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and value.is_integer() else str(value)


def _entry(at: float, limit: object) -> str:
    return f"{_seconds(at)}:{limit}"


class ScheduledLimiter:
    """A :class:`SlidingWindowLimiter` whose limit follows a :class:`RateSchedule`.

    ``start`` is the clock reading the schedule's times count from. The window is not reset
    when the limit changes: a lower limit applies at once to the requests of the last second.
    With a clock that never runs backwards, following the schedule costs O(1) amortised.
    """

    __slots__ = ("_index", "_since", "_until", "limiter", "schedule", "start")

    def __init__(
        self, schedule: RateSchedule, start: float, window: SlidingWindow | None = None
    ) -> None:
        self.schedule = schedule
        self.start = start
        self.limiter = SlidingWindowLimiter(schedule.steps[0][1], window)
        self._index = 0
        self._since = -math.inf
        self._until = self._step_start(1)

    @property
    def window(self) -> SlidingWindow:
        """The accepted events."""
        return self.limiter.window

    def _step_start(self, index: int) -> float:
        """Seconds after ``start`` at which step ``index`` begins (the first: always in force)."""
        steps = self.schedule.steps
        if index >= len(steps):
            return math.inf
        return steps[index][0] if index else -math.inf

    def limit_at(self, now: float) -> int:
        """The limit in force at clock reading ``now``; it becomes the limiter's limit."""
        elapsed = now - self.start
        if self._since <= elapsed < self._until:
            return self.limiter.limit
        index = self._index
        if elapsed >= self._since:  # forward, one step at a time: O(1) amortised over a run
            while elapsed >= self._step_start(index + 1):
                index += 1
        else:  # the clock went back
            index = max(bisect_right(self.schedule.steps, elapsed, key=_step_time) - 1, 0)
        self._index = index
        self._since = self._step_start(index)
        self._until = self._step_start(index + 1)
        self.limiter.limit = self.schedule.steps[index][1]
        return self.limiter.limit

    def try_acquire(self, now: float) -> bool:
        """Accept and record the event at ``now`` if the window has room under its limit."""
        self.limit_at(now)
        return self.limiter.try_acquire(now)


class RateLimits:
    """The sandbox's limiters: one for every request, or writes and reads apart.

    Without a read schedule every request counts against ``main``. With one, reads (GET and
    HEAD) count only against ``read`` and everything else only against ``main``. ``accepted``
    (the statistics' window) sees every accepted request either way.
    """

    __slots__ = ("accepted", "main", "read")

    def __init__(
        self,
        main: RateSchedule,
        read: RateSchedule | None,
        start: float,
        accepted: SlidingWindow | None = None,
    ) -> None:
        self.accepted = accepted if accepted is not None else SlidingWindow()
        if read is None:
            self.main = ScheduledLimiter(main, start, self.accepted)
            self.read: ScheduledLimiter | None = None
        else:
            self.main = ScheduledLimiter(main, start)
            self.read = ScheduledLimiter(read, start)

    def limiter_for(self, *, read: bool) -> ScheduledLimiter:
        """The limiter a request counts against."""
        return self.read if read and self.read is not None else self.main

    def try_acquire(self, now: float, *, read: bool) -> bool:
        """Accept the request at ``now`` if its window has room; record it if accepted."""
        limiter = self.limiter_for(read=read)
        if not limiter.try_acquire(now):
            return False
        if limiter.window is not self.accepted:
            self.accepted.add(now)
        return True

    def limits_at(self, now: float) -> tuple[int, int | None]:
        """The main and read limits in force at ``now`` (read: None when reads share main)."""
        read = None if self.read is None else self.read.limit_at(now)
        return self.main.limit_at(now), read
