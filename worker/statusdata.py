"""The values the status page and the HTML report show, and the pure folds that make them.

:mod:`worker.statuspage` reads them from the database; :mod:`worker.statushtml` draws them.
Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import __version__
from .coordination import WorkerInfo

DEAD_AFTER = 30.0
"""Seconds without a heartbeat after which a worker is not listed as live (as ``status``)."""
WINDOW = timedelta(hours=1)
BUCKET = timedelta(minutes=1)
LATEST_FAILURES = 20
FINAL_STATES = ("succeeded", "failed", "invalid", "cancelled")
FAILURE_STATES = ("failed", "invalid")
UNKNOWN_ERROR = "unknown"
"""The error type shown for a failed change that has none."""


@dataclass(frozen=True, slots=True)
class Throughput:
    """Changes that reached a final state, per time bucket, from ``start`` on."""

    start: datetime
    bucket_seconds: int
    by_state: Mapping[str, tuple[int, ...]]
    """Every final state, one count per bucket."""
    failures_by_type: Mapping[str, tuple[int, ...]]
    """Failed and invalid changes by ``error_type``, one count per bucket."""

    @property
    def buckets(self) -> int:
        return len(next(iter(self.by_state.values()), ()))

    def bucket_start(self, index: int) -> datetime:
        return self.start + timedelta(seconds=index * self.bucket_seconds)

    def total(self, state: str) -> int:
        return sum(self.by_state.get(state, ()))


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed or invalid change, as the page lists it (producer columns as text)."""

    id: int
    workspace_id: str
    kind: str
    state: str
    source_ref: str | None
    attempts: int
    http_status: int | None
    error_type: str | None
    error_field: str | None
    error_message: str | None
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Budget:
    """One token's shared rate budget, by fingerprint (never the token)."""

    token: str
    budget: float
    rate: float
    throttled: int
    paused_for: float
    """Seconds the shared schedule is still paused for after a 429 (0 when it is not)."""
    learned: float | None = None
    """``rate_limit = "auto"``: the highest rate known good (0: none yet); None: fixed."""


@dataclass(frozen=True, slots=True)
class StatusData:
    """Everything the status page shows."""

    generated_at: datetime
    counts: Mapping[str, int]
    oldest_pending_age: float | None
    throughput: Throughput
    failures: tuple[Failure, ...]
    workers: tuple[WorkerInfo, ...]
    dead_workers: int
    budgets: tuple[Budget, ...]
    activity: str | None = None
    """What the daemon serving the page is doing (idle, syncing, ...), if one is."""
    version: str = __version__


@dataclass(frozen=True, slots=True)
class ReportSummary:
    """The charts and totals at the top of an HTML report."""

    generated_at: datetime
    counts: Mapping[str, int]
    outcomes: tuple[tuple[str, str | None, int], ...]
    throughput: Throughput
    title: str = "kantata-sync reconciliation report"
    scope: str = "all changes"
    """Which changes the report covers, in words (the filters given)."""
    version: str = __version__


def fold_buckets(
    rows: Iterable[tuple[int, str, str | None, int]], buckets: int
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """``(bucket, state, error_type, count)`` rows as per-bucket counts by state and by the
    error type of failures. A bucket past the end (a clock ahead of ours) counts in the last
    one, one before the start in the first."""
    by_state = {state: [0] * buckets for state in FINAL_STATES}
    by_type: dict[str, list[int]] = {}
    if buckets <= 0:
        return {s: () for s in by_state}, {}
    for bucket, state, error_type, count in rows:
        index = min(max(int(bucket), 0), buckets - 1)
        by_state.setdefault(state, [0] * buckets)[index] += count
        if state in FAILURE_STATES:
            kind = error_type or UNKNOWN_ERROR
            by_type.setdefault(kind, [0] * buckets)[index] += count
    return (
        {s: tuple(v) for s, v in by_state.items()},
        {t: tuple(by_type[t]) for t in sorted(by_type)},
    )


def budgets_from(rows: Iterable[Mapping[str, Any]], now: datetime) -> tuple[Budget, ...]:
    """:meth:`Coordinator.budgets` rows as values; ``paused_until`` is Unix time."""
    return tuple(
        Budget(
            token=str(row["token_key"]),
            budget=float(row["budget"]),
            rate=float(row["rate"]),
            throttled=int(row["throttled"]),
            paused_for=max(float(row["paused_until"]) - now.timestamp(), 0.0),
            learned=float(row.get("good") or 0.0) if row.get("auto") else None,
        )
        for row in rows
    )
