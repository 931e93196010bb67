"""The learned rate limit's controller: rate observations in, the next rate out (pure)."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from worker import learning
from worker.budget import learned_of, learned_values
from worker.learning import Bounds, Learned, learn_from

BOUNDS = Bounds(floor=1.0, ceiling=250.0)


# -- single steps ----------------------------------------------------------------------------

TAKEN = [
    # (state, requests sent, now) -> (rate, good, bad)
    pytest.param(
        Learned(rate=10.0, step_at=0.0), 9, 1.0, (15.0, 10.0, math.inf), id="busy-step-grows"
    ),
    pytest.param(
        Learned(rate=10.0, step_at=0.0), 9, 0.5, (10.0, 0.0, math.inf), id="step-not-over"
    ),
    pytest.param(
        Learned(rate=10.0, step_at=0.0), 3, 1.0, (10.0, 0.0, math.inf), id="idle-proves-nothing"
    ),
    pytest.param(
        Learned(rate=10.0, step_at=0.0, used=5), 2, 1.0, (10.0, 0.0, math.inf), id="few-sent"
    ),
    pytest.param(
        Learned(rate=20.0, good=20.0, bad=40.0, step_at=0.0),
        20,
        1.0,
        (30.0, 20.0, 40.0),
        id="halfway-to-bad",
    ),
    pytest.param(
        Learned(rate=39.0, good=39.0, bad=40.0, step_at=0.0, probed_at=0.0),
        39,
        1.0,
        (39.0, 39.0, 40.0),
        id="settled-holds",
    ),
    pytest.param(
        Learned(rate=39.0, good=39.0, bad=40.0, step_at=400.0, probed_at=0.0, lowered_at=10.0),
        39,
        401.0,
        (39.0 * learning.REPROBE_GROWTH, 39.0, math.inf),
        id="settled-reprobes",
    ),
    pytest.param(
        Learned(rate=200.0, step_at=0.0), 200, 1.0, (250.0, 200.0, math.inf), id="ceiling"
    ),
    pytest.param(
        Learned(rate=10.0, step_at=0.0, refused=1),
        10,
        1.5,
        (10.0, 0.0, math.inf),
        id="429-waits",
    ),
    pytest.param(
        Learned(rate=10.0, step_at=0.0, refused=1),
        10,
        2.0,
        (10.0, 0.0, math.inf),
        id="429-step-unproven",
    ),
]


@pytest.mark.parametrize(("state", "sent", "now", "expected"), TAKEN)
def test_taken(state: Learned, sent: int, now: float, expected: tuple[float, float, float]) -> None:
    after = learning.taken(state, sent, now, BOUNDS)
    assert (after.rate, after.good, after.bad) == pytest.approx(expected)


def test_a_judged_step_starts_a_new_one() -> None:
    after = learning.taken(Learned(rate=10.0, step_at=0.0, used=3), 7, 1.2, BOUNDS)
    assert (after.step_at, after.used, after.refused) == (1.2, 0, 0)


THROTTLED = [
    # (state, now) -> (rate, good, bad)
    pytest.param(Learned(rate=40.0, step_at=0.0), 0.2, (36.0, 0.0, 40.0), id="first-429"),
    pytest.param(
        Learned(rate=40.0, good=38.0, bad=50.0, step_at=0.0),
        0.2,
        (36.0, 36.0, 40.0),
        id="good-above-new-rate",
    ),
    pytest.param(
        Learned(rate=40.0, good=30.0, bad=50.0, step_at=0.0),
        0.2,
        (36.0, 30.0, 40.0),
        id="good-kept",
    ),
    pytest.param(
        Learned(rate=40.0, step_at=0.0, lowered_at=0.0), 0.5, (40.0, 0.0, math.inf), id="debounced"
    ),
    pytest.param(
        # 40 sent in a second, 28 refused: the server took 12 a second.
        Learned(rate=40.0, step_at=0.0, used=40, refused=27),
        1.0,
        (11.4, 0.0, 12 * learning.ESTIMATE_MARGIN),
        id="accepted-estimate",
    ),
    pytest.param(
        Learned(rate=40.0, step_at=0.0, used=40, refused=27, estimated_at=-1.0),
        1.0,
        (36.0, 0.0, 40.0),
        id="estimate-once-a-bout",
    ),
    pytest.param(Learned(rate=1.05, step_at=0.0), 0.2, (1.0, 0.0, 1.05), id="floor"),
]


@pytest.mark.parametrize(("state", "now", "expected"), THROTTLED)
def test_throttled(state: Learned, now: float, expected: tuple[float, float, float]) -> None:
    after = learning.throttled(state, now, BOUNDS)
    assert (after.rate, after.good, after.bad) == pytest.approx(expected)


def test_debounced_429s_still_count_against_the_step() -> None:
    state = Learned(rate=40.0, step_at=0.0, lowered_at=0.0)
    for now in (0.1, 0.2, 0.3):
        state = learning.throttled(state, now, BOUNDS)
    assert (state.rate, state.refused) == (40.0, 3)


def test_a_reservation_applies_each_429_then_the_slots() -> None:
    state = Learned(rate=40.0, step_at=0.0)
    after = learn_from(state, BOUNDS, 0.3, sent=4, refused=3)
    assert after.rate == pytest.approx(36.0)  # one step down for the three
    assert (after.used, after.refused) == (4, 2)  # the two that followed the step down count


@pytest.mark.parametrize(
    "state",
    [
        Learned(rate=3.0),
        Learned(rate=12.5, good=11.0, bad=13.0, step_at=5.0, used=3, refused=1, lowered_at=4.0),
        Learned(rate=7.0, good=6.0, bad=math.inf, probed_at=2.0, estimated_at=1.5),
    ],
)
def test_stored_and_read_back_unchanged(state: Learned) -> None:
    values = learned_values(state)
    row = type("Row", (), {"step_used": state.used, "step_refused": state.refused, **values})
    assert learned_of(row) == state


# -- against a simulated server -------------------------------------------------------------


@dataclass
class Trace:
    sent: list[tuple[float, bool]]
    state: Learned

    def rate(self, start: float, end: float) -> float:
        return sum(ok for at, ok in self.sent if start <= at < end) / (end - start)

    def refused_share(self, start: float, end: float) -> float:
        window = [ok for at, ok in self.sent if start <= at < end]
        return window.count(False) / max(1, len(window))

    def refused(self, start: float, end: float) -> int:
        return sum(not ok for at, ok in self.sent if start <= at < end)


def simulate(
    limit: Callable[[float], int],
    seconds: float,
    *,
    state: Learned | None = None,
    noise: Callable[[float], bool] = lambda _at: False,
    block: float = 0.1,
) -> Trace:
    """A busy worker paced by the controller against a strict one-second window.

    Slots are reserved in blocks of ``block`` seconds, as the shared limiter does; a 429 drops
    the slots in hand; the 429s and the requests sent are reported with the next reservation.
    ``noise`` refuses a request the window would have taken (another client's burst on the
    same token).
    """
    state = state or learning.start(BOUNDS, 0.0)
    window: deque[float] = deque()
    slots: deque[float] = deque()
    sent: list[tuple[float, bool]] = []
    next_free, now, refused, sent_since = 0.0, 0.0, 0, 0
    while now < seconds:
        if not slots:
            count = max(1, round(state.rate * block))
            state = learn_from(state, BOUNDS, now, sent=sent_since, refused=refused)
            refused = sent_since = 0
            first = max(now, next_free)
            slots.extend(first + i / state.rate for i in range(count))
            next_free = first + count / state.rate
        now = slots.popleft()
        while window and window[0] <= now - 1.0:
            window.popleft()
        ok = len(window) < limit(now) and not noise(now)
        sent_since += 1
        if ok:
            window.append(now)
        else:
            refused += 1
            slots.clear()
            next_free = now + 1 / state.rate
        sent.append((now, ok))
    return Trace(sent, state)


def fixed(limit: int) -> Callable[[float], int]:
    return lambda _at: limit


@pytest.mark.parametrize("limit", [7, 37, 180])
def test_finds_the_limit_and_holds_just_under_it(limit: int) -> None:
    trace = simulate(fixed(limit), 90)
    assert 0.90 * limit <= trace.rate(30, 90) <= limit
    assert trace.refused_share(30, 90) <= 0.01
    assert trace.state.good <= limit < trace.state.bad * 1.1


@pytest.mark.parametrize("limit", [7, 37, 180])
def test_a_second_run_starts_from_what_was_learned(limit: int) -> None:
    learned = simulate(fixed(limit), 60).state
    # A later run: the stored state, its step evidence long stale.
    later = replace(learned, step_at=-600.0, used=0, refused=0)
    trace = simulate(fixed(limit), 10, state=later)
    assert trace.rate(0, 5) >= 0.85 * limit
    assert trace.refused(0, 5) <= 3


def test_follows_a_drop_within_ten_seconds() -> None:
    trace = simulate(lambda at: 37 if at < 40 else 12, 80)
    assert trace.rate(20, 40) >= 0.9 * 37
    assert trace.refused(50, 80) <= 2
    assert 0.9 * 12 <= trace.rate(50, 80) <= 12


def test_follows_a_rise_after_reprobing() -> None:
    trace = simulate(lambda at: 12 if at < 30 else 37, 30 + learning.REPROBE_SECONDS + 90)
    end = 30 + learning.REPROBE_SECONDS + 90
    assert trace.rate(end - 30, end) >= 0.9 * 37


def test_stray_429s_cost_little() -> None:
    """Another client's stray 429s, one in 500 requests, well under the limit."""
    rng = random.Random(7)
    trace = simulate(fixed(37), 120, noise=lambda _at: rng.random() < 0.002)
    assert trace.rate(30, 120) >= 0.8 * 37


def test_a_burst_of_429s_steps_down_once() -> None:
    """Twenty 429s at one moment (a burst another client drew) are one step down, not twenty."""
    learned = simulate(fixed(37), 60).state
    state = replace(learned, step_at=100.0, used=0, refused=0)
    for i in range(20):
        state = learning.throttled(state, 100.2 + i * 0.01, BOUNDS)
    assert state.rate == pytest.approx(learned.rate * learning.BACKOFF)


def test_never_leaves_the_bounds() -> None:
    bounds = Bounds(floor=5.0, ceiling=20.0)
    state = learning.start(bounds, 0.0)
    rates = []
    for second in range(60):
        state = learning.taken(state, round(state.rate) + 1, float(second), bounds)
        if second % 7 == 6:
            state = learning.throttled(state, second + 0.5, bounds)
        rates.append(state.rate)
    assert min(rates) >= 5.0 and max(rates) <= 20.0
    assert 20.0 in rates
