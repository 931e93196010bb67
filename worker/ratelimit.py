"""One rate budget for every request a worker sends, smooth, strict and adaptive.

Two layers. A pacer spaces releases evenly at the current rate (a GCRA schedule: release *k*
is due at ``t0 + k / rate``, so an oversleep is caught up instead of lost). Behind it an
asyncio-throttle ``Throttler`` with a one-second window enforces the hard guarantee: never more
than the budget in any one-second window by our clock. A little headroom covers the jitter
between our clock and the server's. On 429 the rate halves and sending pauses; it recovers
linearly while no 429 is seen. :mod:`worker.sharedrate` feeds the same pacing from a budget
that several workers share.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from asyncio_throttle import Throttler

from .logging import get_logger

HEADROOM = 0.98
MIN_FRACTION = 0.05
RECOVERY_PER_SECOND = 0.10
DEFAULT_PAUSE = 1.0


@dataclass(frozen=True, slots=True)
class RateState:
    """The limiter's rate, between ``MIN_FRACTION`` of the budget and the budget."""

    rate: float
    changed_at: float


def after_throttled(state: RateState, budget: float, now: float) -> RateState:
    """A 429 arrived: halve the rate (not below the floor)."""
    return RateState(max(budget * MIN_FRACTION, state.rate / 2), now)


def recovered(state: RateState, budget: float, now: float) -> RateState:
    """Linear recovery toward the budget, ``RECOVERY_PER_SECOND`` of it per second."""
    if state.rate >= budget:
        return state
    gained = budget * RECOVERY_PER_SECOND * max(0.0, now - state.changed_at)
    return RateState(min(budget, state.rate + gained), now) if gained > 0 else state


class RateLimiter:
    """Await :meth:`acquire` before each request. ``budget`` of 0 means unlimited."""

    def __init__(
        self,
        budget: float,
        *,
        headroom: float = HEADROOM,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget * headroom
        self.endpoint_class = "all"
        self.learned: float | None = None
        self.acquired = 0
        self._clock = clock
        self._state = RateState(self.budget, clock())
        self._lock = asyncio.Lock()
        self._next = 0.0
        self._paused_until = 0.0
        self.throttled = 0
        self._throttler = (
            Throttler(rate_limit=max(1, math.floor(self.budget)), period=1.0, retry_interval=0.002)
            if budget > 0
            else None
        )

    @property
    def rate(self) -> float:
        return self._state.rate if self._throttler is not None else math.inf

    async def acquire(self) -> float:
        """Wait for a slot; return the seconds waited."""
        if self._throttler is None:
            return 0.0
        started = self._clock()
        async with self._lock:
            now = self._clock()
            if self._paused_until > now:
                await asyncio.sleep(self._paused_until - now)
                now = self._clock()
            self._state = recovered(self._state, self.budget, now)
            self._next = max(self._next, now)
            if self._next > now:
                await asyncio.sleep(self._next - now)
            self._next += 1.0 / self._state.rate
            await self._throttler.acquire()
            self.acquired += 1
        return self._clock() - started

    async def settle(self) -> None:
        """Nothing runs in the background here; for symmetry with the shared limiter."""

    def on_throttled(self, retry_after: float | None) -> None:
        """A 429: slow down at once and pause all sending for Retry-After (or a second)."""
        self.throttled += 1
        if self._throttler is None:
            return
        now = self._clock()
        before = self._state.rate
        self._state = after_throttled(self._state, self.budget, now)
        get_logger().warning(
            "rate.lowered", rate_per_s=round(self._state.rate, 3), from_per_s=round(before, 3)
        )
        pause = retry_after if retry_after is not None else DEFAULT_PAUSE
        self._paused_until = max(self._paused_until, now + pause)
        self._next = max(self._next, self._paused_until)


class Limiter(Protocol):
    """What the sender needs of a limiter: :class:`RateLimiter` or
    :class:`~worker.sharedrate.SharedRateLimiter`."""

    budget: float
    throttled: int
    acquired: int
    """Slots handed out (requests sent, or about to be)."""
    learned: float | None
    """A learned budget's highest rate known good; None for a fixed budget."""
    endpoint_class: str
    """``write``, ``read``, or ``all`` where one budget serves every request."""

    @property
    def rate(self) -> float: ...

    async def acquire(self) -> float:
        """Wait for a send slot; return the seconds waited."""
        ...

    async def settle(self) -> None:
        """Wait for background work (at the end of a run)."""
        ...

    def on_throttled(self, retry_after: float | None) -> None:
        """A 429 arrived; ``retry_after`` is the pause every sender takes (None: default)."""
        ...
