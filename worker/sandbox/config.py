"""Configuration of the sandbox: the seeded account, auth, the rate limit and fault injection."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from worker.statuses import DEFAULT_STATUSES, color_for

from .ratelimit import RateSchedule

DEFAULT_TOKEN = "sandbox-token"


class ConfigError(ValueError):
    """A sandbox or fault configuration value is out of range or of the wrong type."""


class ApplyThenFailMode(StrEnum):
    """What the client sees after an "apply, then fail" fault has applied its change."""

    ERROR = "503"
    HANG = "hang"
    MIXED = "mixed"


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a probability between 0 and 1, got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Seeded fault injection for the three API routes; all off by default.

    Rates are per-request probabilities. ``seed`` makes the decisions reproducible: they are
    drawn from ``random.Random(seed)`` in request-arrival order (``None``: fresh entropy).
    """

    error_rate: float = 0.0
    latency_ms: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    drop_rate: float = 0.0
    apply_then_fail_rate: float = 0.0
    apply_then_fail_mode: ApplyThenFailMode = ApplyThenFailMode.MIXED
    burst_429_rate: float = 0.0
    burst_seconds: float = 0.75
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("error_rate", "hang_rate", "drop_rate", "apply_then_fail_rate"):
            _check_rate(name, getattr(self, name))
        _check_rate("burst_429_rate", self.burst_429_rate)
        for name in ("latency_ms", "hang_seconds", "burst_seconds"):
            _check_non_negative(name, getattr(self, name))
        object.__setattr__(
            self, "apply_then_fail_mode", ApplyThenFailMode(self.apply_then_fail_mode)
        )

    @property
    def active(self) -> bool:
        """Whether any fault can fire at all."""
        return bool(
            self.error_rate
            or self.latency_ms
            or self.hang_rate
            or self.drop_rate
            or self.apply_then_fail_rate
            or self.burst_429_rate
        )

    def to_json(self) -> dict[str, Any]:
        """The configuration as a JSON-ready dict (the shape ``from_json`` accepts)."""
        data = dataclasses.asdict(self)
        data["apply_then_fail_mode"] = str(self.apply_then_fail_mode)
        return data

    @classmethod
    def from_json(cls, data: object) -> FaultConfig:
        """Build from a JSON object; missing keys take their defaults, unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise ConfigError("fault configuration must be a JSON object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"unknown fault option {key!r}")
            if key == "seed":
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ConfigError("seed must be an integer or null")
            elif key == "apply_then_fail_mode":
                choices = [mode.value for mode in ApplyThenFailMode]
                if not isinstance(value, str) or value not in choices:
                    raise ConfigError(f"apply_then_fail_mode must be one of {', '.join(choices)}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{key} must be a number")
            kwargs[key] = value
        return cls(**kwargs)


def _default_statuses() -> Mapping[int, str]:
    return dict(DEFAULT_STATUSES)


def statuses_for(keys: list[int] | tuple[int, ...]) -> dict[int, str]:
    """The enabled-status table for the given keys, with the default messages where known."""
    return {key: DEFAULT_STATUSES.get(key, f"Status {key}") for key in keys}


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything that shapes one sandbox instance.

    ``forbidden`` lists workspaces every token may read but not edit (PUT and POST get 403).
    ``rate_limit`` is the number of accepted requests allowed in any one-second window, shared
    by all tokens (0 = unlimited); ``rate_limit_schedule``, when set, replaces it with limits
    that change with the seconds since the sandbox started. ``read_rate_limit`` (or
    ``read_rate_limit_schedule``), when set, gives reads (GET, HEAD) a one-second window of
    their own, and they then no longer count against the main one. ``retry_after`` is sent as
    ``Retry-After`` on 429 when set; no other rate-limit header is ever sent.
    ``request_log`` keeps the latest API requests (method, target, body, status) in memory.
    """

    tokens: tuple[str, ...] = (DEFAULT_TOKEN,)
    workspaces: int = 200
    statuses: Mapping[int, str] = field(default_factory=_default_statuses)
    initial_status: int = 100
    forbidden: frozenset[int] = frozenset()
    rate_limit: int = 0
    rate_limit_schedule: RateSchedule | None = None
    read_rate_limit: int | None = None
    read_rate_limit_schedule: RateSchedule | None = None
    retry_after: int | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    inspect: bool = False
    request_log: int = 10_000
    """How many of the latest API requests are kept for inspection (0: none)."""

    def __post_init__(self) -> None:
        if self.workspaces < 0:
            raise ConfigError("workspaces must be >= 0")
        if not self.statuses:
            raise ConfigError("at least one status key must be enabled")
        for key in self.statuses:
            if color_for(key) is None:
                raise ConfigError(f"status key {key} is outside 100-699")
        if self.initial_status not in self.statuses:
            raise ConfigError(f"initial status {self.initial_status} is not an enabled status key")
        if self.rate_limit < 0:
            raise ConfigError("rate_limit must be >= 0")
        if self.read_rate_limit is not None and self.read_rate_limit < 0:
            raise ConfigError("read_rate_limit must be >= 0")
        for name in ("rate_limit_schedule", "read_rate_limit_schedule"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, RateSchedule):
                raise ConfigError(f"{name} must be a RateSchedule (see RateSchedule.parse)")
        if self.request_log < 0:
            raise ConfigError("request_log must be >= 0")
        if self.retry_after is not None and self.retry_after < 0:
            raise ConfigError("retry_after must be >= 0")
        if any(not token for token in self.tokens):
            raise ConfigError("tokens must not be empty strings")
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "forbidden", frozenset(self.forbidden))
        object.__setattr__(self, "statuses", dict(self.statuses))

    @property
    def main_schedule(self) -> RateSchedule:
        """The limit of the main window over time (a constant ``rate_limit`` unless scheduled)."""
        if self.rate_limit_schedule is not None:
            return self.rate_limit_schedule
        return RateSchedule.constant(self.rate_limit)

    @property
    def read_schedule(self) -> RateSchedule | None:
        """The limit of the read window over time; None when reads share the main window."""
        if self.read_rate_limit_schedule is not None:
            return self.read_rate_limit_schedule
        if self.read_rate_limit is not None:
            return RateSchedule.constant(self.read_rate_limit)
        return None
