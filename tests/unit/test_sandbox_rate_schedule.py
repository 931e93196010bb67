"""Rate-limit schedules and the read window, driven by an explicit clock (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.sandbox import SandboxConfig
from worker.sandbox.config import ConfigError
from worker.sandbox.ratelimit import RateLimits, RateSchedule, ScheduledLimiter

# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "steps"),
    [
        ("0:37", ((0.0, 37),)),
        ("0:37,20:12,40:37", ((0.0, 37), (20.0, 12), (40.0, 37))),
        (" 0 : 5 , 1 : 2 ", ((0.0, 5), (1.0, 2))),
        ("0:0,0.25:3", ((0.0, 0), (0.25, 3))),
        ("0.0:4,1e1:1", ((0.0, 4), (10.0, 1))),
    ],
)
def test_parse_good_specs(spec: str, steps: tuple[tuple[float, int], ...]) -> None:
    schedule = RateSchedule.parse(spec)
    assert schedule.steps == steps
    assert RateSchedule.parse(str(schedule)) == schedule


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "is empty"),
        (" , ", "is empty"),
        ("37", "entry '37' is not SECONDS:LIMIT"),
        ("0:5,", "entry '' is not SECONDS:LIMIT"),
        ("0:5;1:2", "entry '0:5;1:2': limit '5;1:2' is not an integer"),
        ("x:5", "'x' is not a number"),
        ("0:five", "limit 'five' is not an integer"),
        ("0:1.5", "limit '1.5' is not an integer"),
        ("0:-1", "entry '0:-1': limit must be an integer >= 0"),
        ("0:5,-1:2", "entry '-1:2': time must be a finite number of seconds >= 0"),
        ("0:5,inf:2", "entry 'inf:2': time must be a finite number"),
        ("0:5,nan:2", "entry 'nan:2': time must be a finite number"),
        ("5:3", "the first entry must be at 0 seconds, not '5:3'"),
        ("0:3,0:4", "strictly increasing: '0:4' comes after '0:3'"),
        ("0:3,20:1,10:5", "strictly increasing: '10:5' comes after '20:1'"),
    ],
)
def test_parse_bad_specs_name_the_problem(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")) as caught:
        RateSchedule.parse(spec)
    assert problem in str(caught.value)


def test_schedule_lookup() -> None:
    schedule = RateSchedule.parse("0:37,20:12,40.5:37")
    assert [schedule.limit_at(t) for t in (0, 19.99, 20, 40.49, 40.5, 1e9)] == [
        37,
        37,
        12,
        12,
        37,
        37,
    ]
    assert str(schedule) == "0:37,20:12,40.5:37"
    assert RateSchedule.constant(9).steps == ((0.0, 9),)


def test_config_schedules() -> None:
    assert SandboxConfig(rate_limit=7).main_schedule == RateSchedule.constant(7)
    assert SandboxConfig().read_schedule is None
    scheduled = SandboxConfig(
        rate_limit=7, rate_limit_schedule=RateSchedule.parse("0:1,5:2"), read_rate_limit=3
    )
    assert scheduled.main_schedule == RateSchedule.parse("0:1,5:2")
    assert scheduled.read_schedule == RateSchedule.constant(3)
    both = SandboxConfig(read_rate_limit=3, read_rate_limit_schedule=RateSchedule.parse("0:4"))
    assert both.read_schedule == RateSchedule.constant(4)
    with pytest.raises(ConfigError):
        SandboxConfig(read_rate_limit=-1)
    with pytest.raises(ConfigError):
        SandboxConfig(rate_limit_schedule="0:5")  # type: ignore[arg-type]


# --- a limiter following its schedule --------------------------------------------------------


def test_limiter_follows_the_schedule_on_an_injected_clock() -> None:
    start = 1000.0
    limiter = ScheduledLimiter(RateSchedule.parse("0:5,1:2,3:0,4:1"), start)
    clock = start
    accepted = [limiter.try_acquire(clock + i * 0.01) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert limiter.limit_at(start + 0.999) == 5
    # The limit drops to 2 at +1; the window still holds the five from +0.00..+0.04.
    assert limiter.limit_at(start + 1.0) == 2
    assert not limiter.try_acquire(start + 1.02)
    clock = start + 1.5
    assert [limiter.try_acquire(clock + i * 0.01) for i in range(4)] == [True, True, False, False]
    # 0 = unlimited from +3.
    assert all(limiter.try_acquire(start + 3.0 + i * 0.001) for i in range(50))
    assert limiter.window.max == 50
    # Back to 1 at +4: the unlimited burst is still in the window until +4.05.
    assert not limiter.try_acquire(start + 4.0)
    assert limiter.try_acquire(start + 4.1)
    assert not limiter.try_acquire(start + 4.2)


def test_limiter_skips_several_steps_and_survives_a_clock_going_back() -> None:
    limiter = ScheduledLimiter(RateSchedule.parse("0:1,1:2,2:3,3:4"), 50.0)
    assert limiter.limit_at(53.5) == 4
    assert limiter.limit_at(51.5) == 2
    assert limiter.limit_at(49.0) == 1  # before the start: the first limit
    assert limiter.limit_at(52.0) == 3


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0.01, max_value=5.0), st.integers(0, 20)),
        min_size=0,
        max_size=6,
    ),
    first=st.integers(0, 20),
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.8), min_size=1, max_size=100),
)
def test_limiter_agrees_with_the_schedule_at_every_moment(
    steps: list[tuple[float, int]], first: int, gaps: list[float]
) -> None:
    at = 0.0
    table = [(0.0, first)]
    for gap, limit in steps:
        at += gap
        table.append((at, limit))
    schedule = RateSchedule(tuple(table))
    limiter = ScheduledLimiter(schedule, 10.0)
    now = 10.0
    for gap in gaps:
        now += gap
        assert limiter.limit_at(now) == schedule.limit_at(now - 10.0)


# --- reads and writes --------------------------------------------------------------------------


def test_reads_share_the_main_window_unless_limited_apart() -> None:
    shared = RateLimits(RateSchedule.constant(3), None, start=0.0)
    results = [shared.try_acquire(0.1 + i * 0.01, read=i % 2 == 0) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert shared.limits_at(0.5) == (3, None)
    assert shared.main.window is shared.accepted
    assert shared.accepted.max == 3


def test_reads_and_writes_have_separate_windows() -> None:
    limits = RateLimits(RateSchedule.constant(2), RateSchedule.constant(3), start=0.0)
    assert limits.limits_at(0.0) == (2, 3)
    writes = [limits.try_acquire(0.1 + i * 0.01, read=False) for i in range(4)]
    assert writes == [True, True, False, False]
    # The main window is full, yet reads have a budget of their own ...
    reads = [limits.try_acquire(0.2 + i * 0.01, read=True) for i in range(5)]
    assert reads == [True, True, True, False, False]
    # ... and spending it takes nothing from the writes once their second is over.
    assert limits.try_acquire(1.15, read=False)
    assert not limits.try_acquire(1.16, read=True)  # 0.2..0.22 are still in the read window
    assert limits.try_acquire(1.25, read=True)
    assert limits.main.window.max == 2
    assert limits.read is not None and limits.read.window.max == 3
    assert limits.accepted.max == 5  # every accepted request, for the statistics


def test_read_and_main_schedules_move_independently() -> None:
    limits = RateLimits(RateSchedule.parse("0:5,1:2"), RateSchedule.parse("0:1,2:4"), start=100.0)
    assert limits.limits_at(100.0) == (5, 1)
    assert limits.limits_at(101.0) == (2, 1)
    assert limits.limits_at(102.5) == (2, 4)
    reads = [limits.try_acquire(102.5 + i * 0.01, read=True) for i in range(6)]
    assert reads == [True] * 4 + [False] * 2
    assert limits.try_acquire(102.6, read=False)
    assert limits.try_acquire(102.61, read=False)
    assert not limits.try_acquire(102.62, read=False)
