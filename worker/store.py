"""The outbox store: enqueue, claim under a fenced lease, write back, release, report.

Claims take the oldest due pending rows of workspaces that nothing else holds, and never a row
while an earlier row of its workspace waits for a retry, so per-workspace order holds. Each
claim bumps the row's ``lease_token``; every write-back names the token it was given and is
dropped if the row has since been reclaimed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .batches import BatchStatements, unhex, unpack
from .changes import (
    AttemptRecord,
    ClaimedRow,
    Lease,
    NewChange,
    Result,
    RunStats,
    State,
)
from .claims import (
    CLAIM_LOOKAHEAD,
    ClaimStatements,
    blocked_workspaces,
    next_in_line,
    whole_prefixes,
)
from .db import WORKER_APPLICATION_PREFIX, FileWatch, transaction, translate_errors
from .exceptions import DatabaseGone
from .logging import get_logger
from .models import sync_changes, sync_runs
from .queries import OutboxQueries, as_datetime

c = sync_changes.c
log = get_logger()


class Store(OutboxQueries):
    """All reads and writes of the outbox go through here."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._batch = BatchStatements(self.dialect)
        self._claims = ClaimStatements(self.dialect, self._batch, self._text)
        self._lock_rows = (
            sa.select(c.id).where(self._batch.in_list(c.id, "ids")).order_by(c.id).with_for_update()
        )
        self._file = FileWatch(engine.url)

    def check_alive(self) -> None:
        """Raise :class:`DatabaseGone` if the SQLite file was deleted or replaced.

        SQLite goes on writing into a file that was unlinked under it, and every result
        written there would be lost; a run stops instead. A no-op on PostgreSQL.
        """
        if self._file.change() is not None:
            raise DatabaseGone(
                f"the database file {self._file.path} was deleted or replaced while in use"
            )

    def _text(self, column: sa.Column[Any]) -> sa.ColumnElement[Any]:
        # SQLite lets producers store bytes that are not UTF-8 in a TEXT column, and the driver
        # fails the whole fetch on them; read producer columns as bytes and decode ourselves.
        if self.dialect == "sqlite":
            return sa.cast(column, sa.LargeBinary).label(column.name)
        return column

    async def enqueue(self, changes: Sequence[NewChange]) -> list[int]:
        """Insert changes in one transaction; all or nothing."""
        if not changes:
            return []
        rows = [
            {
                "workspace_id": change.workspace_id,
                "kind": str(change.kind),
                "payload": json.dumps(change.payload, separators=(",", ":")),
                "source_ref": change.source_ref,
            }
            for change in changes
        ]
        async with transaction(self.engine, "enqueueing changes") as conn:
            ids: list[int] = []
            for start in range(0, len(rows), 500):
                chunk = rows[start : start + 500]
                result = await conn.execute(
                    sa.insert(sync_changes).returning(c.id, sort_by_parameter_order=True),
                    chunk,
                )
                ids.extend(result.scalars().all())
            return ids

    async def existing_source_refs(self, refs: Sequence[str]) -> set[str]:
        """Which of ``refs`` are already taken (``source_ref`` is unique)."""
        found: set[str] = set()
        async with translate_errors("checking source_ref"), self.engine.connect() as conn:
            for start in range(0, len(refs), 500):
                chunk = list(refs[start : start + 500])
                query = sa.select(c.source_ref).where(c.source_ref.in_(chunk))
                found.update((await conn.execute(query)).scalars().all())
        return found

    async def reclaim_expired(
        self, conn: AsyncConnection, now: datetime, dead_after: float | None = None
    ) -> int:
        """Return to pending what expired leases hold, and what dead workers hold."""
        if dead_after is None:
            result = await conn.execute(self._claims.reclaim, {"now": now})
        else:
            cutoff = now - timedelta(seconds=dead_after)
            result = await conn.execute(self._claims.reclaim_dead, {"now": now, "dead": cutoff})
        return result.rowcount

    async def claim(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        now: datetime,
        dead_after: float | None = None,
    ) -> list[ClaimedRow]:
        """Lease up to ``limit`` due changes, oldest first, whole workspace prefixes only.

        The oldest ``limit`` eligible changes name the workspaces; their later due changes
        are then taken too, workspace by workspace, while the batch has room. Several queued
        updates of one workspace so travel together and merge into one PUT.
        """
        claims = self._claims
        async with transaction(self.engine, "claiming changes") as conn:
            if self.dialect == "postgresql":
                await self._end_stalled(conn, timedelta(seconds=lease_seconds))
                await conn.execute(claims.serialise)
            await self.reclaim_expired(conn, now, dead_after)
            found = await self._rows(conn, claims.first, {"now": now, "limit": limit})
            if not found:
                return []
            # SQLite stores anything anywhere: only integer workspace IDs can name a workspace
            # to look ahead in (a row with any other is taken alone and found invalid).
            workspaces = list(dict.fromkeys(w for _, w in found if type(w) is int))
            ahead = workspaces[: max(1, limit // CLAIM_LOOKAHEAD)]
            params = {"now": now, "limit": limit, "ahead": self._batch.ids(ahead)}
            queued = await self._rows(conn, claims.queued, params)
            ids = whole_prefixes(queued, found, limit)
            params = {
                "ids": self._batch.ids(ids),
                "owner": owner,
                "expires": now + timedelta(seconds=lease_seconds),
                "now": now,
            }
            taken: Sequence[Sequence[Any]]
            if claims.taken is None:
                taken = (await conn.execute(claims.take, params)).all()
            else:
                await conn.execute(claims.take, params)
                taken = await self._rows(conn, claims.taken, params)
            rows = [ClaimedRow(*row) for row in taken]
        rows.sort(key=lambda row: row.id)
        return rows

    async def _end_stalled(self, conn: AsyncConnection, stuck_after: timedelta) -> None:
        """End other workers' sessions stuck in a transaction longer than a lease (see
        :func:`~worker.claims._end_stalled`), before waiting for the claim lock they may hold."""
        params = {"prefix": WORKER_APPLICATION_PREFIX, "stuck_after": stuck_after}
        for pid, name, ended in await conn.execute(self._claims.end_stalled, params):
            log.warning("claim.ended_stalled_session", pid=pid, session=name, ended=ended)

    async def _rows(
        self, conn: AsyncConnection, statement: Any, params: dict[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """A claim query's rows, in ID order; on SQLite they come :func:`packed` in one."""
        if self.dialect != "sqlite":
            return (await conn.execute(statement, params)).all()
        rows = [
            [unhex(value) for value in row]
            for row in unpack((await conn.execute(statement, params)).scalar())
        ]
        rows.sort(key=lambda row: row[0])
        return rows

    async def extend(
        self, leases: Sequence[Lease], lease_seconds: float, now: datetime
    ) -> set[int]:
        """Push the expiry of still-held leases forward, in one statement; return those held."""
        if not leases:
            return set()
        held = sa.tuple_(c.id, c.lease_token).in_(
            sorted((lease.change_id, lease.token) for lease in leases)
        )
        if self.dialect == "postgresql":
            # Lock in ID order, as every other writer does, so that writers never deadlock.
            locked = sa.select(c.id).where(held).order_by(c.id).with_for_update()
            held = c.id.in_(locked.scalar_subquery())
        async with transaction(self.engine, "extending leases") as conn:
            result = await conn.execute(
                sa.update(sync_changes)
                .where(held, c.state == State.IN_FLIGHT)
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
                .returning(c.id)
            )
            return set(result.scalars().all())

    async def write_batch(
        self,
        results: Sequence[Result],
        releases: Sequence[Lease],
        attempts: Sequence[AttemptRecord],
        now: datetime,
    ) -> list[int]:
        """Results, releases and attempt records in one transaction; return the lost IDs.

        Results and releases are fenced: a row is written only while it is still in flight
        under the lease token it was claimed with. The IDs of results that were not written
        (their lease was taken over) come back, in the order given.
        """
        if not (results or releases or attempts):
            return []
        async with transaction(self.engine, "writing results back") as conn:
            written, _released = await self._write(conn, results, releases, attempts, now)
        return [r.change_id for r in results if r.change_id not in written]

    async def _write(
        self,
        conn: AsyncConnection,
        results: Sequence[Result],
        releases: Sequence[Lease],
        attempts: Sequence[AttemptRecord],
        now: datetime,
    ) -> tuple[set[int], int]:
        """The statements of :meth:`write_batch`: the IDs written and the count released."""
        batch = self._batch
        written: set[int] = set()
        released = 0
        if self.dialect == "postgresql" and (results or releases):
            # Lock in ID order, as every other writer does, so that writers never deadlock.
            ids = sorted({r.change_id for r in results} | {lease.change_id for lease in releases})
            await conn.execute(self._lock_rows, {"ids": ids})
        if results:
            params = {"batch": batch.results(results, now), "now": now}
            if batch.writable is not None:
                found = (await conn.execute(batch.writable, params)).scalar()
                written.update(change_id for (change_id,) in unpack(found))
                await conn.execute(batch.write_back, params)
            else:
                written.update((await conn.execute(batch.write_back, params)).scalars())
        if releases:
            params = {"batch": batch.leases(releases), "now": now}
            released = (await conn.execute(batch.release, params)).rowcount
        if attempts:
            await conn.execute(batch.log_attempts, {"batch": batch.attempts(attempts, now)})
        return written, released

    async def release(self, leases: Sequence[Lease], now: datetime) -> int:
        """Return claimed changes to pending untouched: no attempt is charged."""
        if not leases:
            return 0
        async with transaction(self.engine, "releasing changes") as conn:
            _written, released = await self._write(conn, (), leases, (), now)
        return released

    async def start_run(self, run_id: str, worker: str, command: str, now: datetime) -> None:
        async with transaction(self.engine, "recording the run") as conn:
            await conn.execute(
                sa.insert(sync_runs).values(
                    id=run_id, worker=worker, command=command, started_at=now
                )
            )

    async def finish_run(
        self, run_id: str, stats: RunStats, ended_because: str, now: datetime, duration: float
    ) -> None:
        async with transaction(self.engine, "recording the run") as conn:
            await conn.execute(
                sa.update(sync_runs)
                .where(sync_runs.c.id == run_id)
                .values(
                    finished_at=now,
                    ended_because=ended_because,
                    duration_s=round(duration, 3),
                    **stats.counts(),
                )
            )

    async def next_due(self, now: datetime, horizon: datetime) -> datetime | None:
        """The earliest moment a change becomes claimable, if one does before ``horizon``.

        That is a pending change's retry time, or the lease expiry of an in-flight change
        (whose worker may have died: its changes come back then).
        """
        due_now = sa.select(sa.func.min(sa.func.coalesce(c.next_attempt_at, c.created_at))).where(
            c.state == State.PENDING,
            sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now),
            *next_in_line(now),
        )
        retrying = sa.select(sa.func.min(c.next_attempt_at)).where(
            c.state == State.PENDING,
            c.next_attempt_at > now,
            c.next_attempt_at <= horizon,
            c.workspace_id.not_in(blocked_workspaces(now, waiting=False)),
        )
        expiring = sa.select(sa.func.min(c.lease_expires_at)).where(
            c.state == State.IN_FLIGHT, c.lease_expires_at <= horizon
        )
        async with translate_errors("reading the queue"), self.engine.connect() as conn:
            times = [
                as_datetime((await conn.execute(query)).scalar())
                for query in (due_now, retrying, expiring)
            ]
        return min((t for t in times if t is not None), default=None)
