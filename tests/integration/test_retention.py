"""prune on SQLite and PostgreSQL: what goes, what stays, dry runs, batches, serve's daily run."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from worker import db as dbmod
from worker.changes import AttemptRecord
from worker.models import sync_attempts, sync_changes, sync_runs, sync_workers
from worker.retention import Pruner
from worker.sandbox.testing import SandboxHandle
from worker.store import Store

from .test_daemon import DaemonFactory, eventually, make_daemon, running

__all__ = ["make_daemon"]  # the fixture, imported for pytest

NOW = datetime.now(UTC).replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)
OLD = NOW - timedelta(days=40)
YOUNG = NOW - timedelta(days=1)


async def put(store: Store, state: str, at: datetime, **columns: Any) -> int:
    values = {
        "workspace_id": 1,
        "kind": "workspace_update",
        "payload": '{"title":"x"}',
        "state": state,
        "created_at": at,
        "updated_at": at,
        "completed_at": at if state not in {"pending", "in_flight"} else None,
        **columns,
    }
    async with store.engine.begin() as conn:
        return int(
            await conn.scalar(sa.insert(sync_changes).values(**values).returning(sync_changes.c.id))
        )


async def link(store: Store, change_id: int, **columns: Any) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.update(sync_changes).where(sync_changes.c.id == change_id).values(**columns)
        )


async def attempt(store: Store, run_id: str, ids: tuple[int, ...], at: datetime) -> None:
    record = AttemptRecord(run_id, ids, 1, "PUT /workspaces/{id}", 200, 1.0, attempted_at=at)
    await store.write_batch((), (), (record,), at)


async def run(
    store: Store, run_id: str, at: datetime, *, finished: bool = True, worker: str = "w"
) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.insert(sync_runs).values(
                id=run_id,
                worker=worker,
                command="run",
                started_at=at,
                finished_at=at + timedelta(seconds=5) if finished else None,
            )
        )


async def left(store: Store) -> tuple[set[int], set[str], set[str]]:
    async with store.engine.connect() as conn:
        changes = set((await conn.execute(sa.select(sync_changes.c.id))).scalars())
        attempts = set((await conn.execute(sa.select(sync_attempts.c.change_ids))).scalars())
        runs = set((await conn.execute(sa.select(sync_runs.c.id))).scalars())
    return changes, attempts, runs


async def scenario(store: Store) -> dict[str, int]:
    """One row for each rule; returns their IDs by name."""
    ids = {
        "old_succeeded": await put(store, "succeeded", OLD),
        "old_failed": await put(store, "failed", OLD),
        "old_invalid": await put(store, "invalid", OLD, completed_at=None),  # updated_at counts
        "old_cancelled": await put(store, "cancelled", OLD),
        "young_succeeded": await put(store, "succeeded", YOUNG),
        "old_pending": await put(store, "pending", OLD),
        "old_in_flight": await put(store, "in_flight", OLD, lease_owner="w"),
        "replaced_by_pending": await put(store, "failed", OLD),
        "pending_successor": await put(store, "pending", YOUNG),
        "replaced_by_old": await put(store, "failed", OLD),
        "old_successor": await put(store, "failed", OLD),
        "carrier_of_young": await put(store, "succeeded", OLD),
        "young_merged": await put(store, "succeeded", YOUNG),
        "old_carrier": await put(store, "succeeded", OLD),
        "old_merged": await put(store, "succeeded", OLD),
    }
    await link(store, ids["replaced_by_pending"], superseded_by=ids["pending_successor"])
    await link(store, ids["replaced_by_old"], superseded_by=ids["old_successor"])
    await link(store, ids["young_merged"], merged_into_id=ids["carrier_of_young"])
    await link(store, ids["old_merged"], merged_into_id=ids["old_carrier"])
    await attempt(store, "run-old", (ids["old_failed"],), OLD)
    await attempt(store, "run-old", (ids["old_merged"], ids["old_carrier"]), OLD)
    await attempt(store, "run-kept", (ids["old_succeeded"], ids["old_pending"]), OLD)
    await attempt(store, "run-young", (ids["young_succeeded"],), YOUNG)
    await run(store, "run-old", OLD)
    await run(store, "run-kept", OLD)
    await run(store, "run-young", YOUNG)
    await run(store, "run-empty-old", OLD)
    await run(store, "run-crashed-old", OLD, finished=False, worker="gone")
    await run(store, "run-live-old", OLD, finished=False, worker="alive")
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.insert(sync_workers).values(
                name="alive",
                host="h",
                pid=1,
                command="serve",
                started_at=OLD,
                # The time of the test, not of the module's import: a long session would
                # otherwise make this worker look dead.
                heartbeat_at=datetime.now(UTC),
            )
        )
    return ids


GONE = {
    "old_succeeded",
    "old_failed",
    "old_invalid",
    "old_cancelled",
    "replaced_by_old",
    "old_successor",
    "old_carrier",
    "old_merged",
}


@pytest.mark.parametrize(("batch", "window"), [(1000, 5000), (2, 3)])
async def test_prune_takes_what_is_finished_and_old_and_nothing_a_kept_change_needs(
    store: Store, batch: int, window: int
) -> None:
    ids = await scenario(store)
    before = await left(store)
    pruner = Pruner(store.engine, batch=batch, window=window, min_pause=0)

    dry = await pruner.prune(CUTOFF, dry_run=True)
    assert await left(store) == before
    done = await pruner.prune(CUTOFF)
    assert (dry.changes, dry.attempts, dry.runs) == (done.changes, done.attempts, done.runs)

    changes, attempts, runs = await left(store)
    assert changes == {i for name, i in ids.items() if name not in GONE}
    assert done.changes == len(GONE)
    # Attempts go with their last change: the one naming a pending change stays.
    assert attempts == {
        f"{ids['old_succeeded']},{ids['old_pending']}",
        str(ids["young_succeeded"]),
    }
    assert done.attempts == 2
    assert runs == {"run-kept", "run-young", "run-live-old"}
    assert done.runs == 3
    if batch == 2:
        assert done.transactions >= len(GONE) // 2
    again = await pruner.prune(CUTOFF)
    assert (again.changes, again.attempts, again.runs) == (0, 0, 0)


async def test_a_pending_successor_that_finishes_lets_the_chain_go(store: Store) -> None:
    ids = await scenario(store)
    await link(store, ids["pending_successor"], state="succeeded", completed_at=OLD, updated_at=OLD)
    await Pruner(store.engine, min_pause=0).prune(CUTOFF)
    changes, _, _ = await left(store)
    assert ids["replaced_by_pending"] not in changes
    assert ids["pending_successor"] not in changes


async def test_serve_prunes_at_start_when_retention_days_is_set(
    store: Store, sandbox: SandboxHandle, make_daemon: DaemonFactory
) -> None:
    old = await put(store, "succeeded", OLD)
    young = await put(store, "failed", YOUNG)
    daemon = await make_daemon(store, sandbox, settings={"retention_days": 30})

    async def pruned() -> bool:
        changes, _, _ = await left(store)
        return old not in changes

    async with running(daemon):
        await eventually(pruned, within=20)
    changes, _, _ = await left(store)
    assert young in changes


async def test_serve_without_retention_days_prunes_nothing(
    store: Store, sandbox: SandboxHandle, make_daemon: DaemonFactory
) -> None:
    old = await put(store, "succeeded", OLD)
    daemon = await make_daemon(store, sandbox)
    async with running(daemon):
        await asyncio.sleep(0.5)
    changes, _, _ = await left(store)
    assert old in changes


async def test_a_producer_keeps_inserting_while_sqlite_is_pruned(sqlite_url: str) -> None:
    """Every insert of a producer with a modest busy timeout gets through during a prune.

    The busy timeout (2 s) is far above what one prune transaction holds the lock for; an
    insert that waited past it would fail with "database is locked".
    """
    engine = dbmod.create_engine(sqlite_url)
    await dbmod.upgrade(engine)
    path = sqlite_url.split("///", 1)[1]
    stamp = OLD.strftime("%Y-%m-%d %H:%M:%S")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000) "
            "INSERT INTO sync_changes (workspace_id, kind, payload, state, created_at, "
            "completed_at) SELECT i % 500 + 1, 'workspace_update', '{}', 'succeeded', ?, ? "
            "FROM n",
            (stamp, stamp),
        )
    stop = threading.Event()
    errors: list[str] = []
    inserted = 0

    def produce() -> None:
        nonlocal inserted
        conn = sqlite3.connect(path, timeout=2)
        try:
            while not stop.is_set():
                try:
                    with conn:
                        conn.execute(
                            "INSERT INTO sync_changes (workspace_id, kind, payload) "
                            "VALUES (1, 'workspace_update', '{}')"
                        )
                    inserted += 1
                except sqlite3.OperationalError as exc:
                    errors.append(str(exc))
                time.sleep(0.002)  # a producer, not a tight loop (SQLite's lock is not fair)
        finally:
            conn.close()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        report = await Pruner(engine).prune(CUTOFF)
    finally:
        stop.set()
        producer.join()
        await engine.dispose()
    assert report.changes == 10_000
    assert errors == []
    assert inserted > 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM sync_changes").fetchone() == (inserted,)
