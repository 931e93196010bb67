"""The status page's values read from a real database (SQLite and PostgreSQL), and ``GET /``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from tests.pagescan import parse
from worker import db as dbmod
from worker import statuspage
from worker.budget import token_key
from worker.changes import State
from worker.coordination import Coordinator
from worker.health import DatabaseProbe, HealthState, HttpListener
from worker.metrics import Metrics
from worker.models import sync_changes
from worker.queries import Filters
from worker.statushtml import CONTENT_SECURITY_POLICY, REDACTED
from worker.statuspage import StatusSource, gather_status, gather_summary
from worker.store import Store

NOW = datetime(2026, 12, 4, 10, 30, 15, 250000, tzinfo=UTC)
START = datetime(2026, 12, 4, 9, 31, tzinfo=UTC)
"""The first one-minute bucket of the hour up to NOW (the last one is 10:30, still filling)."""
TOKEN = "tok-3f9a1c-PAGE-SECRET"


async def add(store: Store, state: str, completed: datetime | None, **values: Any) -> int:
    row = {
        "workspace_id": 1,
        "kind": "workspace_update",
        "payload": "{}",
        "state": state,
        "completed_at": completed,
        "created_at": NOW - timedelta(hours=3),
        **values,
    }
    async with store.engine.begin() as conn:
        result = await conn.execute(
            sa.insert(sync_changes).values(**row).returning(sync_changes.c.id)
        )
        return int(result.scalar_one())


async def test_the_page_values_are_counted_in_the_database(store: Store) -> None:
    await add(store, "succeeded", START, outcome="applied")  # the first bucket's first instant
    await add(store, "succeeded", START - timedelta(microseconds=1))  # just before the window
    await add(store, "succeeded", START + timedelta(seconds=59, microseconds=999999))
    for _ in range(3):
        await add(store, "succeeded", NOW - timedelta(seconds=10), outcome="merged")
    await add(store, "failed", NOW - timedelta(minutes=30), error_type="validation")
    await add(store, "invalid", NOW - timedelta(minutes=30, seconds=14))
    await add(store, "cancelled", NOW + timedelta(minutes=5))  # a clock ahead: the last bucket
    await add(store, "pending", None, created_at=NOW - timedelta(seconds=95))
    await add(store, "in_flight", None)

    data = await gather_status(store, NOW)

    assert data.counts == {
        "pending": 1,
        "in_flight": 1,
        "succeeded": 6,
        "failed": 1,
        "invalid": 1,
        "cancelled": 1,
    }
    assert data.oldest_pending_age == pytest.approx(95)
    flow = data.throughput
    assert (flow.start, flow.bucket_seconds, flow.buckets) == (START, 60, 60)
    expected = {state: [0] * 60 for state in ("succeeded", "failed", "invalid", "cancelled")}
    expected["succeeded"][0] = 2
    expected["succeeded"][59] = 3
    expected["failed"][29] = 1  # 10:00:15
    expected["invalid"][29] = 1  # 10:00:01
    expected["cancelled"][59] = 1
    assert {s: list(v) for s, v in flow.by_state.items()} == expected
    assert {t: (sum(v), v.index(1)) for t, v in flow.failures_by_type.items()} == {
        "validation": (1, 29),
        "unknown": (1, 29),
    }
    assert data.workers == () and data.dead_workers == 0 and data.budgets == ()


async def test_the_latest_failures_come_newest_first_with_their_text(store: Store) -> None:
    ids = []
    for minutes in (50, 5, 20):
        ids.append(
            await add(
                store,
                "failed",
                NOW - timedelta(minutes=minutes),
                workspace_id=minutes,
                source_ref=f"ref-{minutes}",
                http_status=422,
                error_type="validation",
                error_field="title",
                error_message=f"Please give your project a title ({minutes})",
                attempts=2,
            )
        )
    await add(store, "invalid", NOW - timedelta(minutes=1), kind="no_such_kind")
    await add(store, "succeeded", NOW)

    failures = (await gather_status(store, NOW, failures=3)).failures

    assert [f.id for f in failures] == [ids[-1] + 1, ids[1], ids[2]]
    newest_failed = failures[1]
    assert (newest_failed.workspace_id, newest_failed.source_ref, newest_failed.kind) == (
        "5",
        "ref-5",
        "workspace_update",
    )
    assert (newest_failed.http_status, newest_failed.error_field, newest_failed.attempts) == (
        422,
        "title",
        2,
    )
    assert newest_failed.error_message == "Please give your project a title (5)"
    assert newest_failed.completed_at == NOW - timedelta(minutes=5)
    assert failures[0].kind == "no_such_kind" and failures[0].state == "invalid"


async def test_sqlite_poison_columns_are_shown_as_text(sqlite_store: Store) -> None:
    async with sqlite_store.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO sync_changes (workspace_id, kind, payload, state, completed_at, "
                "source_ref) VALUES (:w, :k, '{}', 'invalid', :at, :ref)"
            ),
            {
                "w": b"\x00\xffblob",
                "k": b"status\xff",
                "at": (NOW - timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S.%f"),
                "ref": b"r\xfe",
            },
        )
    [failure] = (await gather_status(sqlite_store, NOW)).failures
    assert failure.workspace_id == "\x00\ufffdblob"
    assert failure.kind == "status\ufffd" and failure.source_ref == "r\ufffd"


async def test_live_workers_and_budgets_by_fingerprint(store: Store) -> None:
    coordinator = Coordinator(store.engine)
    await coordinator.register("old", "host-a", 1, "run", NOW - timedelta(hours=1))
    await coordinator.register("alive", "host-b", 2, "serve", NOW - timedelta(minutes=10))
    await coordinator.heartbeat("alive", NOW - timedelta(seconds=3))
    await coordinator.reserve(token_key(TOKEN), 9.8, 1, throttled=2.0, max_pause=120)

    data = await gather_status(store, NOW, dead_after=30)

    assert [(w.name, w.host, w.command) for w in data.workers] == [("alive", "host-b", "serve")]
    assert data.dead_workers == 1
    [budget] = data.budgets
    assert budget.token == token_key(TOKEN) and TOKEN not in budget.token
    assert (budget.budget, budget.rate, budget.throttled) == (9.8, 4.9, 1)


async def test_a_report_summary_counts_only_the_filtered_changes(store: Store) -> None:
    await add(store, "failed", NOW - timedelta(hours=2), error_type="validation")
    await add(store, "failed", NOW - timedelta(hours=30))  # outside the day
    await add(store, "succeeded", NOW - timedelta(minutes=1), outcome="applied")
    summary = await gather_summary(
        store, NOW, where=Filters(states=(State.FAILED,)).where(), scope="failed"
    )
    assert summary.counts["failed"] == 2 and summary.counts["succeeded"] == 0
    assert summary.outcomes == (("failed", None, 2),)
    assert summary.throughput.bucket_seconds == 3600 and summary.throughput.buckets == 24
    assert summary.throughput.total("failed") == 1
    assert summary.throughput.by_state["failed"][21] == 1  # 08:30 is in the 08:00 bucket


@pytest.fixture
async def listen(tmp_path: Path) -> AsyncIterator[Any]:
    listeners: list[HttpListener] = []

    async def start(store: Store, status: StatusSource | None) -> str:
        listener = HttpListener(
            "127.0.0.1",
            0,
            Metrics(),
            HealthState(stale_after=60),
            DatabaseProbe(store.engine),
            status=status,
        )
        listeners.append(listener)
        return await listener.start()

    yield start
    for listener in listeners:
        await listener.stop()


async def get(url: str) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text(), response.headers


async def test_get_slash_serves_the_page_masked_and_locked_down(
    sqlite_store: Store, listen: Any
) -> None:
    message = f'Kantata echoed "Bearer {TOKEN}" <script>alert(1)</script>'
    await add(sqlite_store, "failed", datetime.now(UTC), error_message=message)
    await add(sqlite_store, "pending", None)
    url = await listen(sqlite_store, StatusSource(sqlite_store, [TOKEN]))

    code, page, headers = await get(f"{url}/")

    assert code == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src" not in CONTENT_SECURITY_POLICY  # default-src 'none' forbids scripts
    assert TOKEN not in page and "<script>" not in page
    root = parse(page)
    queue = {g.attrs["data-label"]: g.attrs["data-value"] for g in root.find_all("g")}
    assert queue["failed"] == "1" and queue["pending"] == "1"
    assert f'Kantata echoed "Bearer {REDACTED}" <script>alert(1)</script>' in root.all_text()
    assert "this daemon: starting" in root.all_text()


async def test_without_a_status_source_there_is_no_page(sqlite_store: Store, listen: Any) -> None:
    url = await listen(sqlite_store, None)
    assert (await get(f"{url}/"))[0] == 404
    assert (await get(f"{url}/healthz"))[0] == 200


async def test_a_database_that_cannot_be_read_is_a_503_page(tmp_path: Path, listen: Any) -> None:
    engine = dbmod.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    try:
        store = Store(engine)  # never migrated: no tables
        url = await listen(store, StatusSource(store, [TOKEN]))
        code, page, headers = await get(f"{url}/")
        assert code == 503
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert "The database cannot be read" in parse(page).all_text()
        assert "sync_changes" in page  # the database's own words: no such table
    finally:
        await engine.dispose()


async def test_many_requests_read_the_database_once_per_interval(
    sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    real = statuspage.gather_status

    async def counting(*args: Any, **kwargs: Any) -> statuspage.StatusData:
        nonlocal reads
        reads += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(statuspage, "gather_status", counting)
    clock = [100.0]
    source = StatusSource(sqlite_store, fresh_for=2.0, monotonic=lambda: clock[0])
    await add(sqlite_store, "pending", None)

    first = await asyncio.gather(*(source.gather(f"a{i}") for i in range(5)))
    assert reads == 1
    assert [d.activity for d in first] == [f"a{i}" for i in range(5)]
    assert {d.counts["pending"] for d in first} == {1}

    await add(sqlite_store, "pending", None)
    clock[0] += 1.9
    assert (await source.gather()).counts["pending"] == 1  # still fresh
    clock[0] += 0.2
    assert (await source.gather()).counts["pending"] == 2
    assert reads == 2
    await source.close()
