"""The registry, dead-worker takeover, the shared budget and NOTIFY, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from worker import db as dbmod
from worker.budget import token_key
from worker.changes import Kind, NewChange
from worker.coordination import Coordinator
from worker.sharedrate import SharedRateLimiter
from worker.store import Store

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def update(workspace_id: int) -> NewChange:
    return NewChange(workspace_id, Kind.WORKSPACE_UPDATE, {"title": "x"})


async def test_registry_lists_live_workers_and_counts_dead_ones(store: Store) -> None:
    coordinator = Coordinator(store.engine)
    await coordinator.register("a", "host-1", 11, "serve", NOW)
    await coordinator.register("b", "host-2", 12, "run", NOW)
    await coordinator.heartbeat("a", NOW + timedelta(seconds=60))
    live, dead = await coordinator.workers(NOW + timedelta(seconds=70), dead_after=30)
    assert [w.name for w in live] == ["a"] and live[0].host == "host-1"
    assert dead == 1
    await coordinator.deregister("a")
    live, dead = await coordinator.workers(NOW + timedelta(seconds=70), dead_after=30)
    assert (live, dead) == ([], 1)


async def test_a_dead_workers_claims_are_taken_over_before_their_lease_expires(
    store: Store,
) -> None:
    coordinator = Coordinator(store.engine)
    await store.enqueue([update(1), update(2)])
    await coordinator.register("dead", "h", 1, "run", NOW)
    await coordinator.register("alive", "h", 2, "run", NOW)
    held = await store.claim("dead", 10, lease_seconds=600, now=NOW, dead_after=30)
    assert len(held) == 2
    later = NOW + timedelta(seconds=20)
    await coordinator.heartbeat("alive", later + timedelta(seconds=20))
    # Within dead_after the lease stands; after it, the live worker takes the changes over.
    assert await store.claim("alive", 10, 600, later, dead_after=30) == []
    taken = await store.claim("alive", 10, 600, NOW + timedelta(seconds=45), dead_after=30)
    assert sorted(r.id for r in taken) == sorted(r.id for r in held)
    assert all(t.lease_token > h.lease_token for t, h in zip(taken, held, strict=True))


async def test_shared_budget_hands_out_disjoint_evenly_spaced_slots(store: Store) -> None:
    engines = [dbmod.create_engine(str(store.engine.url)) for _ in range(4)]
    try:
        coordinators = [Coordinator(e) for e in engines]
        key = token_key("secret-token")
        assert "secret-token" not in key

        async def reserve_many(coordinator: Coordinator) -> list[float]:
            slots = []
            for _ in range(10):
                block = await coordinator.reserve(key, 100.0, 5)
                slots += [block.first + i * block.spacing for i in range(block.count)]
            return slots

        results = await asyncio.gather(*(reserve_many(c) for c in coordinators))
        every = sorted(s for slots in results for s in slots)
        assert len(every) == 200
        gaps = [b - a for a, b in itertools.pairwise(every)]
        assert min(gaps) >= 1 / 100 - 1e-6
        # 200 slots at 100/s span two seconds: no one-second window holds more than 100
        # (the epsilon absorbs float rounding of epoch seconds, about 2e-7 s near 1.7e9).
        assert max(sum(1 for s in every if t <= s < t + 1 - 1e-6) for t in every) <= 100
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_429_anywhere_slows_every_worker(store: Store) -> None:
    coordinator = Coordinator(store.engine)
    key = token_key("t")
    first = await coordinator.reserve(key, 100.0, 1)
    assert first.spacing == pytest.approx(0.01)
    throttled = await coordinator.reserve(key, 100.0, 1, throttled=2.0)
    assert throttled.spacing == pytest.approx(0.02)
    assert throttled.first >= throttled.now + 2.0 - 1e-6
    other = await Coordinator(store.engine).reserve(key, 100.0, 1)
    assert other.first >= throttled.first
    [state] = await coordinator.budgets()
    assert state["token_key"] == key
    assert state["throttled"] == 1 and state["rate"] < 100 and state["budget"] == 100


async def test_shared_limiter_spaces_requests_of_two_workers(store: Store) -> None:
    coordinator = Coordinator(store.engine)
    limiters = [
        SharedRateLimiter(50, coordinator.slot_source("tok", 50 * 0.98), block_seconds=0.1)
        for _ in range(2)
    ]
    loop = asyncio.get_running_loop()
    stamps: list[float] = []

    async def send(limiter: SharedRateLimiter, n: int) -> None:
        for _ in range(n):
            await limiter.acquire()
            stamps.append(loop.time())

    await asyncio.gather(send(limiters[0], 30), send(limiters[1], 30))
    stamps.sort()
    span = stamps[-1] - stamps[0]
    # 60 requests at 49/s take about 1.2 s; two independent limiters would take 0.6 s.
    assert span >= 59 / 49 * 0.8


async def test_postgres_notifies_idle_workers_of_new_changes(pg_database_url: str) -> None:
    engine = dbmod.create_engine(pg_database_url)
    try:
        await dbmod.upgrade(engine)
        store = Store(engine)
        async with Coordinator(engine).notifications() as wake:
            assert wake is not None
            assert not wake.is_set()
            await store.enqueue([update(1)])
            await asyncio.wait_for(wake.wait(), timeout=5)
    finally:
        await engine.dispose()


async def test_on_sqlite_an_insert_by_another_connection_sets_the_event(
    sqlite_store: Store,
) -> None:
    async with Coordinator(sqlite_store.engine).notifications() as wake:
        assert wake is not None
        await asyncio.sleep(0.2)
        assert not wake.is_set()  # nothing happened: nothing to wake for
        producer = sqlite3.connect(str(sqlite_store.engine.url.database), timeout=5)
        try:
            with producer:
                producer.execute(
                    "INSERT INTO sync_changes (workspace_id, kind, payload) "
                    "VALUES (3, 'status_change', '{\"to_status_key\": 310}')"
                )
        finally:
            producer.close()
        await asyncio.wait_for(wake.wait(), timeout=2)


async def test_on_sqlite_only_a_new_change_sets_the_inserts_event(sqlite_store: Store) -> None:
    inserts = asyncio.Event()
    async with Coordinator(sqlite_store.engine).notifications(inserts=inserts) as wake:
        assert wake is not None
        other = sqlite3.connect(str(sqlite_store.engine.url.database), timeout=5)
        try:
            with other:  # a commit that inserts no change: the worker registry's heartbeat
                other.execute(
                    "INSERT INTO sync_workers (name, host, pid, command, started_at, heartbeat_at)"
                    " VALUES ('w', 'h', 1, 'serve', '2026-12-07', '2026-12-07')"
                )
            await asyncio.wait_for(wake.wait(), timeout=2)
            await asyncio.sleep(0.2)  # a few more looks at the file
            assert not inserts.is_set()
            with other:
                other.execute(
                    "INSERT INTO sync_changes (workspace_id, kind, payload) "
                    "VALUES (3, 'status_change', '{\"to_status_key\": 310}')"
                )
            await asyncio.wait_for(inserts.wait(), timeout=2)
        finally:
            other.close()


async def test_postgres_sets_the_inserts_event_with_each_notify(pg_database_url: str) -> None:
    engine = dbmod.create_engine(pg_database_url)
    inserts = asyncio.Event()
    try:
        await dbmod.upgrade(engine)
        async with Coordinator(engine).notifications(inserts=inserts) as wake:
            assert wake is not None
            await Store(engine).enqueue([update(1)])
            await asyncio.wait_for(inserts.wait(), timeout=5)
            assert wake.is_set()
    finally:
        await engine.dispose()
