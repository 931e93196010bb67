"""The claim's SQL: which pending changes a worker may take, and the statements that take them.

A pending change may go only when nothing of its workspace is in flight or waiting for a retry,
so per-workspace order holds whoever claims. The oldest eligible changes name the workspaces;
the first few of those are taken whole (every due change queued for them), so that their
updates can merge. The statements are built once per store and bound at each claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from .batches import BatchStatements, json_safe, packed
from .changes import State
from .models import UTCDateTime, sync_changes, sync_workers

c = sync_changes.c
CLAIM_LOCK_KEY = 0x6B616E74  # serialises claims on PostgreSQL: workspaces never in two hands
CLAIM_LOOKAHEAD = 10
"""A claim keeps whole the first ``batch / CLAIM_LOOKAHEAD`` workspaces it finds."""


class ClaimStatements:
    """The statements of a claim, built once per store; ``now``, ``limit`` and the rest are
    bound at each claim."""

    def __init__(self, dialect: str, batch: BatchStatements, text: Any) -> None:
        now = sa.bindparam("now", type_=UTCDateTime)
        limit = sa.bindparam("limit", type_=sa.Integer)
        due = sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now)
        postgres = dialect == "postgresql"
        self.serialise = sa.select(sa.func.pg_advisory_xact_lock(CLAIM_LOCK_KEY))
        self.end_stalled = _end_stalled()
        self.reclaim = self._reclaim(c.lease_expires_at < now, postgres)
        dead = sa.select(sync_workers.c.name).where(
            sync_workers.c.heartbeat_at < sa.bindparam("dead", type_=UTCDateTime)
        )
        self.reclaim_dead = self._reclaim(
            sa.or_(c.lease_expires_at < now, c.lease_owner.in_(dead)), postgres
        )
        first = (
            sa.select(c.id, c.workspace_id)
            .where(c.state == State.PENDING, due, *next_in_line(now))
            .order_by(c.id)
            .limit(limit)
        )
        # Ordering by ``id + 0`` (sorted afterwards, a few hundred rows) keeps SQLite on the
        # workspace index instead of walking the whole queue in ID order.
        queued = (
            sa.select(c.id, c.workspace_id)
            .where(batch.in_list(c.workspace_id, "ahead"), c.state == State.PENDING, due)
            .order_by(c.id + 0)
            .limit(limit)
        )
        take = (
            sa.update(sync_changes)
            .where(batch.in_list(c.id, "ids"))
            .values(
                state=State.IN_FLIGHT,
                lease_owner=sa.bindparam("owner", type_=sa.Text),
                lease_expires_at=sa.bindparam("expires", type_=UTCDateTime),
                lease_token=c.lease_token + 1,
                updated_at=now,
            )
        )
        self.take: Any
        self.taken: sa.Select[Any] | None = None
        """SQLite: the taken rows, read after :attr:`take` in one :func:`packed` row."""
        if postgres:
            self.first = first.with_for_update(skip_locked=True, of=sync_changes)
            self.queued = queued.with_for_update(skip_locked=True, of=sync_changes)
            self.take = take.returning(
                c.id,
                c.workspace_id,
                text(c.kind),
                text(c.payload),
                text(c.source_ref),
                c.attempts,
                c.lease_token,
                c.http_status,
            )
        else:
            # Every claim query comes back as one row (see packed); the producer's columns
            # as SQLite holds them, bytes included.
            self.first = _packed_ids(first)
            self.queued = _packed_ids(queued)
            self.take = take
            self.taken = packed(
                sa.select(
                    c.id,
                    *(
                        json_safe(column)
                        for column in (
                            c.workspace_id,
                            c.kind,
                            c.payload,
                            c.source_ref,
                            c.attempts,
                            c.lease_token,
                            c.http_status,
                        )
                    ),
                )
                .where(batch.in_list(c.id, "ids"))
                .order_by(c.id)
            )

    @staticmethod
    def _reclaim(taken_over: sa.ColumnElement[bool], postgres: bool) -> Any:
        expired = sa.select(c.id).where(c.state == State.IN_FLIGHT, taken_over).order_by(c.id)
        if postgres:
            # Rows another session holds (a frozen worker's write-back, which PostgreSQL ends
            # after idle_in_transaction_session_timeout) are left for a later claim: a claim
            # never waits on another worker's row locks, so one stalled process cannot stop
            # the fleet.
            expired = expired.with_for_update(skip_locked=True)
        return (
            sa.update(sync_changes)
            .where(c.id.in_(expired.scalar_subquery()))
            .values(
                state=State.PENDING,
                lease_owner=None,
                lease_expires_at=None,
                lease_token=c.lease_token + 1,
                updated_at=sa.bindparam("now", type_=UTCDateTime),
            )
        )


def _end_stalled() -> sa.Select[Any]:
    """PostgreSQL: end the sessions of other workers whose transaction has lasted longer than
    a lease (``stuck_after``), and name them.

    The server ends a frozen worker's transaction by itself when it sits ``idle in
    transaction``. A worker frozen part-way through the protocol (a statement sent without its
    closing Sync, a message half written) leaves its session ``active`` and waiting for the
    client, which neither that timeout nor ``statement_timeout`` ends: its row locks and the
    claim lock would stay until it thawed. No worker transaction lasts a lease legitimately,
    and whatever such a worker writes back later is fenced by its leases anyway.
    """
    activity = sa.table(
        "pg_stat_activity",
        sa.column("pid", sa.Integer),
        sa.column("application_name", sa.Text),
        sa.column("datname", sa.Text),
        sa.column("usename", sa.Text),
        sa.column("xact_start", sa.DateTime(timezone=True)),
    )
    a = activity.c
    return sa.select(
        a.pid, a.application_name, sa.func.pg_terminate_backend(a.pid).label("ended")
    ).where(
        a.application_name.startswith(sa.bindparam("prefix", type_=sa.Text)),  # no wildcard in it
        a.pid != sa.func.pg_backend_pid(),
        a.datname == sa.func.current_database(),
        # Only our own role's sessions: a role may always end those, and only those.
        a.usename == sa.func.current_user(),
        a.xact_start < sa.func.clock_timestamp() - sa.bindparam("stuck_after", type_=sa.Interval),
    )


def _packed_ids(select: sa.Select[Any]) -> sa.Select[Any]:
    """``select`` (``id, workspace_id``) as one packed row, the workspace ID JSON-safe."""
    rows = select.subquery("claimable")
    return packed(sa.select(rows.c.id, json_safe(rows.c.workspace_id)))


def blocked_workspaces(now: Any, *, waiting: bool = True) -> sa.Select[Any]:
    """Workspaces with a change in flight (or, with ``waiting``, one waiting for a retry).

    They are few and come from index scans, so a claim stays an index walk in ID order
    however long the queue is.
    """
    blocked: Any = sa.select(c.workspace_id).where(c.state == State.IN_FLIGHT)
    if waiting:
        # ``state || ''`` keeps the planners off the state index: the few rows with a future
        # retry time are found through the retry-time index, not by walking every pending row.
        retrying = sa.select(c.workspace_id).where(
            c.next_attempt_at > now, c.state.concat("") == State.PENDING
        )
        blocked = sa.union(blocked, retrying)
    subquery = blocked.subquery()
    return sa.select(subquery.c.workspace_id)


def next_in_line(now: Any) -> list[sa.ColumnElement[bool]]:
    """A pending change may go only when nothing of its workspace is in flight or waiting."""
    return [c.workspace_id.not_in(blocked_workspaces(now))]


def whole_prefixes(queued: Sequence[Any], found: Sequence[Any], limit: int) -> list[int]:
    """Up to ``limit`` IDs: the looked-ahead workspaces whole, then the rest of ``found``.

    ``found`` holds the oldest eligible changes in ID order, so every workspace's share of it
    is a prefix of that workspace's queue; ``queued`` extends the first few workspaces.
    """
    ids = [change_id for change_id, _ in queued]
    taken = {workspace_id for _, workspace_id in queued}
    ids += [change_id for change_id, workspace_id in found if workspace_id not in taken]
    return ids[:limit]
