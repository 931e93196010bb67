"""What ``show`` and ``runs`` read: one change with everything that explains it, and the run log.

Mixed into :class:`~worker.store.Store` through :class:`~worker.queries.OutboxQueries`, which
supplies ``engine`` and ``_text``. Every read is a few indexed statements on a short-lived
connection: on SQLite each connection holds the file's write lock while it lasts, so nothing
here keeps one open across a long scan.

The attempt log names the changes a request carried as text (``"12,13,14"``); a change's
attempts are found within its workspace (indexed) by matching ``,12,`` in ``,12,13,14,``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .changes import State
from .db import translate_errors
from .explain import Queued
from .models import sync_attempts, sync_changes, sync_runs

c = sync_changes.c
a = sync_attempts.c
r = sync_runs.c

MAX_PREDECESSORS = 50
"""How far ``show`` follows a chain of superseded changes back."""
MAX_CARRIED = 200
"""How many changes merged into this one's request ``show`` lists."""
RUN_COLUMNS = (
    "id",
    "worker",
    "command",
    "started_at",
    "finished_at",
    "ended_because",
    "claimed",
    "succeeded",
    "failed",
    "invalid",
    "retried",
    "requests",
    "duration_s",
)


@dataclass(frozen=True, slots=True)
class ChangeHistory:
    """One change and everything read to explain it."""

    change: dict[str, Any]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    workspace: list[Queued] = field(default_factory=list)
    """The changes of its workspace that can hold it back (see :func:`why_not_sent`)."""
    predecessors: list[int] = field(default_factory=list)
    """The changes it superseded, newest first."""
    carried: list[int] = field(default_factory=list)
    """The changes merged into its request."""

    def queued(self) -> Queued:
        """The change itself, as :func:`~worker.explain.why_not_sent` takes it."""
        row = self.change
        return Queued(
            id=row["id"],
            state=str(row["state"]),
            attempts=int(row["attempts"] or 0),
            next_attempt_at=row["next_attempt_at"],
            lease_owner=row["lease_owner"],
            lease_expires_at=row["lease_expires_at"],
        )


def carried_by(change_id: int) -> sa.ColumnElement[bool]:
    """The attempts whose request carried ``change_id``."""
    listed = sa.literal(",", sa.Text) + a.change_ids + sa.literal(",", sa.Text)
    return listed.like(sa.literal(f"%,{int(change_id)},%", sa.Text))


def last_request_id() -> sa.ScalarSelect[Any]:
    """Per row of ``sync_changes``: Kantata's ``X-Request-Id`` of its latest answered request."""
    listed = sa.literal(",", sa.Text) + a.change_ids + sa.literal(",", sa.Text)
    pattern = sa.literal("%,", sa.Text) + sa.cast(c.id, sa.Text) + sa.literal(",%", sa.Text)
    return (
        sa.select(a.request_id)
        .where(a.workspace_id == c.workspace_id, a.request_id.is_not(None), listed.like(pattern))
        .order_by(a.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def decoded(value: Any) -> Any:
    """Producer text that SQLite handed over as bytes, decoded (bad UTF-8 replaced)."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


class HistoryQueries:
    """The reads of ``show`` and ``runs``."""

    engine: AsyncEngine

    def _text(self, column: sa.Column[Any]) -> sa.ColumnElement[Any]:
        raise NotImplementedError

    def _change_columns(self) -> list[Any]:
        producer = {"kind", "payload", "source_ref"}
        return [self._text(col) if col.name in producer else col for col in sync_changes.c]

    async def change_history(
        self, now: datetime, change_id: int | None = None, source_ref: str | None = None
    ) -> ChangeHistory | None:
        """The change with ``change_id`` (or ``source_ref``) and its history; None if none."""
        where = c.id == change_id if change_id is not None else c.source_ref == source_ref
        async with translate_errors("reading a change"), self.engine.connect() as conn:
            found = (await conn.execute(sa.select(*self._change_columns()).where(where))).first()
            if found is None:
                return None
            change = {key: decoded(value) for key, value in found._mapping.items()}
            attempts = await self._attempts(conn, change)
            run_ids = sorted({str(attempt["run_id"]) for attempt in attempts})
            runs = await self._runs_named(conn, run_ids)
            workspace = await self._holding_back(conn, change, now)
            predecessors = await self._predecessors(conn, int(change["id"]))
            carried = (
                await conn.execute(
                    sa.select(c.id)
                    .where(c.merged_into_id == change["id"])
                    .order_by(c.id)
                    .limit(MAX_CARRIED)
                )
            ).scalars()
            return ChangeHistory(
                change, attempts, runs, workspace, predecessors, [int(i) for i in carried]
            )

    async def _attempts(
        self, conn: AsyncConnection, change: dict[str, Any]
    ) -> list[dict[str, Any]]:
        where = [carried_by(int(change["id"]))]
        if type(change["workspace_id"]) is int:
            where.append(a.workspace_id == change["workspace_id"])
        query = (
            sa.select(
                a.id,
                a.attempted_at,
                a.run_id,
                a.endpoint,
                a.http_status,
                a.duration_ms,
                a.error_type,
                a.error_message,
                a.request_id,
                a.change_ids,
            )
            .where(*where)
            .order_by(a.id)
        )
        return [dict(row._mapping) for row in await conn.execute(query)]

    async def _runs_named(self, conn: AsyncConnection, run_ids: list[str]) -> list[dict[str, Any]]:
        if not run_ids:
            return []
        query = (
            sa.select(*(sync_runs.c[name] for name in RUN_COLUMNS))
            .where(r.id.in_(run_ids))
            .order_by(r.started_at, r.id)
        )
        return [dict(row._mapping) for row in await conn.execute(query)]

    async def _holding_back(
        self, conn: AsyncConnection, change: dict[str, Any], now: datetime
    ) -> list[Queued]:
        """The first change of each kind that can hold ``change`` back in its workspace."""
        if change["state"] != State.PENDING or type(change["workspace_id"]) is not int:
            return []
        mine = int(change["id"])
        same = [c.workspace_id == change["workspace_id"], c.id != mine]
        kinds = [
            [c.state == State.IN_FLIGHT],
            [c.state == State.PENDING, c.next_attempt_at > now],
            [c.state == State.PENDING, c.id < mine],
        ]
        found: list[Queued] = []
        for kind in kinds:
            query = (
                sa.select(
                    c.id,
                    c.state,
                    c.attempts,
                    c.next_attempt_at,
                    c.lease_owner,
                    c.lease_expires_at,
                )
                .where(*same, *kind)
                .order_by(c.id)
                .limit(1)
            )
            row = (await conn.execute(query)).first()
            if row is not None:
                found.append(Queued(*row))
        return found

    async def _predecessors(self, conn: AsyncConnection, change_id: int) -> list[int]:
        chain: list[int] = []
        current = change_id
        while len(chain) < MAX_PREDECESSORS:
            query = sa.select(c.id).where(c.superseded_by == current).order_by(c.id.desc())
            previous = (await conn.execute(query.limit(1))).scalar()
            if previous is None or previous in chain or previous == change_id:
                break
            chain.append(int(previous))
            current = int(previous)
        return chain

    async def runs(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` runs of the run log, newest first."""
        query = (
            sa.select(*(sync_runs.c[name] for name in RUN_COLUMNS))
            .order_by(r.started_at.desc(), r.id.desc())
            .limit(limit)
        )
        async with translate_errors("reading the run log"), self.engine.connect() as conn:
            return [dict(row._mapping) for row in await conn.execute(query)]
