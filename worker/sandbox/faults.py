"""Seeded, per-request fault decisions.

Every request draws the same fixed number of values from one ``random.Random`` in arrival order,
whatever the configuration, so a seed reproduces the whole decision sequence and changing one
rate does not shift the draws behind another. Precedence, first match wins: an ongoing or new
429 burst, a 5xx error, a hang, a dropped connection, apply-then-fail. Latency is added to every
request that is not answered with 429.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from .config import ApplyThenFailMode, FaultConfig

ERROR_STATUSES: tuple[int, ...] = (500, 502, 503)


class FaultKind(StrEnum):
    """The fault chosen for one request."""

    NONE = "none"
    BURST_429 = "burst_429"
    ERROR = "error"
    HANG = "hang"
    DROP = "drop"
    APPLY_THEN_FAIL = "apply_then_fail"


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to do to one request.

    ``status`` is the 5xx code for ERROR; ``hang`` says whether an APPLY_THEN_FAIL hangs
    (instead of answering 503 at once) after applying; ``hang_seconds`` is how long a hang lasts.
    """

    kind: FaultKind
    latency: float = 0.0
    status: int = 0
    hang: bool = False
    hang_seconds: float = 0.0


NO_FAULT = FaultDecision(FaultKind.NONE)


class FaultInjector:
    """Draws fault decisions from a seeded generator; the configuration can be swapped live."""

    __slots__ = ("_burst_until", "_config", "_rng")

    def __init__(self, config: FaultConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self._burst_until = float("-inf")

    @property
    def config(self) -> FaultConfig:
        """The configuration in force."""
        return self._config

    def replace(self, config: FaultConfig) -> None:
        """Swap the configuration; re-seed only when the new one names a seed.

        An ongoing 429 burst ends with the swap, so turning faults off takes effect at once.
        """
        self._config = config
        if config.seed is not None:
            self._rng = random.Random(config.seed)
        self._burst_until = float("-inf")

    def decide(self, now: float) -> FaultDecision:
        """The decision for a request arriving at ``now`` (monotonic seconds)."""
        rng = self._rng.random
        u_burst, u_error, u_code, u_hang, u_drop, u_atf, u_mode = (
            rng(),
            rng(),
            rng(),
            rng(),
            rng(),
            rng(),
            rng(),
        )
        cfg = self._config
        if now < self._burst_until:
            return FaultDecision(FaultKind.BURST_429)
        if u_burst < cfg.burst_429_rate:
            self._burst_until = now + cfg.burst_seconds
            return FaultDecision(FaultKind.BURST_429)
        latency = cfg.latency_ms / 1000.0
        if u_error < cfg.error_rate:
            status = ERROR_STATUSES[int(u_code * len(ERROR_STATUSES))]
            return FaultDecision(FaultKind.ERROR, latency, status=status)
        if u_hang < cfg.hang_rate:
            return FaultDecision(FaultKind.HANG, latency, hang=True, hang_seconds=cfg.hang_seconds)
        if u_drop < cfg.drop_rate:
            return FaultDecision(FaultKind.DROP, latency)
        if u_atf < cfg.apply_then_fail_rate:
            mode = cfg.apply_then_fail_mode
            hang = mode is ApplyThenFailMode.HANG or (
                mode is ApplyThenFailMode.MIXED and u_mode >= 0.5
            )
            return FaultDecision(
                FaultKind.APPLY_THEN_FAIL, latency, hang=hang, hang_seconds=cfg.hang_seconds
            )
        if latency:
            return FaultDecision(FaultKind.NONE, latency)
        return NO_FAULT
