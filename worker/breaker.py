"""A circuit breaker: when Kantata keeps failing, stop sending for a cool-down, then probe.

Only failures that say "the service is unwell" count: 5xx, timeouts and dropped connections.
A 429 is the rate limiter's business and a 4xx is the change's own. After ``threshold``
consecutive such failures the breaker opens; after ``cooldown`` one probe request goes through.
If the probe succeeds the breaker closes. If it fails, the breaker opens again with the cool-down
doubled (up to ``max_cooldown``). The transitions are pure functions over :class:`BreakerState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from .logging import get_logger


class Phase(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerState:
    phase: Phase = Phase.CLOSED
    failures: int = 0
    reopen_at: float = 0.0
    cooldown: float = 0.0


CLOSED = BreakerState()


def record(
    state: BreakerState,
    *,
    unhealthy: bool,
    now: float,
    threshold: int,
    cooldown: float,
    max_cooldown: float,
) -> BreakerState:
    """The state after one answer; ``unhealthy`` is a 5xx, a timeout or a lost connection."""
    if not unhealthy:
        return CLOSED
    if state.phase is Phase.HALF_OPEN:
        longer = min(max_cooldown, max(state.cooldown, cooldown) * 2)
        return BreakerState(Phase.OPEN, state.failures + 1, now + longer, longer)
    failures = state.failures + 1
    if state.phase is Phase.CLOSED and failures >= threshold:
        return BreakerState(Phase.OPEN, failures, now + cooldown, cooldown)
    return replace(state, failures=failures)


def admit(state: BreakerState, now: float) -> tuple[bool, BreakerState]:
    """Whether a request may go now; an open breaker past its cool-down lets one probe through."""
    if state.phase is Phase.CLOSED:
        return True, state
    if state.phase is Phase.OPEN and now >= state.reopen_at:
        return True, replace(state, phase=Phase.HALF_OPEN)
    return False, state


class CircuitBreaker:
    """The async gate in front of every request; ``threshold`` of 0 disables it."""

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        *,
        max_cooldown: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.max_cooldown = max(max_cooldown, cooldown)
        self.state = CLOSED
        self.opened = 0
        self._clock = clock
        self._changed = asyncio.Event()

    async def wait(self) -> float:
        """Wait until a request may be sent; return the seconds waited."""
        if self.threshold <= 0:
            return 0.0
        started = self._clock()
        waited = False
        while True:
            allowed, self.state = admit(self.state, self._clock())
            if allowed:
                return self._clock() - started if waited else 0.0
            waited = True
            self._changed.clear()
            delay = self.state.reopen_at - self._clock() if self.state.phase is Phase.OPEN else 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=max(delay, 0.01))

    @property
    def closed(self) -> bool:
        """Whether requests go without asking (closed, or no breaker at all)."""
        return self.threshold <= 0 or self.state.phase is Phase.CLOSED

    def record(self, *, unhealthy: bool) -> None:
        if self.threshold <= 0 or (not unhealthy and self.state is CLOSED):
            return
        before = self.state.phase
        self.state = record(
            self.state,
            unhealthy=unhealthy,
            now=self._clock(),
            threshold=self.threshold,
            cooldown=self.cooldown,
            max_cooldown=self.max_cooldown,
        )
        after = self.state.phase
        if after is Phase.OPEN and before is not Phase.OPEN:
            self.opened += 1
            get_logger().error(
                "breaker.opened",
                failures=self.state.failures,
                cooldown_s=round(self.state.cooldown, 3),
                after=str(before),
            )
        elif after is Phase.CLOSED and before is not Phase.CLOSED:
            get_logger().info("breaker.closed")
        self._changed.set()
