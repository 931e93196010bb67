"""The rate limiter's pure state changes, and RateLimiter logic under a fake clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import ratelimit
from worker.ratelimit import (
    DEFAULT_PAUSE,
    HEADROOM,
    MIN_FRACTION,
    RECOVERY_PER_SECOND,
    RateLimiter,
    RateState,
    after_throttled,
    recovered,
)


@pytest.mark.parametrize(
    ("rate", "budget", "expected"),
    [
        pytest.param(10.0, 10.0, 5.0, id="halves"),
        pytest.param(5.0, 10.0, 2.5, id="halves-again"),
        pytest.param(1.0, 10.0, 0.5, id="floor-exact"),
        pytest.param(0.6, 10.0, 0.5, id="floor"),
        pytest.param(0.5, 10.0, 0.5, id="at-floor-stays"),
        pytest.param(100.0, 100.0, 50.0, id="large"),
    ],
)
def test_after_throttled(rate: float, budget: float, expected: float) -> None:
    state = after_throttled(RateState(rate, 1.0), budget, now=7.0)
    assert state == RateState(pytest.approx(expected), 7.0)


def test_repeated_throttling_reaches_floor() -> None:
    state = RateState(10.0, 0.0)
    for i in range(20):
        state = after_throttled(state, 10.0, float(i))
    assert state.rate == pytest.approx(10.0 * MIN_FRACTION)


@pytest.mark.parametrize(
    ("rate", "changed_at", "now", "expected_rate", "expected_changed_at"),
    [
        pytest.param(5.0, 0.0, 1.0, 6.0, 1.0, id="one-second"),
        pytest.param(5.0, 0.0, 2.5, 7.5, 2.5, id="linear"),
        pytest.param(5.0, 0.0, 5.0, 10.0, 5.0, id="reaches-budget"),
        pytest.param(5.0, 0.0, 100.0, 10.0, 100.0, id="capped-at-budget"),
        pytest.param(5.0, 3.0, 3.0, 5.0, 3.0, id="no-time-no-change"),
        pytest.param(5.0, 3.0, 2.0, 5.0, 3.0, id="clock-backwards-no-change"),
        pytest.param(10.0, 0.0, 50.0, 10.0, 0.0, id="at-budget-untouched"),
        pytest.param(12.0, 0.0, 50.0, 12.0, 0.0, id="above-budget-untouched"),
    ],
)
def test_recovered(
    rate: float, changed_at: float, now: float, expected_rate: float, expected_changed_at: float
) -> None:
    state = recovered(RateState(rate, changed_at), 10.0, now)
    assert state.rate == pytest.approx(expected_rate)
    assert state.changed_at == expected_changed_at


def test_recovery_in_steps_equals_recovery_at_once() -> None:
    stepwise = RateState(2.0, 0.0)
    for t in (0.5, 1.0, 1.7, 3.0):
        stepwise = recovered(stepwise, 10.0, t)
    at_once = recovered(RateState(2.0, 0.0), 10.0, 3.0)
    assert (
        stepwise.rate
        == pytest.approx(at_once.rate)
        == pytest.approx(2.0 + 3.0 * RECOVERY_PER_SECOND * 10)
    )


@settings(max_examples=200, deadline=None)
@given(
    budget=st.floats(0.1, 1000),
    events=st.lists(st.tuples(st.booleans(), st.floats(0, 5)), max_size=30),
)
def test_rate_stays_within_bounds(budget: float, events: list[tuple[bool, float]]) -> None:
    state, now = RateState(budget, 0.0), 0.0
    for throttled, dt in events:
        now += dt
        before = state.rate
        state = after_throttled(state, budget, now) if throttled else recovered(state, budget, now)
        assert budget * MIN_FRACTION - 1e-9 <= state.rate <= budget + 1e-9
        if throttled:
            assert state.rate <= before
        else:
            assert state.rate >= before


# --------------------------------------------------------------------------- RateLimiter


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_unlimited_budget() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0, clock=clock)
    assert limiter.rate == math.inf
    for _ in range(1000):
        assert await limiter.acquire() == 0.0
    limiter.on_throttled(5.0)
    assert limiter.rate == math.inf
    assert limiter.throttled == 1
    assert await limiter.acquire() == 0.0


async def test_budget_includes_headroom() -> None:
    limiter = RateLimiter(10, clock=FakeClock())
    assert limiter.budget == pytest.approx(10 * HEADROOM)
    assert limiter.rate == pytest.approx(10 * HEADROOM)
    assert RateLimiter(10, headroom=1.0, clock=FakeClock()).rate == 10.0


async def test_on_throttled_lowers_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(20, headroom=1.0, clock=clock)
    limiter.on_throttled(None)
    assert limiter.rate == pytest.approx(10.0)
    limiter.on_throttled(2.0)
    assert limiter.rate == pytest.approx(5.0)
    assert limiter.throttled == 2
    for _ in range(10):
        limiter.on_throttled(None)
    assert limiter.rate == pytest.approx(20 * MIN_FRACTION)


class FakeSleep:
    """Stands in for asyncio.sleep inside worker.ratelimit: records and advances the clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.now += seconds


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeClock, FakeSleep]:
    import asyncio
    import types

    clock = FakeClock()
    sleep = FakeSleep(clock)
    fake_asyncio = types.SimpleNamespace(sleep=sleep, Lock=asyncio.Lock)
    monkeypatch.setattr(ratelimit, "asyncio", fake_asyncio)
    return clock, sleep


async def test_acquire_paces_at_rate(fake_time: tuple[FakeClock, FakeSleep]) -> None:
    clock, sleep = fake_time
    limiter = RateLimiter(4, headroom=1.0, clock=clock)
    waits = [await limiter.acquire() for _ in range(4)]
    assert waits[0] == 0.0
    assert waits[1:] == [pytest.approx(0.25)] * 3
    assert sleep.calls == [pytest.approx(0.25)] * 3
    assert clock.now == pytest.approx(100.75)


async def test_acquire_after_idle_does_not_burst(fake_time: tuple[FakeClock, FakeSleep]) -> None:
    clock, sleep = fake_time
    limiter = RateLimiter(4, headroom=1.0, clock=clock)
    await limiter.acquire()
    clock.now += 10.0
    assert await limiter.acquire() == 0.0
    assert sleep.calls == []
    assert await limiter.acquire() == pytest.approx(0.25)
    assert sleep.calls == [pytest.approx(0.25)]


@pytest.mark.parametrize(
    ("retry_after", "pause"),
    [
        pytest.param(None, DEFAULT_PAUSE, id="default-pause"),
        pytest.param(3.0, 3.0, id="retry-after"),
    ],
)
async def test_throttled_pauses_then_recovers(
    fake_time: tuple[FakeClock, FakeSleep], retry_after: float | None, pause: float
) -> None:
    clock, sleep = fake_time
    limiter = RateLimiter(10, headroom=1.0, clock=clock)
    await limiter.acquire()
    limiter.on_throttled(retry_after)
    assert limiter.rate == pytest.approx(5.0)
    waited = await limiter.acquire()
    assert waited == pytest.approx(pause)
    assert sleep.calls == [pytest.approx(pause)]
    # Recovered linearly for the pause: 10% of the budget per second.
    assert limiter.rate == pytest.approx(min(10.0, 5.0 + 10 * RECOVERY_PER_SECOND * pause))


async def test_throttled_after_long_idle_recovers_fully(
    fake_time: tuple[FakeClock, FakeSleep],
) -> None:
    clock, sleep = fake_time
    limiter = RateLimiter(10, headroom=1.0, clock=clock)
    limiter.on_throttled(0.5)
    clock.now += 60.0
    assert await limiter.acquire() == 0.0
    assert sleep.calls == []
    assert limiter.rate == pytest.approx(10.0)
