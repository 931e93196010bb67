"""The strict sliding-window limiter and window counters, driven by an explicit clock."""

from __future__ import annotations

from bisect import bisect_right

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.sandbox.ratelimit import SlidingWindow, SlidingWindowLimiter


def busiest_window(times: list[float], width: float = 1.0) -> int:
    """Brute force: the most events in any half-open window (t - width, t]."""
    ordered = sorted(times)
    return max((i + 1 - bisect_right(ordered, t - width) for i, t in enumerate(ordered)), default=0)


def test_accepts_up_to_the_limit_then_rejects() -> None:
    limiter = SlidingWindowLimiter(3)
    assert [limiter.try_acquire(10.0 + i * 0.01) for i in range(5)] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_window_is_half_open() -> None:
    limiter = SlidingWindowLimiter(1)
    assert limiter.try_acquire(5.0)
    assert not limiter.try_acquire(5.999)
    assert limiter.try_acquire(6.0)


def test_rejected_requests_do_not_consume_the_budget() -> None:
    limiter = SlidingWindowLimiter(2)
    assert limiter.try_acquire(0.0)
    assert limiter.try_acquire(0.5)
    assert not any(limiter.try_acquire(0.6 + i * 0.01) for i in range(30))
    assert limiter.try_acquire(1.0)
    assert limiter.try_acquire(1.5)
    assert limiter.window.max == 2


def test_zero_means_unlimited_but_still_measured() -> None:
    limiter = SlidingWindowLimiter(0)
    assert all(limiter.try_acquire(i * 0.001) for i in range(500))
    assert limiter.window.max == 500


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.4), min_size=1, max_size=300),
)
def test_never_more_than_the_limit_in_any_window(limit: int, gaps: list[float]) -> None:
    limiter = SlidingWindowLimiter(limit)
    now = 100.0
    accepted: list[float] = []
    for gap in gaps:
        now += gap
        if limiter.try_acquire(now):
            accepted.append(now)
    assert busiest_window(accepted) <= limit
    assert limiter.window.max == busiest_window(accepted)


@settings(max_examples=100, deadline=None)
@given(gaps=st.lists(st.floats(min_value=0.0, max_value=0.7), min_size=1, max_size=200))
def test_running_max_equals_the_busiest_window(gaps: list[float]) -> None:
    window = SlidingWindow()
    now = 0.0
    times = []
    for gap in gaps:
        now += gap
        times.append(now)
        window.add(now)
    assert window.max == busiest_window(times)


def test_count_expires_old_events_and_reset_keeps_them() -> None:
    window = SlidingWindow()
    for t in (0.0, 0.2, 0.4):
        window.add(t)
    assert window.count(0.5) == 3
    assert window.count(1.3) == 1
    window.reset_max()
    assert window.max == 0
    assert window.add(1.35) == 2
    assert window.max == 2
