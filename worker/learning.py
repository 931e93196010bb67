"""Learning a rate limit nobody publishes: the pure controller behind ``rate_limit = "auto"``.

Kantata sends no rate-limit headers and no ``Retry-After``, so the only evidence is which rates
drew a 429. The controller keeps the highest rate held without one (``good``) and the lowest
that drew one (``bad``), and searches between them:

- while no ceiling is known it probes upward, ``GROWTH`` times the rate per step;
- a step lasts ``STEP_SECONDS`` and proves its rate only if requests really went out at it (a
  queue that ran dry proves nothing) and no 429 came;
- a 429 steps down to just under the rate it happened at, or under the rate the server was
  accepting then, whichever is lower, once per ``LOWER_DEBOUNCE`` (the 429s that follow at once
  were sent at the old rate);
- with a ceiling known, the next rate is halfway between ``good`` and ``bad``; when they are
  within ``SETTLE_GAP`` the search stops and the rate holds at ``good``;
- every ``REPROBE_SECONDS`` the ceiling is forgotten and the rate probes upward again, by
  ``REPROBE_GROWTH`` a step, since the limit can change and other clients may share the token.

Everything here is a function of values; the shared budget stores a :class:`Learned` per token
and endpoint class and applies these functions inside its reservation transaction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

STEP_SECONDS = 1.0
"""How long a rate is held before it counts as good (the server's window is one second)."""
GROWTH = 1.5
"""The upward probe's factor per step while no ceiling is known."""
BACKOFF = 0.9
"""A 429 steps the rate down to this fraction of the rate it happened at."""
UNDER_ACCEPTED = 0.95
"""... or to this fraction of the rate the server was accepting in that step, if lower."""
SETTLE_GAP = 0.03
"""The search stops when ``bad - good`` is this fraction of ``bad`` or less."""
REPROBE_SECONDS = 300.0
BUSY_FRACTION = 0.8
"""The share of a step's rate that must really be sent for the step to prove it."""
LOWER_DEBOUNCE = 1.0
"""Seconds after a step down during which further 429s only count (they met the old rate)."""
MIN_EVIDENCE = 0.5
"""Seconds of a step before its accepted rate is trusted as an estimate of the limit."""
ESTIMATE_GAP = 3.0
"""Seconds after an estimate before the accepted rate is trusted again."""
ESTIMATE_MARGIN = 1.25
"""An estimate reads low while the server's window still holds older requests: the ceiling
it sets is this much above it, and the search finds the rest."""
REPROBE_GROWTH = 1.1
"""The upward probe's factor per step after a re-probe (a limit was known; it may have risen)."""


@dataclass(frozen=True, slots=True)
class Bounds:
    """The operator's bounds: ``rate_limit_min`` and ``rate_limit_max``."""

    floor: float
    ceiling: float

    def clamp(self, rate: float) -> float:
        return min(self.ceiling, max(self.floor, rate))


@dataclass(frozen=True, slots=True)
class Learned:
    """What is known of one token's limit for one endpoint class, and the step under way."""

    rate: float
    """The rate sending is paced at now."""
    good: float = 0.0
    """The highest rate held through a busy step without a 429 (0: none yet)."""
    bad: float = math.inf
    """The lowest rate that drew a 429 (infinite: none yet)."""
    step_at: float = 0.0
    used: int = 0
    """Requests sent since ``step_at`` (429s included)."""
    refused: int = 0
    """429s since ``step_at``."""
    lowered_at: float = -math.inf
    probed_at: float = 0.0
    """When the ceiling was last found or re-probed."""
    estimated_at: float = -math.inf
    """When the accepted rate last set the step down (see :func:`throttled`)."""

    @property
    def settled(self) -> bool:
        """Whether the search has narrowed the gap and holds at ``good``."""
        return math.isfinite(self.bad) and self.bad - self.good <= SETTLE_GAP * self.bad


def start(bounds: Bounds, now: float) -> Learned:
    """Nothing known yet: begin at the floor. (What is learned is stored, and the next worker
    or run goes on from it.)"""
    return Learned(rate=bounds.floor, step_at=now, probed_at=now)


def next_rate(state: Learned, bounds: Bounds) -> float:
    """The rate to try after ``state.rate`` was proven good."""
    if not math.isfinite(state.bad):
        # Before any 429, double-quick; after a re-probe, gently (the old limit is near).
        growth = GROWTH if math.isinf(state.lowered_at) else REPROBE_GROWTH
        return bounds.clamp(state.rate * growth)
    if state.settled:
        return bounds.clamp(state.good)
    return bounds.clamp((state.good + state.bad) / 2)


def taken(state: Learned, sent: int, now: float, bounds: Bounds) -> Learned:
    """``sent`` more requests went out (reported at ``now``); at the end of a step, judge it.

    Requests sent, not slots reserved: the shared schedule runs ahead of the sends, and a
    rate is proven only by requests that really went out at it.
    """
    state = replace(state, used=state.used + sent)
    elapsed = now - state.step_at
    if elapsed < STEP_SECONDS or (state.refused and elapsed < 2 * STEP_SECONDS):
        # A step with 429s runs on a little: the next step down estimates from all of it.
        return state
    busy = state.used >= BUSY_FRACTION * state.rate * elapsed
    if state.settled and now - state.probed_at >= REPROBE_SECONDS:
        # The limit may have risen, or another client sharing the token may have gone: forget
        # the ceiling and probe upward again, gently.
        state = replace(state, bad=math.inf, probed_at=now)
    if busy and state.refused == 0:
        state = replace(state, good=max(state.good, state.rate))
        state = replace(state, rate=next_rate(state, bounds))
    return replace(state, step_at=now, used=0, refused=0)


def throttled(state: Learned, now: float, bounds: Bounds) -> Learned:
    """A 429 arrived: step down to just under the rate it met, and remember that rate as bad."""
    state = replace(state, refused=state.refused + 1)
    if now - state.lowered_at < LOWER_DEBOUNCE:
        return state
    at = state.rate
    lower = at * BACKOFF
    bad = min(state.bad, at)
    elapsed = now - state.step_at
    estimated_at = state.estimated_at
    if elapsed >= MIN_EVIDENCE and state.refused > 1 and now - estimated_at > ESTIMATE_GAP:
        # What the server let through in this step estimates its limit better than ``at``
        # (after a sudden drop, say). Only once a bout: right after a step down, the server's
        # window still holds the older, faster requests, and the estimate would read low.
        accepted = max(0.0, state.used - state.refused) / elapsed
        lower = min(lower, accepted * UNDER_ACCEPTED)
        bad = min(bad, accepted * ESTIMATE_MARGIN)
        estimated_at = now
    rate = bounds.clamp(lower)
    good = state.good if state.good < rate else rate
    if good >= bad:
        good = rate
    return Learned(
        rate=rate,
        good=good,
        bad=max(bad, rate),
        step_at=now,
        used=0,
        refused=0,
        lowered_at=now,
        probed_at=now,
        estimated_at=estimated_at,
    )


def learn_from(state: Learned, bounds: Bounds, now: float, *, sent: int, refused: int) -> Learned:
    """Pure: a worker's news with its reservation (429s seen, requests sent) applied."""
    for _ in range(refused):
        state = throttled(state, now, bounds)
    return taken(state, sent, now, bounds)
