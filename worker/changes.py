"""Typed values that flow between the store, the planner and the dispatcher."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

JSONObject = dict[str, Any]


class Kind(StrEnum):
    """What a producer asks for."""

    STATUS_CHANGE = "status_change"
    WORKSPACE_UPDATE = "workspace_update"


class State(StrEnum):
    """Where a change is in its life. ``in_flight`` is the only state under a lease."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INVALID = "invalid"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({State.SUCCEEDED, State.FAILED, State.INVALID, State.CANCELLED})


class RunEnding(StrEnum):
    """Why a run ended, as the run log and the summary line say it."""

    DRAINED = "drained"
    """Nothing due was left."""
    STOPPED = "stopped"
    """SIGTERM, SIGINT, or the daemon rotating its run."""
    TOKEN_REJECTED = "token_rejected"
    """Kantata answered 401: every claimed change went back untouched."""
    ERROR = "error"
    """The database stayed unusable, or something unexpected broke."""


class Outcome(StrEnum):
    """How a succeeded change took effect."""

    APPLIED = "applied"
    ALREADY_APPLIED = "already_applied"
    MERGED = "merged"


@dataclass(frozen=True, slots=True)
class NewChange:
    """A change as a producer writes it, before it has an ID."""

    workspace_id: int
    kind: Kind
    payload: JSONObject
    source_ref: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """A row as claimed, before validation: producer columns are raw, as stored."""

    id: int
    workspace_id: object
    kind: object
    payload: object
    source_ref: object
    attempts: int
    lease_token: int
    http_status: int | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """A claimed, validated change, ready to plan."""

    id: int
    workspace_id: int
    kind: Kind
    payload: JSONObject
    attempts: int
    lease_token: int
    ambiguous: bool = False
    """The previous attempt may have landed (timeout, dropped connection or 5xx)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof of a claim: write-back succeeds only while ``token`` still matches."""

    change_id: int
    token: int


@dataclass(frozen=True, slots=True)
class Result:
    """What the worker writes back for one change."""

    change_id: int
    lease_token: int
    state: State
    outcome: Outcome | None = None
    attempts: int = 0
    http_status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_field: str | None = None
    result: JSONObject | None = None
    next_attempt_at: datetime | None = None
    merged_into_id: int | None = None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One HTTP request, for the append-only attempt log."""

    run_id: str
    change_ids: tuple[int, ...]
    workspace_id: int
    endpoint: str
    http_status: int | None
    duration_ms: float
    error_type: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    attempted_at: datetime | None = None


@dataclass(slots=True)
class RunStats:
    """Counters for one run, written to the run log and the summary line."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    invalid: int = 0
    retried: int = 0
    requests: int = 0
    rate_limited: int = 0
    lost_leases: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """The counts the run log (``sync_runs``) keeps, by column name."""
        return {
            "claimed": self.claimed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "invalid": self.invalid,
            "retried": self.retried,
            "requests": self.requests,
        }


@dataclass(slots=True)
class RunReport:
    """How a run went: its counters and why it ended."""

    run_id: str
    stats: RunStats
    ended_because: RunEnding
    duration: float
