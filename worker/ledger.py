"""One run's ledger: the leases it holds, what it decided for each change, and its counters.

Every decision goes through here on its way to the write buffer: a final result
(:meth:`Ledger.finish`), a retry (:meth:`Ledger.retry`), a change handed back untouched
(:meth:`Ledger.release`), an attempt record. A run makes a ledger of its own, so nothing
carries over from one run to the next but the lease book (empty between runs) and the buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from structlog.contextvars import bound_contextvars

from .changes import AttemptRecord, ClaimedRow, Lease, Result, RunStats, State
from .exceptions import InputError
from .leases import LeaseBook
from .logging import get_record_logger
from .metrics import Metrics
from .planner import Step
from .store import Store
from .writeback import WriteBuffer


@dataclass(slots=True)
class Ledger:
    """The per-run state that steps and the dispatcher share."""

    run_id: str
    book: LeaseBook
    buffer: WriteBuffer
    metrics: Metrics
    log: Any
    debug: bool = False
    """Whether debug lines (a successful request's) are wanted: skipped cheaply if not."""
    stats: RunStats = field(default_factory=RunStats)
    on_progress: Callable[[int], None] | None = None

    def hold(self, lease: Lease, since: float) -> None:
        self.book.hold(lease, since)

    def holds(self, change_id: int, token: int | None = None) -> bool:
        return self.book.holds(change_id, token)

    def finish(self, result: Result, *, kind: str) -> None:
        """A final result: the lease is done with, the result goes to the buffer and counts."""
        self.book.forget(result.change_id, result.lease_token)
        self.buffer.result(result)
        state = result.state
        if state is State.SUCCEEDED:
            self.stats.succeeded += 1
        elif state is State.FAILED:
            self.stats.failed += 1
        elif state is State.INVALID:
            self.stats.invalid += 1
        label = str(result.outcome or result.error_type or state)
        self.stats.by_outcome[label] = self.stats.by_outcome.get(label, 0) + 1
        self.metrics.change_finished(kind, state, result.outcome or "")
        if self.on_progress is not None:
            self.on_progress(1)

    def retry(self, result: Result) -> None:
        """The change goes back to pending with its attempt counted and its retry time."""
        self.book.forget(result.change_id, result.lease_token)
        self.buffer.result(result)
        self.stats.retried += 1
        self.metrics.retries.inc()

    def attempt(self, record: AttemptRecord) -> None:
        self.stats.requests += 1
        self.buffer.attempt(record)

    def one_request(self, records: Iterable[AttemptRecord]) -> None:
        """One request recorded on several rows (a bulk read: a row per workspace read)."""
        self.stats.requests += 1
        for record in records:
            self.buffer.attempt(record)

    def invalid(self, row: ClaimedRow, exc: InputError) -> None:
        """A row that cannot be sent: ``invalid`` with the column and the reason."""
        with bound_contextvars(change_id=row.id):
            self.log.warning("change.invalid", column=exc.column, error=exc.message)
        self.finish(
            Result(
                row.id,
                row.lease_token,
                State.INVALID,
                attempts=row.attempts,
                error_type="invalid",
                error_message=str(exc),
                error_field=exc.column,
            ),
            kind=str(row.kind) if isinstance(row.kind, str) else "unknown",
        )

    def release(self, leases: Iterable[Lease]) -> None:
        """Hand unsent changes back to the queue untouched (no attempt), at the next flush.

        Only the leases of these claims: a change claimed again since keeps its newer lease.
        """
        for lease in leases:
            if self.book.release(lease.change_id, lease.token) is not None:
                self.buffer.release(lease)

    def release_steps(self, steps: Iterable[Step]) -> None:
        self.release(
            Lease(change.id, change.lease_token) for step in steps for change in step.changes
        )

    def lost(self, change_ids: list[int]) -> None:
        """Leases found taken over (by a heartbeat, a re-validation or a fenced write)."""
        if change_ids:
            self.stats.lost_leases += len(change_ids)
            self.metrics.lost_leases.inc(len(change_ids))
            self.log.warning("lease.lost", count=len(change_ids), change_ids=change_ids[:20])

    def summarise(self, ended_because: str, duration: float, error: Exception | None) -> None:
        """The run's one canonical summary line (at ``error`` when the run failed), written
        whatever the configured level: it is the run's record."""
        record = get_record_logger()
        line = record.error if error is not None else record.info
        stats = self.stats
        line(
            "run.finished",
            ended_because=ended_because,
            error=str(error) if error is not None else None,
            duration_s=round(duration, 3),
            **stats.counts(),
            rate_limited=stats.rate_limited,
            lost_leases=stats.lost_leases,
            outcomes=stats.by_outcome,
        )

    async def release_held(self, store: Store, now: datetime) -> None:
        """At the end of a run: return every change still held, in one transaction."""
        leases = self.book.clear()
        try:
            released = await store.release(leases, now)
        except BaseException:
            for lease in leases:
                self.book.hold(lease, -math.inf)  # still ours to hand back, never to send
            raise
        if released:
            self.log.info("changes.released", count=released)
