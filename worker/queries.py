"""The operator's side of the outbox: counts, the report, and ``retry``/``cancel``.

Mixed into :class:`~worker.store.Store`, which supplies ``engine`` and ``_text``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .changes import State
from .db import transaction, translate_errors
from .models import sync_changes

c = sync_changes.c


@dataclass(frozen=True, slots=True)
class Filters:
    """Which changes an operator means, for ``report``, ``retry`` and ``cancel``."""

    states: tuple[State, ...] = ()
    workspace_ids: tuple[int, ...] = ()
    ids: tuple[int, ...] = ()
    source_refs: tuple[str, ...] = ()
    error_types: tuple[str, ...] = ()
    since: datetime | None = None

    def where(self) -> list[sa.ColumnElement[bool]]:
        clauses: list[sa.ColumnElement[bool]] = []
        if self.states:
            clauses.append(c.state.in_([str(s) for s in self.states]))
        if self.workspace_ids:
            clauses.append(c.workspace_id.in_(self.workspace_ids))
        if self.ids:
            clauses.append(c.id.in_(self.ids))
        if self.source_refs:
            clauses.append(c.source_ref.in_(self.source_refs))
        if self.error_types:
            clauses.append(c.error_type.in_(self.error_types))
        if self.since is not None:
            clauses.append(c.created_at >= self.since)
        return clauses


class OutboxQueries:
    """Reads and transitions an operator asks for."""

    engine: AsyncEngine

    def _text(self, column: sa.Column[Any]) -> sa.ColumnElement[Any]:
        raise NotImplementedError

    async def counts(self) -> dict[str, int]:
        """Changes per state; every state is present."""
        query = sa.select(c.state, sa.func.count()).group_by(c.state)
        async with translate_errors("counting changes"), self.engine.connect() as conn:
            found = {state: count for state, count in (await conn.execute(query)).all()}
        return {str(state): int(found.get(str(state), 0)) for state in State}

    async def outcome_counts(self) -> list[tuple[str, str | None, int]]:
        """``(state, outcome, count)`` for every combination present, for reconciliation."""
        query = (
            sa.select(c.state, c.outcome, sa.func.count())
            .group_by(c.state, c.outcome)
            .order_by(c.state, c.outcome)
        )
        async with translate_errors("counting changes"), self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(str(state), outcome, int(count)) for state, outcome, count in rows]

    async def oldest_pending(self) -> datetime | None:
        query = sa.select(sa.func.min(c.created_at)).where(c.state == State.PENDING)
        async with translate_errors("reading the queue"), self.engine.connect() as conn:
            value = (await conn.execute(query)).scalar()
        return as_datetime(value)

    async def report(
        self, filters: Filters, limit: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """One dict per change matching ``filters``, in ID order, streamed."""
        query = (
            sa.select(
                c.id,
                self._text(c.source_ref),
                c.workspace_id,
                self._text(c.kind),
                c.state,
                c.outcome,
                c.attempts,
                c.http_status,
                c.error_type,
                c.error_message,
                c.error_field,
                c.merged_into_id,
                c.created_at,
                c.updated_at,
                c.completed_at,
            )
            .where(*filters.where())
            .order_by(c.id)
        )
        if limit is not None:
            query = query.limit(limit)
        async with translate_errors("reading the report"), self.engine.connect() as conn:
            stream = await conn.stream(query.execution_options(yield_per=1000))
            async for row in stream:
                item = dict(row._mapping)
                for key in ("source_ref", "kind"):
                    if isinstance(item[key], bytes):
                        item[key] = item[key].decode("utf-8", errors="replace")
                yield item

    async def retry(self, filters: Filters, now: datetime, dry_run: bool) -> list[int]:
        """Put matching failed, invalid or cancelled changes back to pending, attempts reset."""
        allowed = (State.FAILED, State.INVALID, State.CANCELLED)
        return await self._transition(
            filters,
            allowed,
            {
                "state": State.PENDING,
                "attempts": 0,
                "next_attempt_at": None,
                "outcome": None,
                "completed_at": None,
                "updated_at": now,
            },
            dry_run,
        )

    async def cancel(self, filters: Filters, now: datetime, dry_run: bool) -> list[int]:
        """Cancel matching pending changes; in-flight ones are left to finish."""
        return await self._transition(
            filters,
            (State.PENDING,),
            {"state": State.CANCELLED, "completed_at": now, "updated_at": now},
            dry_run,
        )

    async def _transition(
        self,
        filters: Filters,
        allowed: tuple[State, ...],
        values: dict[str, Any],
        dry_run: bool,
    ) -> list[int]:
        where = [*filters.where(), c.state.in_([str(s) for s in allowed])]
        async with transaction(self.engine, "updating changes") as conn:
            if dry_run:
                query = sa.select(c.id).where(*where).order_by(c.id)
                return list((await conn.execute(query)).scalars().all())
            result = await conn.execute(
                sa.update(sync_changes).where(*where).values(**values).returning(c.id)
            )
            return sorted(result.scalars().all())


def as_datetime(value: object) -> datetime | None:
    # min() and coalesce() keep the column type, so values arrive already converted.
    if value is None or isinstance(value, datetime):
        return value
    raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
