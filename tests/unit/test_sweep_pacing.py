"""The drift sweep's share of the budget: its pace (worker/sweep.py) and its settings."""

from __future__ import annotations

import math

import pytest

from worker.config import Settings, load_settings
from worker.exceptions import ConfigError
from worker.metrics import Metrics
from worker.ratelimit import RateLimiter
from worker.sweep import PacedLimiter, Sweeper, SweepPaused


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class Shared:
    """Stands for the shared limiter: its current rate, when each slot was taken, and 429s."""

    budget = 19.6
    endpoint_class = "read"
    learned = None
    acquired = 0

    def __init__(self, clock: FakeClock, rate: float = 20.0) -> None:
        self.clock = clock
        self.rate = rate
        self.taken: list[float] = []
        self.throttled = 0
        self.pauses: list[float | None] = []

    async def acquire(self) -> float:
        self.taken.append(self.clock())
        return 0.0

    async def settle(self) -> None:
        pass

    def on_throttled(self, retry_after: float | None) -> None:
        self.pauses.append(retry_after)
        self.rate /= 2


def paced(
    share: float, rate: float = 20.0, **kwargs: object
) -> tuple[PacedLimiter, Shared, FakeClock]:
    clock = FakeClock()
    shared = Shared(clock, rate)
    limiter = PacedLimiter(shared, share, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]
    return limiter, shared, clock


@pytest.mark.parametrize(
    ("rate", "share", "gaps", "expected"),
    [
        # 10% of 20/s: 2 reads a second, evenly spaced, whatever the caller asks.
        (20.0, 0.1, [0, 0, 0, 0], [0.0, 0.5, 1.0, 1.5]),
        # A caller slower than the pace is never held back.
        (20.0, 0.1, [0, 1.0, 1.0], [0.0, 1.0, 2.0]),
        # A long pause (between sweeps) buys no burst afterwards.
        (20.0, 0.1, [0, 10.0, 0, 0], [0.0, 10.0, 10.5, 11.0]),
        # 1% of 10/s: one read every 10 s.
        (10.0, 0.01, [0, 0, 0], [0.0, 10.0, 20.0]),
        # The whole budget: as fast as the shared limiter itself.
        (4.0, 1.0, [0, 0, 0], [0.0, 0.25, 0.5]),
        # No limiter at all (rate_limit 0): nothing waits here.
        (math.inf, 0.1, [0, 0, 0], [0.0, 0.0, 0.0]),
    ],
)
async def test_reads_pass_at_their_share_and_then_take_a_shared_slot(
    rate: float, share: float, gaps: list[float], expected: list[float]
) -> None:
    limiter, shared, clock = paced(share, rate)
    for gap in gaps:
        clock.now += gap
        await limiter.acquire()
    assert [round(t - 100.0, 6) for t in shared.taken] == expected


@pytest.mark.parametrize("share", [0.025, 0.1, 0.35])
async def test_over_any_time_at_most_one_plus_time_times_pace_reads_pass(share: float) -> None:
    limiter, shared, _clock = paced(share, 20.0)
    pace = 20.0 * share
    for _ in range(50):
        await limiter.acquire()
    for i, start in enumerate(shared.taken):
        for j in range(i, len(shared.taken)):
            span = shared.taken[j] - start
            assert j - i + 1 <= 1 + span * pace + 1e-9


async def test_the_pace_follows_the_shared_rate_down_after_a_429() -> None:
    limiter, shared, _clock = paced(0.1, 20.0)
    await limiter.acquire()
    await limiter.acquire()  # 0.5 s later
    limiter.on_throttled(3.0)  # the shared rate halves: 10/s, so 1 read a second
    assert (shared.pauses, limiter.throttled, limiter.pace()) == ([3.0], 1, 1.0)
    await limiter.acquire()
    await limiter.acquire()
    assert [round(t - 100.0, 6) for t in shared.taken] == [0.0, 0.5, 1.0, 2.0]


async def test_counting_every_read_that_passes() -> None:
    passed: list[int] = []
    limiter, _shared, _clock = paced(0.1, on_acquired=lambda: passed.append(1))
    for _ in range(3):
        await limiter.acquire()
    assert len(passed) == 3


async def test_a_blocked_sweep_takes_no_slot() -> None:
    reason: list[str] = []
    limiter, shared, _clock = paced(0.1, blocked=lambda: reason[0] if reason else None)
    await limiter.acquire()
    reason.append("token rejected (401)")
    with pytest.raises(SweepPaused, match="token rejected"):
        await limiter.acquire()
    assert len(shared.taken) == 1


async def test_blocked_while_waiting_for_its_pace_takes_no_slot() -> None:
    calls: list[int] = []

    def blocked() -> str | None:
        calls.append(1)
        return "database unavailable" if len(calls) >= 4 else None

    limiter, shared, _clock = paced(0.05, blocked=blocked)
    await limiter.acquire()  # asked twice: before and after its (empty) wait
    with pytest.raises(SweepPaused):
        await limiter.acquire()  # asked before the wait (fine), and after it: blocked
    assert len(shared.taken) == 1


def test_the_limiter_it_stands_for() -> None:
    limiter, shared, _clock = paced(0.1, 20.0)
    assert (limiter.budget, limiter.rate) == (shared.budget, 2.0)
    unlimited, _shared, _ = paced(0.1, math.inf)
    assert (unlimited.pace(), unlimited.rate) == (None, math.inf)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (None, 0.1)),
        ({"KANTATA_SYNC_VERIFY_INTERVAL": "3600"}, (3600.0, 0.1)),
        (
            {"KANTATA_SYNC_VERIFY_INTERVAL": "60", "KANTATA_SYNC_VERIFY_BUDGET_SHARE": "0.25"},
            (60.0, 0.25),
        ),
        ({"KANTATA_SYNC_VERIFY_BUDGET_SHARE": "1"}, (None, 1.0)),
    ],
)
def test_verify_settings(env: dict[str, str], expected: tuple[float | None, float]) -> None:
    settings = load_settings(None, env)
    assert (settings.verify_interval, settings.verify_budget_share) == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("verify_interval", "0"),
        ("verify_interval", "-5"),
        ("verify_interval", str(31 * 86_400)),
        ("verify_budget_share", "0"),
        ("verify_budget_share", "1.5"),
        ("verify_budget_share", "nan"),
    ],
)
def test_verify_settings_bounds(key: str, value: str) -> None:
    env_name = f"KANTATA_SYNC_{key.upper()}"
    with pytest.raises(ConfigError, match=rf"^{key}: .*\(from {env_name}\)$"):
        load_settings(None, {env_name: value})


@pytest.mark.parametrize(
    ("rate_limit", "share", "pace"),
    [(10.0, 0.1, 0.98), (200.0, 0.05, 9.8), (10.0, 1.0, 9.8), (0.0, 0.1, None)],
)
def test_a_daemon_sweep_is_paced_at_its_share_of_the_token_budget(
    rate_limit: float, share: float, pace: float | None
) -> None:
    """``rate_limit * share``, less the limiter's 2% headroom; no limiter, no pace."""
    settings = Settings(rate_limit=rate_limit, verify_budget_share=share, verify_interval=60)
    limiter = RateLimiter(rate_limit)
    metrics = Metrics(process_metrics=False)
    sweeper = Sweeper(object(), object(), limiter, settings, metrics)  # type: ignore[arg-type]
    assert sweeper.paced.pace() == (pytest.approx(pace) if pace else None)


def test_no_sweeper_without_an_interval() -> None:
    with pytest.raises(ValueError, match="verify_interval"):
        Sweeper(object(), object(), RateLimiter(0), Settings(), Metrics(process_metrics=False))  # type: ignore[arg-type]
