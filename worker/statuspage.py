"""What the status page and the HTML report show, read from the database.

``serve`` answers ``GET /`` with a read-only page (:class:`StatusSource`): the queue by state,
what finished and what failed over the last hour, the latest failures with Kantata's
messages, the live workers and the shared rate budgets. This module gathers those values with
read-only queries (async, over the store) into the values of :mod:`worker.statusdata`;
:mod:`worker.statushtml` draws them, as a pure function. ``report --format html`` can draw
the same charts from :func:`gather_summary`.

Everything here reads. The throughput query scans the finished rows (``completed_at`` has no
index): the whole page takes about 0.5 s to gather on a SQLite outbox of 1,000,000 rows, so
:class:`StatusSource` reads at most once every two seconds, however many browsers ask.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .coordination import Coordinator
from .db import translate_errors
from .models import STATES, sync_changes
from .statusdata import (
    BUCKET,
    DEAD_AFTER,
    FAILURE_STATES,
    FINAL_STATES,
    LATEST_FAILURES,
    WINDOW,
    Failure,
    ReportSummary,
    StatusData,
    Throughput,
    budgets_from,
    fold_buckets,
)
from .store import Store

c = sync_changes.c


def _as_text(engine: AsyncEngine, column: sa.Column[Any]) -> sa.ColumnElement[Any]:
    # SQLite lets producers store anything in any column (a BLOB workspace ID, bytes that are
    # not UTF-8): read producer columns as bytes there and decode them ourselves.
    if engine.dialect.name == "sqlite":
        return sa.cast(column, sa.LargeBinary).label(column.name)
    return column


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _bucket(engine: AsyncEngine, start: datetime, width: int) -> sa.ColumnElement[int]:
    """The bucket index of ``completed_at``: whole ``width``-second steps after ``start``."""
    origin = sa.literal(int(start.timestamp()), sa.Integer)
    step = sa.literal(width, sa.Integer)
    if engine.dialect.name == "postgresql":
        epoch = sa.extract("epoch", c.completed_at)
        return sa.cast(sa.func.floor((epoch - origin) / step), sa.Integer)
    # Whole seconds, truncated: SQLite's date functions round to milliseconds, which would
    # move 09:31:59.9999 into the next minute.
    whole = sa.func.substr(c.completed_at, 1, 19)
    seconds = sa.cast(sa.func.strftime("%s", whole), sa.Integer)
    return (seconds - origin) // step  # the filter keeps it non-negative: floor division


async def throughput(
    engine: AsyncEngine,
    now: datetime,
    *,
    window: timedelta = WINDOW,
    bucket: timedelta = BUCKET,
    where: Sequence[sa.ColumnElement[bool]] = (),
) -> Throughput:
    """Changes finished in ``window`` up to ``now``, counted per ``bucket`` in the database.

    Buckets are aligned to whole multiples of the bucket width (whole minutes), so the last
    one holds the current, partial one."""
    width = max(int(bucket.total_seconds()), 1)
    count = max(int(window.total_seconds()) // width, 1)
    epoch = int(now.timestamp())
    start = datetime.fromtimestamp(epoch - epoch % width - (count - 1) * width, UTC)
    inner = (
        sa.select(
            _bucket(engine, start, width).label("bucket"),
            c.state.label("state"),
            c.error_type.label("error_type"),
        )
        .where(c.state.in_(FINAL_STATES), c.completed_at >= start, *where)
        .subquery()
    )
    query = sa.select(inner.c.bucket, inner.c.state, inner.c.error_type, sa.func.count()).group_by(
        inner.c.bucket, inner.c.state, inner.c.error_type
    )
    async with translate_errors("reading the throughput"), engine.connect() as conn:
        rows = [(int(b), str(s), e, int(n)) for b, s, e, n in await conn.execute(query)]
    by_state, by_type = fold_buckets(rows, count)
    return Throughput(start, width, by_state, by_type)


async def state_counts(
    engine: AsyncEngine, where: Sequence[sa.ColumnElement[bool]] = ()
) -> dict[str, int]:
    """Changes per state, every state present."""
    query = sa.select(c.state, sa.func.count()).where(*where).group_by(c.state)
    async with translate_errors("counting changes"), engine.connect() as conn:
        found = {str(state): int(n) for state, n in await conn.execute(query)}
    return {state: found.get(state, 0) for state in STATES}


async def outcome_counts(
    engine: AsyncEngine, where: Sequence[sa.ColumnElement[bool]] = ()
) -> tuple[tuple[str, str | None, int], ...]:
    """``(state, outcome, count)`` for every combination present."""
    query = (
        sa.select(c.state, c.outcome, sa.func.count())
        .where(*where)
        .group_by(c.state, c.outcome)
        .order_by(c.state, c.outcome)
    )
    async with translate_errors("counting changes"), engine.connect() as conn:
        return tuple((str(s), o, int(n)) for s, o, n in await conn.execute(query))


async def oldest_pending(engine: AsyncEngine) -> datetime | None:
    query = sa.select(sa.func.min(c.created_at)).where(c.state == "pending")
    async with translate_errors("reading the queue"), engine.connect() as conn:
        value = (await conn.execute(query)).scalar()
    return value if isinstance(value, datetime) else None


async def latest_failures(engine: AsyncEngine, limit: int = LATEST_FAILURES) -> tuple[Failure, ...]:
    """The failed and invalid changes that finished last, newest first."""
    query = (
        sa.select(
            c.id,
            _as_text(engine, c.workspace_id),
            _as_text(engine, c.kind),
            c.state,
            _as_text(engine, c.source_ref),
            c.attempts,
            c.http_status,
            c.error_type,
            c.error_field,
            c.error_message,
            c.completed_at,
        )
        .where(c.state.in_(FAILURE_STATES))
        .order_by(sa.nulls_last(c.completed_at.desc()), c.id.desc())
        .limit(limit)
    )
    async with translate_errors("reading the failures"), engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return tuple(
        Failure(
            id=int(row.id),
            workspace_id=_text(row.workspace_id) or "",
            kind=_text(row.kind) or "",
            state=str(row.state),
            source_ref=_text(row.source_ref),
            attempts=int(row.attempts or 0),
            http_status=row.http_status,
            error_type=row.error_type,
            error_field=row.error_field,
            error_message=row.error_message,
            completed_at=row.completed_at,
        )
        for row in rows
    )


async def gather_status(
    store: Store,
    now: datetime,
    *,
    activity: str | None = None,
    dead_after: float = DEAD_AFTER,
    window: timedelta = WINDOW,
    bucket: timedelta = BUCKET,
    failures: int = LATEST_FAILURES,
) -> StatusData:
    """Everything the status page shows, read from ``store``'s database as of ``now``."""
    engine = store.engine
    coordinator = Coordinator(engine)
    counts = await state_counts(engine)
    oldest = await oldest_pending(engine)
    flow = await throughput(engine, now, window=window, bucket=bucket)
    latest = await latest_failures(engine, failures)
    live, dead = await coordinator.workers(now, dead_after)
    budgets = budgets_from(await coordinator.budgets(), now)
    return StatusData(
        generated_at=now,
        counts=counts,
        oldest_pending_age=max((now - oldest).total_seconds(), 0.0) if oldest else None,
        throughput=flow,
        failures=latest,
        workers=tuple(live),
        dead_workers=dead,
        budgets=budgets,
        activity=activity,
    )


async def gather_summary(
    store: Store,
    now: datetime,
    *,
    where: Sequence[sa.ColumnElement[bool]] = (),
    scope: str = "all changes",
    window: timedelta = timedelta(days=1),
    bucket: timedelta = timedelta(hours=1),
) -> ReportSummary:
    """The head of an HTML report on the changes matching ``where`` (e.g. ``Filters.where()``):
    counts per state and outcome, and what finished per ``bucket`` over ``window``."""
    engine = store.engine
    return ReportSummary(
        generated_at=now,
        counts=await state_counts(engine, where),
        outcomes=await outcome_counts(engine, where),
        throughput=await throughput(engine, now, window=window, bucket=bucket, where=where),
        scope=scope,
    )


def _retrieve(task: asyncio.Task[StatusData]) -> None:
    """Mark a reading's error as seen: the waiters that timed out never will."""
    if not task.cancelled():
        task.exception()


def _utcnow() -> datetime:
    return datetime.now(UTC)


class StatusSource:
    """What the HTTP listener needs to answer ``GET /``: the store, and the secrets (the API
    token) that must never appear on the page, whatever the database holds.

    However many browsers ask at once, the database is read at most once every
    ``fresh_for`` seconds: requests that arrive while the values are being read wait for
    that reading, and for ``fresh_for`` seconds after it they get its values.
    """

    def __init__(
        self,
        store: Store,
        secrets: Iterable[str] = (),
        *,
        dead_after: float = DEAD_AFTER,
        timeout: float = 10.0,
        fresh_for: float = 2.0,
        clock: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.secrets = tuple(s for s in secrets if s)
        self.dead_after = dead_after
        self.timeout = timeout
        self.fresh_for = fresh_for
        self.clock = clock
        self.monotonic = monotonic
        self._reading: asyncio.Task[StatusData] | None = None
        self._last: tuple[float, StatusData] | None = None

    async def gather(self, activity: str | None = None) -> StatusData:
        """The page's values; TimeoutError after :attr:`timeout` seconds, DatabaseError."""
        if self._last is not None and self.monotonic() - self._last[0] < self.fresh_for:
            return replace(self._last[1], activity=activity)
        if self._reading is None:
            self._reading = asyncio.create_task(self._read())
            self._reading.add_done_callback(_retrieve)
        reading = self._reading
        # One waiter giving up (a closed connection) must not cancel the others' reading.
        data = await asyncio.wait_for(asyncio.shield(reading), self.timeout)
        return replace(data, activity=activity)

    async def close(self) -> None:
        """Cancel a reading still under way (the listener is stopping)."""
        reading, self._reading = self._reading, None
        if reading is not None:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    async def _read(self) -> StatusData:
        try:
            data = await gather_status(self.store, self.clock(), dead_after=self.dead_after)
        finally:
            self._reading = None
        self._last = (self.monotonic(), data)
        return data
