"""One bad row, answer or exception never stalls the queue (real SQLite or PostgreSQL, sandbox).

The client is the real one against the sandbox, except for the few workspaces a test makes
misbehave through a subclass (an injected client, not a patch).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from worker import db as dbmod
from worker.changes import JSONObject
from worker.client import KantataClient, SendGuard
from worker.dispatcher import Dispatcher
from worker.exceptions import DatabaseGone, InternalError
from worker.metrics import Metrics
from worker.outcomes import ApiResponse
from worker.ratelimit import RateLimiter
from worker.sandbox.testing import SandboxHandle
from worker.store import Store

from .pipeline_helpers import all_rows, fast_settings, insert_raw, status, update


class OddClient(KantataClient):
    """The real client, except that some workspaces get ``behaviour(workspace_id)``."""

    def __init__(self, *args: Any, odd: dict[int, Callable[[], Any]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.odd = odd

    async def update_workspace(
        self, workspace_id: int, fields: JSONObject, *, guard: SendGuard | None = None
    ) -> ApiResponse:
        if workspace_id in self.odd:
            result = self.odd[workspace_id]()
            if isinstance(result, ApiResponse):
                return result
        return await super().update_workspace(workspace_id, fields, guard=guard)


@contextlib.asynccontextmanager
async def odd_dispatcher(
    store: Store,
    sandbox: SandboxHandle,
    odd: dict[int, Callable[[], Any]],
    *,
    limiter: RateLimiter | None = None,
    **overrides: Any,
) -> AsyncIterator[Dispatcher]:
    settings = fast_settings(sandbox, **overrides)
    async with OddClient(
        settings.api_base_url, settings.api_token(), timeout=settings.request_timeout, odd=odd
    ) as client:
        yield Dispatcher(
            store, client, settings, limiter=limiter or RateLimiter(0), metrics=Metrics()
        )


def explode() -> None:
    raise RuntimeError("a library bug\nspread over\tlines")


async def test_an_unexpected_exception_fails_that_change_and_the_run_goes_on(
    store: Store, sandbox: SandboxHandle
) -> None:
    ids = await store.enqueue(
        [update(1, title="a"), update(2, title="b"), status(2, 310), update(3, title="c")]
    )
    with capture_logs() as logs:
        async with odd_dispatcher(store, sandbox, {2: explode}) as dispatcher:
            report = await asyncio.wait_for(dispatcher.run(), timeout=30)
    assert report.ended_because == "drained"
    rows = await all_rows(store)
    bad = rows[ids[1]]
    assert (bad["state"], bad["error_type"]) == ("failed", "internal")
    assert bad["error_message"] == "internal error: RuntimeError: a library bug spread over lines"
    # The other changes, the same workspace's later status change included, went through.
    assert [rows[i]["state"] for i in (ids[0], ids[2], ids[3])] == ["succeeded"] * 3
    assert [c.to_status_key for c in sandbox.state.status_changes(2)] == [310]
    errors = [e for e in logs if e["event"] == "change.internal_error"]
    assert len(errors) == 1 and errors[0]["log_level"] == "error"
    assert "in_flight" not in {r["state"] for r in rows.values()}


class BrokenStore(Store):
    """A store whose claim raises something no one foresaw, after ``good`` claims."""

    def __init__(self, engine: Any, good: int) -> None:
        super().__init__(engine)
        self.good = good

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        if self.good <= 0:
            raise KeyError("an impossible key")
        self.good -= 1
        return await super().claim(*args, **kwargs)


async def test_an_unexpected_exception_at_run_level_ends_the_run_promptly(
    store: Store, sandbox: SandboxHandle
) -> None:
    broken = BrokenStore(store.engine, good=1)
    await broken.enqueue([update(w, title="x") for w in range(1, 11)])
    with capture_logs() as logs:
        async with odd_dispatcher(broken, sandbox, {}, batch_size=5) as dispatcher:
            with pytest.raises(InternalError, match="KeyError: 'an impossible key'"):
                await asyncio.wait_for(dispatcher.run(), timeout=30)
    [summary] = [e for e in logs if e["event"] == "run.finished"]
    assert summary["ended_because"] == "error" and "KeyError" in summary["error"]
    rows = await all_rows(store)
    # Whatever it held went back (a request cut off counts as an attempt); nothing is stuck.
    assert {r["state"] for r in rows.values()} <= {"pending", "succeeded"}
    assert sum(r["state"] == "pending" for r in rows.values()) >= 5


def rate_limited(retry_after: float) -> Callable[[], ApiResponse]:
    return lambda: ApiResponse(429, {"errors": [{"type": "system"}]}, retry_after=retry_after)


async def test_a_long_retry_after_parks_the_change_without_pausing_everyone(
    store: Store, sandbox: SandboxHandle
) -> None:
    ids = await store.enqueue([update(w, title="x") for w in range(1, 21)])
    limiter = RateLimiter(200)
    before = datetime.now(UTC)
    async with odd_dispatcher(
        store, sandbox, {1: rate_limited(3000)}, limiter=limiter, max_retry_after=120
    ) as dispatcher:
        task = asyncio.create_task(dispatcher.run())
        await asyncio.sleep(2.5)
        rows = await all_rows(store)
        sent = sandbox.state.stats.count()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    parked = rows[ids[0]]
    assert parked["state"] == "pending" and parked["attempts"] == 1
    wait = (parked["next_attempt_at"] - before).total_seconds()
    assert 2900 < wait < 3100  # the change waits for the time the server asked
    # Everyone else went on: the shared pause was the default second, never the 3000 s the
    # server asked for one change.
    assert sent == 19
    assert limiter._paused_until - limiter._clock() < 2


async def test_a_short_retry_after_pauses_everyone_for_that_long(
    store: Store, sandbox: SandboxHandle
) -> None:
    await store.enqueue([update(w, title="x") for w in range(1, 3)])
    limiter = RateLimiter(200)
    calls = iter([rate_limited(5)(), None])
    async with odd_dispatcher(
        store, sandbox, {1: lambda: next(calls)}, limiter=limiter, concurrency=1
    ) as dispatcher:
        task = asyncio.create_task(dispatcher.run())
        await asyncio.sleep(0.5)
        paused_for = limiter._paused_until - limiter._clock()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert 3.5 < paused_for <= 5


async def test_changes_that_never_left_the_limiter_go_back_uncharged_on_shutdown(
    store: Store, sandbox: SandboxHandle
) -> None:
    ids = await store.enqueue([update(w, title="x") for w in range(1, 41)])
    stop = asyncio.Event()
    async with odd_dispatcher(
        store, sandbox, {}, limiter=RateLimiter(4), concurrency=8, grace_period=10
    ) as dispatcher:
        task = asyncio.create_task(dispatcher.run(stop))
        await asyncio.sleep(1.2)
        stop.set()
        started = asyncio.get_running_loop().time()
        report = await asyncio.wait_for(task, timeout=30)
        took = asyncio.get_running_loop().time() - started
    assert report.ended_because == "stopped"
    rows = await all_rows(store)
    sent = sandbox.state.stats.count()
    assert 0 < sent < 40
    charged = [i for i in ids if rows[i]["attempts"] > 0]
    assert len(charged) == sent == report.stats.requests
    assert {rows[i]["state"] for i in ids if i not in charged} == {"pending"}
    # Steps waiting for a send slot are handed back at once, not after the grace period.
    assert took < 5, took


async def test_a_deleted_sqlite_file_stops_the_run(tmp_path: Path, sandbox: SandboxHandle) -> None:
    path = tmp_path / "outbox.db"
    engine = dbmod.create_engine(f"sqlite+aiosqlite:///{path}")
    await dbmod.upgrade(engine)
    store = Store(engine)
    try:
        await store.enqueue([update(w, title="x") for w in range(1, 5)])
        store.check_alive()  # the file is there
        path.unlink()
        async with odd_dispatcher(store, sandbox, {}) as dispatcher:
            with pytest.raises(DatabaseGone, match="deleted or replaced"):
                await asyncio.wait_for(dispatcher.run(), timeout=30)
        assert sandbox.state.stats.count() == 0
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("workspace_id", "kind", "payload", "column"),
    [
        (b"12", "workspace_update", '{"title": "x"}', "workspace_id"),
        (b"\x00\xff", "status_change", '{"to_status_key": 310}', "workspace_id"),
        (12.5, "workspace_update", '{"title": "x"}', "workspace_id"),
        ("twelve", "workspace_update", '{"title": "x"}', "workspace_id"),
        (12, b"workspace_update\xff", '{"title": "x"}', "kind"),
        (12, 7, '{"title": "x"}', "kind"),
        (12, "workspace_update", b"\xff\xfe{}", "payload"),
        (12, "workspace_update", 3.25, "payload"),
    ],
)
async def test_a_poison_row_of_any_storage_type_becomes_invalid(
    sqlite_store: Store,
    sandbox: SandboxHandle,
    workspace_id: object,
    kind: object,
    payload: object,
    column: str,
) -> None:
    good_before = await insert_raw(sqlite_store, 7, "workspace_update", '{"title": "before"}')
    poison = await insert_raw(sqlite_store, workspace_id, kind, payload)
    good_after = await insert_raw(sqlite_store, 8, "status_change", '{"to_status_key": 310}')
    async with odd_dispatcher(sqlite_store, sandbox, {}) as dispatcher:
        report = await asyncio.wait_for(dispatcher.run(), timeout=30)
    assert report.ended_because == "drained"
    rows = await all_rows(sqlite_store)
    assert rows[poison]["state"] == "invalid"
    assert rows[poison]["error_field"] == column
    assert rows[poison]["attempts"] == 0
    assert rows[good_before]["state"] == rows[good_after]["state"] == "succeeded"
    assert sandbox.state.stats.count() == 2
