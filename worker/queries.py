"""The operator's side of the outbox: counts, the report, and ``retry``/``cancel``.

Mixed into :class:`~worker.store.Store`, which supplies ``engine`` and ``_text``; the reads of
``show`` and ``runs`` come in from :class:`~worker.history.HistoryQueries`.

On SQLite every connection holds the file's write lock while it lasts, so the report reads a
page of rows at a time, each on a connection of its own: a report piped into a slow reader
never holds up a worker's write-back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .changes import State
from .db import transaction, translate_errors
from .history import HistoryQueries, decoded, last_request_id
from .models import sync_changes

c = sync_changes.c
REPORT_PAGE = 1000
"""Rows the report reads per connection."""
MAX_REASON = 500
"""The longest reason an operator's note keeps (characters)."""
RETRYABLE = (State.FAILED, State.INVALID, State.CANCELLED)


def note_line(action: str, operator: str, reason: str | None, now: datetime) -> str:
    """Pure: one line of ``operator_note``: when, what, who, and why if given.

    Whitespace in the reason (newlines too) is folded to single spaces, so that each action
    stays one line, and a reason longer than :data:`MAX_REASON` is cut with an ellipsis.
    """
    stamp = now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    who = " ".join(operator.split()) or "(unknown)"
    line = f"{stamp} {action} by {who}"
    why = " ".join((reason or "").split())
    if len(why) > MAX_REASON:
        why = why[: MAX_REASON - 1] + "…"
    return f"{line}: {why}" if why else line


def appended_note(line: str) -> sa.ColumnElement[Any]:
    """``operator_note`` with ``line`` added as its last line."""
    note = sa.bindparam("operator_note_line", line, type_=sa.Text)
    return sa.case(
        (c.operator_note.is_(None), note),
        else_=c.operator_note + sa.literal("\n", sa.Text) + note,
    )


@dataclass(frozen=True, slots=True)
class Filters:
    """Which changes an operator means, for ``report``, ``retry`` and ``cancel``."""

    states: tuple[State, ...] = ()
    workspace_ids: tuple[int, ...] = ()
    ids: tuple[int, ...] = ()
    source_refs: tuple[str, ...] = ()
    error_types: tuple[str, ...] = ()
    since: datetime | None = None
    superseded: bool | None = None
    """False: leave out the changes another has superseded (history, not work); None: all."""

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
        if self.superseded is not None:
            has = c.superseded_by.is_not(None)
            clauses.append(has if self.superseded else ~has)
        return clauses


class OutboxQueries(HistoryQueries):
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
        """One dict per change matching ``filters``, in ID order, a page at a time."""
        columns = (
            c.id,
            self._text(c.source_ref),
            c.workspace_id,
            self._text(c.kind),
            self._text(c.payload),
            c.state,
            c.outcome,
            c.attempts,
            c.http_status,
            c.error_type,
            c.error_message,
            c.error_field,
            c.merged_into_id,
            c.superseded_by,
            c.operator_note,
            c.created_at,
            c.updated_at,
            c.completed_at,
            last_request_id().label("last_request_id"),
        )
        after: int | None = None
        left = limit
        while left is None or left > 0:
            page = REPORT_PAGE if left is None else min(REPORT_PAGE, left)
            where = filters.where() + ([c.id > after] if after is not None else [])
            query = sa.select(*columns).where(*where).order_by(c.id).limit(page)
            async with translate_errors("reading the report"), self.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
            for row in rows:
                item = dict(row._mapping)
                for key in ("source_ref", "kind", "payload"):
                    item[key] = decoded(item[key])
                yield item
            if len(rows) < page:
                return
            after = int(rows[-1].id)
            left = None if left is None else left - len(rows)

    async def retry(
        self, filters: Filters, now: datetime, dry_run: bool, note: str | None = None
    ) -> list[int]:
        """Put matching failed, invalid or cancelled changes back to pending, as if new.

        Attempts are reset and the last answer's fields (status, error, result) cleared: the
        attempt log keeps them. A superseded change stays as it is (its successor replaced
        it). ``note``: a line for ``operator_note`` (:func:`note_line`).
        """
        return await self._transition(
            filters,
            RETRYABLE,
            {
                "state": State.PENDING,
                "attempts": 0,
                "next_attempt_at": None,
                "outcome": None,
                "http_status": None,
                "error_type": None,
                "error_message": None,
                "error_field": None,
                "result": None,
                "merged_into_id": None,
                "completed_at": None,
                "updated_at": now,
            },
            dry_run,
            note,
            [c.superseded_by.is_(None)],
        )

    async def cancel(
        self, filters: Filters, now: datetime, dry_run: bool, note: str | None = None
    ) -> list[int]:
        """Cancel matching pending changes; in-flight ones are left to finish."""
        return await self._transition(
            filters,
            (State.PENDING,),
            {"state": State.CANCELLED, "completed_at": now, "updated_at": now},
            dry_run,
            note,
        )

    async def _transition(
        self,
        filters: Filters,
        allowed: tuple[State, ...],
        values: dict[str, Any],
        dry_run: bool,
        note: str | None = None,
        also: list[sa.ColumnElement[bool]] | None = None,
    ) -> list[int]:
        where = [*filters.where(), c.state.in_([str(s) for s in allowed]), *(also or [])]
        if note is not None:
            values = {**values, "operator_note": appended_note(note)}
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
