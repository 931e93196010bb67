"""PostgreSQL: a claim ends other workers' sessions stuck in a transaction longer than a lease.

A worker frozen part-way through the protocol leaves its session ``active`` (waiting for the
rest of a message, or for the Sync after a statement), which neither
``idle_in_transaction_session_timeout`` nor ``statement_timeout`` ends. Here a plain asyncpg
session named like a worker holds the claim lock in an open transaction, as such a session
would; sessions that are young, or not a worker's, are left alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from structlog.testing import capture_logs

from tests.conftest import fresh_pg_database
from worker import db as dbmod
from worker.changes import Kind, NewChange
from worker.claims import CLAIM_LOCK_KEY
from worker.store import Store

pytestmark = pytest.mark.postgres

LEASE = 1.0
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.fixture
async def pg() -> AsyncIterator[tuple[str, Store]]:
    async with fresh_pg_database() as url:
        engine = dbmod.create_engine(url, worker=True, application_name="kantata-sync/claimer")
        await dbmod.upgrade(engine)
        try:
            yield url.replace("postgresql+asyncpg://", "postgresql://", 1), Store(engine)
        finally:
            await engine.dispose()


async def session(url: str, name: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url, server_settings={"application_name": name})
    await conn.execute("BEGIN")
    return conn


async def alive(conn: asyncpg.Connection) -> bool:
    try:
        return await asyncio.wait_for(conn.fetchval("SELECT 1"), 10) == 1
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False


async def test_a_worker_session_stuck_past_a_lease_with_the_claim_lock_is_ended(
    pg: tuple[str, Store],
) -> None:
    url, store = pg
    [change_id] = await store.enqueue([NewChange(7, Kind.STATUS_CHANGE, {"to_status_key": 310})])
    stuck = await session(url, "kantata-sync/frozen")
    await stuck.execute("SELECT pg_advisory_xact_lock($1)", CLAIM_LOCK_KEY)
    await asyncio.sleep(LEASE + 0.3)
    with capture_logs() as logs:
        claimed = await store.claim("claimer", limit=10, lease_seconds=LEASE, now=NOW)
    # Without the fence this claim waits for the claim lock and fails on lock_timeout.
    assert [row.id for row in claimed] == [change_id]
    assert not await alive(stuck)
    ended = [e for e in logs if e["event"] == "claim.ended_stalled_session"]
    assert [(e["session"], e["ended"]) for e in ended] == [("kantata-sync/frozen", True)]
    await stuck.close()


@pytest.mark.parametrize(
    ("name", "waited"),
    [
        ("kantata-sync/busy", 0.0),  # a worker's transaction younger than a lease
        ("erp-loader", LEASE + 0.3),  # a producer's long transaction is not ours to end
        ("", LEASE + 0.3),
    ],
)
async def test_young_worker_sessions_and_other_sessions_are_left_alone(
    pg: tuple[str, Store], name: str, waited: float
) -> None:
    url, store = pg
    await store.enqueue([NewChange(7, Kind.STATUS_CHANGE, {"to_status_key": 310})])
    other = await session(url, name)
    await other.execute("SELECT 1")
    await asyncio.sleep(waited)
    with capture_logs() as logs:
        claimed = await store.claim("claimer", limit=10, lease_seconds=LEASE, now=NOW)
    assert len(claimed) == 1
    assert await alive(other)
    assert not [e for e in logs if e["event"] == "claim.ended_stalled_session"]
    await other.execute("ROLLBACK")
    await other.close()
