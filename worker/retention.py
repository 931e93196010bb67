"""Retention: ``prune`` deletes what is finished and old, in small transactions, never in the way.

What goes, for a cutoff (``--older-than 30d``: now less 30 days):

- **changes** in a terminal state (succeeded, failed, invalid, cancelled) that finished before
  the cutoff (``completed_at``, else ``updated_at``, else ``created_at``), unless a change that
  stays points at them: a change that superseded them and is not itself finished and old (a
  pending correction keeps the failed change it replaces), or a change merged into their
  request that is not finished and old (``merged_into_id``);
- **attempts** logged before the cutoff whose changes are all gone;
- **runs** that ended before the cutoff (or started before it and belong to no live worker)
  and that no remaining attempt names.

Each step walks its table in ID windows (``started_at`` for runs) and deletes at most
:data:`BATCH` rows a transaction, fewer while transactions take longer than
:data:`TARGET_SECONDS` (a busy machine, a slow disk). On SQLite every transaction holds the
file's single write lock, so the pruner pauses between transactions for as long as the last
one held it: a worker or producer waiting for the lock gets it within one short transaction.
On PostgreSQL a delete locks only the finished rows it removes, which no worker touches.
``--dry-run`` counts with the same rules and deletes nothing. ``--older-than`` is read by
:func:`worker.durations.parse_duration`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .batches import BatchStatements
from .changes import FINAL_STATES
from .db import transaction, translate_errors
from .logging import get_logger
from .models import UTCDateTime, sync_attempts, sync_changes, sync_runs, sync_workers

BATCH = 1_000
"""Rows deleted per transaction at most."""
TARGET_SECONDS = 0.05
"""A transaction that takes longer halves the batch (down to :data:`MIN_BATCH`); one that
takes under a quarter of it doubles the batch again (up to the most)."""
MIN_BATCH = 50
WINDOW = 5_000
"""Change IDs looked at per statement."""
LIVE_WORKER_SECONDS = 30.0
"""A run with no end whose worker heartbeated this recently is still going."""
TERMINAL = sorted(str(state) for state in FINAL_STATES)
SYNCHRONOUS_COMMIT_OFF = sa.text("SET LOCAL synchronous_commit TO off")


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What a prune did (or, dry, would do), and what it cost."""

    cutoff: datetime
    dry_run: bool
    changes: int
    attempts: int
    runs: int
    transactions: int
    longest_transaction_s: float
    seconds: float
    p99_transaction_s: float = 0.0

    def fields(self) -> dict[str, Any]:
        """For a log line and ``--format json``."""
        return {
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "changes": self.changes,
            "attempts": self.attempts,
            "runs": self.runs,
            "transactions": self.transactions,
            "longest_transaction_ms": round(self.longest_transaction_s * 1000, 1),
            "p99_transaction_ms": round(self.p99_transaction_s * 1000, 1),
            "seconds": round(self.seconds, 3),
        }


def _percentile(values: list[float], q: float) -> float:
    """Pure: the ``q`` quantile of ``values`` (nearest rank); 0 for none."""
    if not values:
        return 0.0
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, round(q * len(ranked)) - 1))]


def change_ids(text: object) -> set[int]:
    """Pure: the change IDs of an attempt-log row (``"12,13,14"``); odd parts ignored."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return {int(part) for part in str(text).split(",") if part.strip().isdigit()}


def _finished(table: Any, cutoff: Any) -> sa.ColumnElement[bool]:
    """Rows of ``table`` (``sync_changes`` or an alias) in a terminal state and old."""
    t = table.c
    ended = sa.func.coalesce(t.completed_at, t.updated_at, t.created_at, type_=UTCDateTime)
    return sa.and_(t.state.in_(TERMINAL), ended < cutoff)


def _deletable(table: Any, cutoff: Any) -> sa.ColumnElement[bool]:
    """Finished and old, and nothing that stays points at it (``superseded_by``, merges)."""
    successor = sync_changes.alias("successor")
    merged = sync_changes.alias("merged")
    t = table.c
    return sa.and_(
        _finished(table, cutoff),
        ~sa.exists().where(successor.c.id == t.superseded_by, ~_finished(successor, cutoff)),
        ~sa.exists().where(merged.c.merged_into_id == t.id, ~_finished(merged, cutoff)),
    )


class Pruner:
    """Deletes (or counts) what is finished and older than a cutoff; see the module notes.

    ``pause``: after each write transaction, sleep this many times as long as it took, and on
    SQLite at least ``min_pause`` seconds. SQLite's lock is not fair: a writer waiting for it
    sleeps in steps of up to 25 ms (100 ms once it has waited long), and a pruner that took
    the lock again at once could keep missing it. Pausing longer than those steps hands the
    lock to whoever waits. On PostgreSQL nothing waits on the pruner's locks; the pause only
    keeps its I/O from crowding the workers'.
    ``batch`` is the most rows a transaction deletes; ``target`` the time one should take.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch: int = BATCH,
        window: int = WINDOW,
        pause: float | None = None,
        min_pause: float = 0.03,
        target: float = TARGET_SECONDS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.engine = engine
        sqlite = engine.dialect.name == "sqlite"
        self.postgres = engine.dialect.name == "postgresql"
        self.batch = batch
        self.size = batch
        """The current batch: :data:`BATCH` at most, halved while transactions run long."""
        self.target = target
        self.window = max(window, batch)
        self.pause = 1.0 if pause is None else pause
        self.min_pause = min_pause if sqlite else 0.0
        self.clock = clock
        self._in = BatchStatements(engine.dialect.name).in_list
        self._ids = BatchStatements(engine.dialect.name).ids
        self.transactions = 0
        self.longest = 0.0
        self.held: list[float] = []

    async def prune(self, cutoff: datetime, *, dry_run: bool = False) -> PruneReport:
        """Changes, then attempts, then runs; each step sees what the previous one left."""
        started = self.clock()
        self.transactions, self.longest, self.size = 0, 0.0, self.batch
        self.held = []
        changes = await self._changes(cutoff, dry_run)
        attempts, kept_runs = await self._attempts(cutoff, dry_run)
        runs = await self._runs(cutoff, dry_run, kept_runs)
        return PruneReport(
            cutoff,
            dry_run,
            changes,
            attempts,
            runs,
            self.transactions,
            self.longest,
            self.clock() - started,
            _percentile(self.held, 0.99),
        )

    # -- the steps ----------------------------------------------------------------------

    async def _changes(self, cutoff: datetime, dry_run: bool) -> int:
        x = sync_changes.alias("x")
        lo, hi = sa.bindparam("lo", type_=sa.BigInteger), sa.bindparam("hi", type_=sa.BigInteger)
        when = sa.bindparam("cutoff", type_=UTCDateTime)
        in_window = [x.c.id > lo, x.c.id <= hi, _deletable(x, when)]
        count = sa.select(sa.func.count()).select_from(x).where(*in_window)
        limit = sa.bindparam("limit", type_=sa.Integer)
        pick = sa.select(x.c.id).where(*in_window).order_by(x.c.id).limit(limit)
        delete = (
            sa.delete(sync_changes)
            .where(sync_changes.c.id.in_(pick.scalar_subquery()))
            .returning(sync_changes.c.id)
        )
        first, top = await self._bounds(sync_changes.c.id)
        total, low, span = 0, first - 1, self.window
        while low < top:
            high = min(low + span, top)
            size = self.size
            params = {"lo": low, "hi": high, "cutoff": cutoff, "limit": size}
            if dry_run:
                found = int(await self._read(self._scalar, count, params) or 0)
                total, low = total + found, high
            else:
                gone: list[int] = await self._write(self._scalars, delete, params)
                found = len(gone)
                total += found
                low = max(gone) if found >= size else high
            span = self._next_span(span, found)
        return total

    async def _attempts(self, cutoff: datetime, dry_run: bool) -> tuple[int, set[str]]:
        """Old attempts none of whose changes remains; in a dry run, none that would remain.

        Also returns, in a dry run, the runs that old attempts which stay still name.
        """
        a = sync_attempts.c
        x = sync_changes.alias("x")
        when = sa.bindparam("cutoff", type_=UTCDateTime)
        lo, hi = sa.bindparam("lo", type_=sa.BigInteger), sa.bindparam("hi", type_=sa.BigInteger)
        old = (
            sa.select(a.id, a.change_ids, a.run_id)
            .where(a.id > lo, a.id <= hi, a.attempted_at < when)
            .order_by(a.id)
            .limit(sa.bindparam("limit", type_=sa.Integer))
        )
        remaining = [self._in(x.c.id, "ids")]
        if dry_run:
            remaining.append(~_deletable(x, when))
        alive = sa.select(x.c.id).where(*remaining)
        delete = sa.delete(sync_attempts).where(self._in(a.id, "doomed"))
        kept_runs: set[str] = set()

        async def step(conn: AsyncConnection, params: dict[str, Any]) -> tuple[int, int, int]:
            """(deleted, old rows seen, the last ID seen)."""
            rows = (await conn.execute(old, params)).all()
            if not rows:
                return 0, 0, 0
            named = {row.id: change_ids(row.change_ids) for row in rows}
            wanted = sorted(set().union(*named.values()))
            found: set[int] = set()
            if wanted:
                found = set(
                    (await conn.execute(alive, {**params, "ids": self._ids(wanted)})).scalars()
                )
            doomed = [row.id for row in rows if not named[row.id] & found]
            kept_runs.update(str(row.run_id) for row in rows if named[row.id] & found)
            if doomed and not dry_run:
                await conn.execute(delete, {"doomed": self._ids(doomed)})
            return len(doomed), len(rows), int(rows[-1].id)

        first, top = await self._bounds(a.id)
        total, low, span = 0, first - 1, self.window
        while low < top:
            high = min(low + span, top)
            size = self.size
            params = {"lo": low, "hi": high, "cutoff": cutoff, "limit": size}
            done, seen, last = await (self._read if dry_run else self._write)(step, params)
            total += done
            low = last if seen >= size else high
            span = self._next_span(span, seen)
        return total, kept_runs

    async def _runs(self, cutoff: datetime, dry_run: bool, kept: set[str]) -> int:
        r, a, w = sync_runs.c, sync_attempts.c, sync_workers.c
        when = sa.bindparam("cutoff", type_=UTCDateTime)
        live = sa.select(w.name).where(w.heartbeat_at >= sa.bindparam("live", type_=UTCDateTime))
        ended = sa.or_(
            r.finished_at < when,
            sa.and_(r.finished_at.is_(None), r.worker.not_in(live)),
        )
        named = [a.run_id == r.id] + ([a.attempted_at >= when] if dry_run else [])
        base = [r.started_at < when, ended, ~sa.exists().where(*named)]
        after_t = sa.bindparam("after_t", type_=UTCDateTime)
        after_id = sa.bindparam("after_id", type_=sa.Text)
        keyset = sa.or_(r.started_at > after_t, sa.and_(r.started_at == after_t, r.id > after_id))
        first = sa.select(r.id, r.started_at).where(*base).order_by(r.started_at, r.id)
        limit = sa.bindparam("limit", type_=sa.Integer)
        first = first.limit(limit)
        more = sa.select(r.id, r.started_at).where(*base, keyset).order_by(r.started_at, r.id)
        more = more.limit(limit)
        delete = sa.delete(sync_runs).where(r.id.in_(sa.bindparam("doomed", expanding=True)))
        params: dict[str, Any] = {
            "cutoff": cutoff,
            "live": datetime.now(UTC) - timedelta(seconds=LIVE_WORKER_SECONDS),
        }
        total = 0
        query = first

        async def step(conn: AsyncConnection) -> list[Any]:
            rows = list((await conn.execute(query, params)).all())
            doomed = [row.id for row in rows if row.id not in kept]
            if doomed and not dry_run:
                await conn.execute(delete, {"doomed": doomed})
            nonlocal total
            total += len(doomed)
            return rows

        while True:
            params["limit"] = size = self.size
            rows = await (self._read(step) if dry_run else self._write(step))
            if len(rows) < size:
                return total
            params.update(after_t=rows[-1].started_at, after_id=rows[-1].id)
            query = more

    # -- plumbing ---------------------------------------------------------------------------

    def _next_span(self, span: int, found: int) -> int:
        """Windows that find nothing (young rows) double, up to 4 times :data:`WINDOW`."""
        return self.window if found else min(span * 2, self.window * 4)

    async def _bounds(self, column: Any) -> tuple[int, int]:
        # Two statements: SQLite answers a lone min() or max() from the index, but scans the
        # whole table for both in one (holding the write lock meanwhile, as any connection
        # of kantata-sync's does).
        low = await self._read(self._scalar, sa.select(sa.func.min(column)), {})
        high = await self._read(self._scalar, sa.select(sa.func.max(column)), {})
        return (int(low), int(high)) if low is not None and high is not None else (1, 0)

    @staticmethod
    async def _scalars(conn: AsyncConnection, statement: Any, params: Any) -> list[int]:
        return [int(i) for i in (await conn.execute(statement, params)).scalars()]

    @staticmethod
    async def _scalar(conn: AsyncConnection, statement: Any, params: Any) -> Any:
        return await conn.scalar(statement, params)

    async def _read(self, work: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``work(conn, *args)`` on a connection of its own (on SQLite: the write lock too)."""
        async with translate_errors("pruning the outbox"), self.engine.connect() as conn:
            return await work(conn, *args)

    async def _write(self, work: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``work(conn, *args)`` in a transaction of its own, timed; then give way."""
        async with transaction(self.engine, "pruning the outbox") as conn:
            began = self.clock()
            if self.postgres:
                # Nothing is lost if a crash forgets a prune: it is done again next time. So
                # its commits need not wait for the WAL flush, and release their locks sooner.
                await conn.execute(SYNCHRONOUS_COMMIT_OFF)
            result = await work(conn, *args)
        held = self.clock() - began
        self.transactions += 1
        self.longest = max(self.longest, held)
        self.held.append(held)
        if held > self.target:
            self.size = max(min(MIN_BATCH, self.batch), self.size // 2)
        elif held < self.target / 4:
            self.size = min(self.batch, self.size * 2)
        await asyncio.sleep(max(self.min_pause, held * self.pause))
        return result


async def prune_daily(
    engine: AsyncEngine,
    days: int,
    *,
    interval: float = 86_400.0,
    retry_after: float = 3_600.0,
    pruner: Pruner | None = None,
) -> None:
    """``serve``'s retention: prune at start and then once every ``interval``, until cancelled.

    A failure (the database away, say) is logged and tried again after ``retry_after``.
    """
    log = get_logger()
    pruner = pruner or Pruner(engine)
    while True:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        try:
            report = await pruner.prune(cutoff)
        except Exception as exc:  # a maintenance task: log it, never die of it
            log.error("retention.failed", error=str(exc), retry_in_s=retry_after)
            delay = retry_after
        else:
            log.info("retention.pruned", retention_days=days, **report.fields())
            delay = interval
        await asyncio.sleep(delay)


def describe(report: PruneReport, older_than: str) -> Iterable[str]:
    """What ``prune`` prints."""
    verb = "would prune" if report.dry_run else "pruned"
    stamp = report.cutoff.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    yield (
        f"{verb} {report.changes:,} change(s), {report.attempts:,} attempt(s) and "
        f"{report.runs:,} run(s) older than {older_than} (finished before {stamp})"
    )
    if not report.dry_run:
        yield (
            f"{report.transactions:,} transaction(s) in {report.seconds:.1f} s; the longest "
            f"held the database for {report.longest_transaction_s * 1000:.0f} ms"
        )
