"""``enqueue --supersede``: a corrected change replaces a failed, invalid or cancelled one.

``source_ref`` is unique when set, and it names the producer's *current* change: a producer
reconciling by its key should find the change that counts. So the replaced row gives its
``source_ref`` up (it becomes NULL) to the new row, and points at it through ``superseded_by``;
it keeps everything else, its attempts included, and gets a line in ``operator_note``. ``show``
follows ``superseded_by`` back to list a change's predecessors. A superseded row is never
retried (``retry`` skips it) and is left out of ``report --format jsonl``, so that a correction
loop cannot send it again.

A change that is pending, in flight or succeeded is not replaced: the line is rejected with the
reason. What to do with each line is decided by :func:`plan_supersede` (pure); the reads and
writes happen in one transaction, with the rows that hold the keys locked on PostgreSQL (SQLite
takes its write lock up front).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .changes import NewChange, State
from .db import transaction
from .models import sync_changes
from .queries import appended_note, note_line

c = sync_changes.c
SUPERSEDABLE = frozenset({State.FAILED, State.INVALID, State.CANCELLED})
CHUNK = 500


@dataclass(frozen=True, slots=True)
class Holder:
    """The row that holds a ``source_ref`` now."""

    id: int
    state: str


@dataclass(frozen=True, slots=True)
class SupersedePlan:
    """What becomes of each line: inserted (replacing a row or not), or rejected."""

    insert: list[tuple[int, NewChange]] = field(default_factory=list)
    """(line number, change), in the order given."""
    replaces: dict[int, int] = field(default_factory=dict)
    """line number -> the ID of the change its change replaces."""
    rejected: list[tuple[int, str]] = field(default_factory=list)
    """(line number, reason)."""


def plan_supersede(
    lines: Sequence[tuple[int, NewChange]], holders: Mapping[str, Holder]
) -> SupersedePlan:
    """Pure: which lines go in, which rows they replace, and why the others are refused.

    ``holders`` maps each ``source_ref`` already taken to the row that holds it. A line needs a
    ``source_ref`` (without one it names nothing to replace); one that no row holds goes in as
    a new change; one held by a failed, invalid or cancelled row replaces that row; one held
    by a pending, in-flight or succeeded row is rejected, naming the row and its state.
    """
    plan = SupersedePlan()
    for number, change in lines:
        ref = change.source_ref
        if ref is None:
            plan.rejected.append(
                (
                    number,
                    "source_ref: is required with --supersede (it names the change to replace; "
                    "enqueue a change without one without --supersede)",
                )
            )
            continue
        holder = holders.get(ref)
        if holder is not None and holder.state not in SUPERSEDABLE:
            plan.rejected.append(
                (
                    number,
                    f"source_ref: change {holder.id} is {holder.state}; only a failed, invalid "
                    "or cancelled change can be superseded",
                )
            )
            continue
        plan.insert.append((number, change))
        if holder is not None:
            plan.replaces[number] = holder.id
    return plan


@dataclass(frozen=True, slots=True)
class SupersedeResult:
    """What ``enqueue --supersede`` did."""

    ids: list[int]
    """The new changes' IDs, in line order."""
    replaced: dict[int, int]
    """old ID -> new ID."""
    rejected: list[tuple[int, str]]


async def enqueue_superseding(
    engine: AsyncEngine,
    lines: Sequence[tuple[int, NewChange]],
    operator: str,
    now: datetime,
) -> SupersedeResult:
    """Insert ``lines``, each replacing the row that holds its ``source_ref`` if it may.

    All or nothing, in one transaction: the holders are read (locked on PostgreSQL), the
    replaced rows give up their ``source_ref``, the new rows go in, and the replaced rows
    point at them.
    """
    refs = [change.source_ref for _, change in lines if change.source_ref is not None]
    async with transaction(engine, "enqueueing changes") as conn:
        holders: dict[str, Holder] = {}
        for start in range(0, len(refs), CHUNK):
            query = sa.select(c.id, c.source_ref, c.state).where(
                c.source_ref.in_(refs[start : start + CHUNK])
            )
            if engine.dialect.name == "postgresql":
                query = query.with_for_update()
            for row_id, ref, state in await conn.execute(query):
                holders[str(ref)] = Holder(int(row_id), str(state))
        plan = plan_supersede(lines, holders)
        old_ids = sorted(plan.replaces.values())
        for start in range(0, len(old_ids), CHUNK):
            await conn.execute(
                sa.update(sync_changes)
                .where(c.id.in_(old_ids[start : start + CHUNK]))
                .values(source_ref=None)
            )
        rows = [_row(change) for _, change in plan.insert]
        ids: list[int] = []
        for start in range(0, len(rows), CHUNK):
            result = await conn.execute(
                sa.insert(sync_changes).returning(c.id, sort_by_parameter_order=True),
                rows[start : start + CHUNK],
            )
            ids.extend(int(i) for i in result.scalars().all())
        new_by_line = {number: ids[i] for i, (number, _) in enumerate(plan.insert)}
        replaced = {old: new_by_line[number] for number, old in plan.replaces.items()}
        if replaced:
            await conn.execute(
                sa.update(sync_changes)
                .where(c.id == sa.bindparam("old_id"))
                .values(
                    superseded_by=sa.bindparam("new_id"),
                    updated_at=now,
                    operator_note=appended_note(""),
                ),
                [
                    {
                        "old_id": old,
                        "new_id": new,
                        "operator_note_line": note_line(
                            f"replaced by change {new} (enqueue --supersede)",
                            operator,
                            None,
                            now,
                        ),
                    }
                    for old, new in sorted(replaced.items())
                ],
            )
    return SupersedeResult(ids, replaced, plan.rejected)


def _row(change: NewChange) -> dict[str, Any]:
    """A new change as the outbox stores it (as :meth:`Store.enqueue` writes it)."""
    return {
        "workspace_id": change.workspace_id,
        "kind": str(change.kind),
        "payload": json.dumps(change.payload, separators=(",", ":")),
        "source_ref": change.source_ref,
    }
