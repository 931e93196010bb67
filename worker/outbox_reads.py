"""Read-only views of the outbox for ``plan`` and ``verify``: nothing here takes or writes a row.

``plan`` needs what the next claims would take, without taking it: the due pending changes of
the workspaces a claim may touch (nothing of theirs in flight or waiting for a retry), with the
claim's own eligibility (:func:`worker.claims.next_in_line`). ``verify`` streams, a chunk of
workspaces at a time in workspace order, the rows that make up their desired state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .changes import ClaimedRow, State
from .claims import next_in_line
from .db import translate_errors
from .desired import OutboxRow
from .models import sync_changes
from .validation import decode_payload, validate_kind, validate_payload

c = sync_changes.c
IN_CHUNK = 500
"""IDs bound into one ``IN`` list at most."""


def _due(now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now)


class OutboxReader:
    """The read-only queries of ``plan`` and ``verify`` on one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def _text(self, column: sa.Column[Any]) -> sa.ColumnElement[Any]:
        # As the claim reads producer columns: as bytes on SQLite, where a TEXT column may
        # hold bytes that are not UTF-8 (validation then names the column).
        if self.dialect == "sqlite":
            return sa.cast(column, sa.LargeBinary).label(column.name)
        return column

    def _claimable(self) -> list[Any]:
        return [
            c.id,
            c.workspace_id,
            self._text(c.kind),
            self._text(c.payload),
            self._text(c.source_ref),
            c.attempts,
            c.lease_token,
            c.http_status,
        ]

    async def due_changes(self, now: datetime, limit: int | None = None) -> list[ClaimedRow]:
        """The pending changes a claim at ``now`` may take, in ID order, as a claim reads them.

        With ``limit``: the oldest ``limit`` of them name the workspaces, and every due change
        of those workspaces comes back (a claim takes workspaces whole where it can).
        """
        eligible = sa.and_(c.state == State.PENDING, _due(now), *next_in_line(now))
        query = sa.select(*self._claimable()).where(eligible).order_by(c.id)
        async with translate_errors("reading the queue"), self.engine.connect() as conn:
            if limit is None:
                rows = (await conn.execute(query)).all()
                return [ClaimedRow(*row) for row in rows]
            first = sa.select(c.workspace_id).where(eligible).order_by(c.id).limit(limit)
            workspaces = list(dict.fromkeys((await conn.execute(first)).scalars().all()))
            found: list[ClaimedRow] = []
            for start in range(0, len(workspaces), IN_CHUNK):
                chunk = workspaces[start : start + IN_CHUNK]
                rows = (await conn.execute(query.where(c.workspace_id.in_(chunk)))).all()
                found += [ClaimedRow(*row) for row in rows]
        found.sort(key=lambda row: row.id)
        return found

    async def high_water(self) -> int:
        """The highest change ID so far (0 for an empty outbox)."""
        async with translate_errors("reading the outbox"), self.engine.connect() as conn:
            value = (await conn.execute(sa.select(sa.func.max(c.id)))).scalar()
        return int(value or 0)

    async def synced_workspaces(
        self,
        *,
        workspaces: Sequence[int] = (),
        since: datetime | None = None,
        limit: int | None = None,
        chunk: int = 200,
    ) -> AsyncIterator[list[int]]:
        """Workspaces with a succeeded change, ascending, ``chunk`` at a time.

        ``since``: only those with a change that succeeded at or after it. ``limit``: at most
        this many workspaces in all. Keyset pages, so memory stays flat however many there are.
        """
        # ``state || ''`` keeps the planners off the state index: walking the workspace index
        # in order finds the next chunk without sorting every succeeded row (as in claims.py).
        where: list[sa.ColumnElement[bool]] = [c.state.concat("") == State.SUCCEEDED]
        if workspaces:
            where.append(c.workspace_id.in_(sorted(set(workspaces))))
        if since is not None:
            where.append(c.completed_at >= since)
        after = 0
        left = limit
        while left is None or left > 0:
            size = chunk if left is None else min(chunk, left)
            query = (
                sa.select(c.workspace_id)
                .where(*where, c.workspace_id > after)
                .group_by(c.workspace_id)
                .order_by(c.workspace_id)
                .limit(size)
            )
            async with translate_errors("reading the outbox"), self.engine.connect() as conn:
                ids = [int(w) for w in (await conn.execute(query)).scalars().all()]
            if not ids:
                return
            yield ids
            after = ids[-1]
            if left is not None:
                left -= len(ids)
            if len(ids) < size:
                return

    async def history(self, workspace_ids: Sequence[int]) -> list[OutboxRow]:
        """The succeeded, pending and in-flight changes of these workspaces, by workspace, ID.

        Succeeded payloads were validated when they were claimed and are only parsed; pending
        and in-flight ones are validated, so that one that will turn out invalid sets nothing.
        """
        query = (
            sa.select(
                c.id,
                c.workspace_id,
                self._text(c.kind),
                self._text(c.payload),
                c.state,
                c.completed_at,
            )
            .where(
                c.workspace_id.in_(list(workspace_ids)),
                c.state.in_([State.SUCCEEDED, State.PENDING, State.IN_FLIGHT]),
            )
            .order_by(c.workspace_id, c.id)
        )
        async with translate_errors("reading the outbox"), self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            OutboxRow(
                int(ident),
                int(workspace_id),
                _decoded(kind),
                _payload(state, kind, payload),
                str(state),
                completed_at,
            )
            for ident, workspace_id, kind, payload, state, completed_at in rows
            if isinstance(workspace_id, int)
        ]

    async def touched_since(self, workspace_ids: Sequence[int], after_id: int) -> set[int]:
        """Which of these workspaces got a change with an ID above ``after_id``."""
        found: set[int] = set()
        ordered = sorted(set(workspace_ids))
        async with translate_errors("reading the outbox"), self.engine.connect() as conn:
            for start in range(0, len(ordered), IN_CHUNK):
                query = (
                    sa.select(c.workspace_id)
                    .where(c.workspace_id.in_(ordered[start : start + IN_CHUNK]), c.id > after_id)
                    .distinct()
                )
                found.update(int(w) for w in (await conn.execute(query)).scalars().all())
        return found


def _decoded(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _payload(state: object, kind: object, raw: object) -> object:
    """A row's payload as a dict, or None where it cannot set anything."""
    if state == State.SUCCEEDED:
        try:
            text = bytes(raw) if isinstance(raw, bytearray | memoryview) else raw
            return orjson.loads(text) if isinstance(text, str | bytes) else None
        except orjson.JSONDecodeError:
            return None
    try:
        return validate_payload(validate_kind(_decoded(kind)), decode_payload(raw))
    except Exception:  # an invalid pending change sets nothing: it will never be sent
        return None
