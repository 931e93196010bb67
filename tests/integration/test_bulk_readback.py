"""Ambiguous status changes are proved with one bulk read per 200 workspaces, on the sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tests.hostile import hostile_server
from worker.client import KantataClient
from worker.dispatcher import Dispatcher
from worker.metrics import Metrics
from worker.models import sync_attempts, sync_changes
from worker.outcomes import ApiResponse
from worker.ratelimit import RateLimiter
from worker.sandbox import FaultConfig, SandboxConfig
from worker.sandbox.state import Route
from worker.sandbox.testing import SandboxHandle
from worker.store import Store

from .conftest import SandboxFactory
from .pipeline_helpers import TOKEN, all_rows, fast_settings, status
from .test_reconcile import plan_of

BULK, ONE = "GET /workspaces", "GET /workspaces/{id}"


async def ambiguous(store: Store, workspaces: Sequence[int], key: int = 310) -> list[int]:
    """Status changes whose last attempt got a 503 or no answer: they may have landed."""
    ids = await store.enqueue([status(w, key) for w in workspaces])
    async with store.engine.begin() as conn:
        for n, change_id in enumerate(ids):
            await conn.execute(
                sa.update(sync_changes)
                .where(sync_changes.c.id == change_id)
                .values(attempts=1, http_status=503 if n % 2 else None)
            )
    return ids


def landed(sandbox: SandboxHandle, workspaces: Sequence[int], key: int = 310) -> None:
    """The earlier attempts that did land: Kantata recorded the change, the answer was lost."""
    state = sandbox.state
    for w in workspaces:
        state.change_status(state.workspaces[w], key, user_id=1)


async def attempts_by_change(store: Store) -> dict[int, list[dict[str, Any]]]:
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(sync_attempts).order_by(sync_attempts.c.id))).all()
    found: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        for change_id in row.change_ids.strip("[]").split(","):
            found.setdefault(int(change_id), []).append(dict(row._mapping))
    return found


class FaultsOffAfterBulkRead(KantataClient):
    """The sandbox's faults hit the first index read only: they are turned off after it."""

    def __init__(self, sandbox: SandboxHandle, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sandbox = sandbox

    async def list_workspaces(self, ids: Sequence[int], **kwargs: Any) -> ApiResponse:
        try:
            return await super().list_workspaces(ids, **kwargs)
        finally:
            self.sandbox.set_faults(FaultConfig())


@contextlib.asynccontextmanager
async def dispatcher_with(
    store: Store, sandbox: SandboxHandle, *, faulty_bulk_read: bool = False, **overrides: Any
) -> AsyncIterator[Dispatcher]:
    settings = fast_settings(sandbox, **overrides)
    base, token, timeout = settings.api_base_url, settings.api_token(), settings.request_timeout
    client = (
        FaultsOffAfterBulkRead(sandbox, base, token, timeout=timeout)
        if faulty_bulk_read
        else KantataClient(base, token, timeout=timeout)
    )
    async with client:
        yield Dispatcher(
            store, client, settings, limiter=RateLimiter(0), metrics=Metrics(), rng=random.Random(3)
        )


async def test_ambiguous_status_changes_are_proved_with_one_read_per_200(
    store: Store, sandbox_factory: SandboxFactory
) -> None:
    n = 230
    async with sandbox_factory(SandboxConfig(inspect=True, workspaces=n)) as sandbox:
        in_place = [w for w in range(1, n + 1) if w % 3 == 0]
        to_send = [w for w in range(1, n + 1) if w % 3]
        landed(sandbox, in_place)
        ids = await ambiguous(store, range(1, n + 1))
        change_of = dict(zip(range(1, n + 1), ids, strict=True))
        planned = await plan_of(store, batch_size=500)
        with capture_logs(processors=[merge_contextvars]) as logs:
            async with dispatcher_with(store, sandbox, batch_size=500) as d:
                report = await d.run()
        state = sandbox.state
        sent = [r.to_json() for r in state.requests]
        history = list(state.history)

    reads = math.ceil(n / 200)
    assert (state.stats.count(Route.GET_WORKSPACES), state.stats.count(Route.GET_WORKSPACE)) == (
        reads,
        0,
    )
    # plan named exactly these reads (one claim: 200, then 30 workspaces).
    planned_reads = [r.spec.target for r in planned.requests if r.spec.method == "GET"]
    assert [r["target"] for r in sent if r["method"] == "GET"] == planned_reads
    posted = [r["body"]["workspace_status_change"]["workspace_id"] for r in sent if r["body"]]
    assert sorted(posted) == to_send  # each once
    assert sorted(c.workspace_id for c in history) == list(range(1, n + 1))
    assert {c.to_status_key for c in history} == {310}

    rows = await all_rows(store)
    for w, change_id in change_of.items():
        row = rows[change_id]
        outcome = "already_applied" if w in in_place else "applied"
        assert (row["state"], row["outcome"], row["attempts"]) == ("succeeded", outcome, 2), w
        assert row["result"]["status"]["key"] == "310"
        assert row["result"]["updated_at"]

    attempts = await attempts_by_change(store)
    request_ids: dict[str, list[int]] = {}
    for w, change_id in change_of.items():
        mine = attempts[change_id]
        assert [a["endpoint"] for a in mine] == (
            [BULK] if w in in_place else [BULK, "POST /workspace_status_changes"]
        )
        assert (mine[0]["workspace_id"], mine[0]["http_status"]) == (w, 200)
        request_ids.setdefault(mine[0]["request_id"], []).append(w)
    assert sorted(len(ws) for ws in request_ids.values()) == [n - 200, 200]
    assert None not in request_ids
    assert report.stats.requests == reads + len(to_send)

    bulk_lines = [e for e in logs if e["event"] == "http.attempt" and e["endpoint"] == BULK]
    assert len(bulk_lines) == reads
    assert sorted(w for e in bulk_lines for w in e["workspace_ids"]) == list(range(1, n + 1))
    assert {e["request_id"] for e in bulk_lines} == set(request_ids)
    assert TOKEN not in repr(logs)


@pytest.mark.parametrize(
    ("faults", "failed_with"),
    [
        (FaultConfig(error_rate=1.0, seed=1), {500, 502, 503}),
        (FaultConfig(drop_rate=1.0, seed=1), {None}),
        (FaultConfig(burst_429_rate=1.0, burst_seconds=0.2, seed=1), {429}),
    ],
    ids=["5xx", "dropped", "429"],
)
async def test_a_failed_bulk_read_leaves_each_change_to_its_own_read_back(
    sqlite_store: Store,
    sandbox_factory: SandboxFactory,
    faults: FaultConfig,
    failed_with: set[int | None],
) -> None:
    async with sandbox_factory(faults=faults) as sandbox:
        landed(sandbox, [2, 4, 6])
        ids = await ambiguous(sqlite_store, range(1, 7))
        async with dispatcher_with(sqlite_store, sandbox, faulty_bulk_read=True) as d:
            report = await d.run()
        stats = sandbox.state.stats
        history = list(sandbox.state.history)
    assert stats.count(Route.GET_WORKSPACES) == 1  # tried once, then each on its own
    assert stats.count(Route.GET_WORKSPACE, 200) == 6
    assert stats.count(Route.POST_STATUS_CHANGE) == 3
    assert sorted(c.workspace_id for c in history) == [1, 2, 3, 4, 5, 6]
    rows = await all_rows(sqlite_store)
    assert [(rows[i]["outcome"], rows[i]["attempts"]) for i in ids] == [
        ("applied", 2),
        ("already_applied", 2),
    ] * 3
    attempts = await attempts_by_change(sqlite_store)
    for change_id in ids:
        bulk, *rest = attempts[change_id]
        assert bulk["endpoint"] == BULK and bulk["http_status"] in failed_with
        assert bulk["error_type"] is not None
        assert rest[0]["endpoint"] == ONE
    assert report.stats.requests == 1 + 6 + 3


async def test_a_rejected_token_on_the_bulk_read_stops_the_run_and_charges_nothing(
    sqlite_store: Store, sandbox: SandboxHandle
) -> None:
    ids = await ambiguous(sqlite_store, range(1, 5))
    sandbox.state.revoke(TOKEN)
    async with dispatcher_with(sqlite_store, sandbox) as d:
        report = await d.run()
    assert report.ended_because == "token_rejected"
    assert sandbox.state.stats.count() == 1
    rows = await all_rows(sqlite_store)
    assert {(rows[i]["state"], rows[i]["attempts"], rows[i]["http_status"]) for i in ids} == {
        ("pending", 1, 503),
        ("pending", 1, None),
    }


async def test_stopping_during_the_bulk_read_hands_every_change_back(
    sqlite_store: Store, sandbox_factory: SandboxFactory
) -> None:
    faults = FaultConfig(hang_rate=1.0, hang_seconds=10.0, seed=1)
    async with sandbox_factory(faults=faults) as sandbox:
        ids = await ambiguous(sqlite_store, range(1, 5))
        stop = asyncio.Event()
        async with dispatcher_with(
            sqlite_store, sandbox, grace_period=0.2, request_timeout=30.0
        ) as d:
            running = asyncio.create_task(d.run(stop))
            for _ in range(1000):
                if _arrived(sandbox) or running.done():
                    break
                await asyncio.sleep(0.01)
            assert _arrived(sandbox), "the bulk read never arrived"
            stop.set()
            report = await asyncio.wait_for(running, 20)
            assert not d._proofs  # nothing of the read is left running
    assert report.ended_because == "stopped"
    rows = await all_rows(sqlite_store)
    assert {(rows[i]["state"], rows[i]["attempts"], rows[i]["lease_owner"]) for i in ids} == {
        ("pending", 1, None)
    }
    assert report.stats.succeeded == 0


def _arrived(sandbox: SandboxHandle) -> bool:
    return any(r.target.startswith("/workspaces?only=") for r in sandbox.state.requests)


async def test_a_workspace_missing_from_the_bulk_answer_is_read_back_by_itself(
    sqlite_store: Store, sandbox: SandboxHandle
) -> None:
    # Workspace 9999 does not exist: the index route skips it, its own read-back gets 404.
    gone, there = await ambiguous(sqlite_store, [9999, 3])
    async with dispatcher_with(sqlite_store, sandbox) as d:
        await d.run()
    stats = sandbox.state.stats
    assert (stats.count(Route.GET_WORKSPACES), stats.count(Route.GET_WORKSPACE, 404)) == (1, 1)
    assert stats.count(Route.GET_WORKSPACE) == 1
    rows = await all_rows(sqlite_store)
    assert (rows[gone]["state"], rows[gone]["http_status"]) == ("failed", 404)
    assert (rows[there]["state"], rows[there]["outcome"]) == ("succeeded", "applied")
    attempts = await attempts_by_change(sqlite_store)
    assert [a["endpoint"] for a in attempts[gone]] == [BULK, ONE]


async def test_an_answer_that_is_not_the_envelope_proves_nothing(sqlite_store: Store) -> None:
    async with hostile_server() as server:

        async def answer(request: web.Request) -> web.StreamResponse:
            if request.path.endswith("/workspaces"):  # the index route: not the envelope
                return web.json_response({"results": "not a list"})
            ident = request.path.rsplit("/", 1)[1]
            workspace = {"id": ident, "status": {"key": 310}, "updated_at": "2026-12-01T00:00Z"}
            return web.json_response(
                {
                    "count": 1,
                    "results": [{"key": "workspaces", "id": ident}],
                    "workspaces": {ident: workspace},
                }
            )

        server.answer = answer
        [change_id] = await ambiguous(sqlite_store, [12])
        peer = SimpleNamespace(url=server.url)
        async with dispatcher_with(sqlite_store, peer) as d:  # type: ignore[arg-type]
            await d.run()
        seen = [(method, path) for method, path, _headers in server.requests]
    assert seen == [("GET", "/api/v1/workspaces"), ("GET", "/api/v1/workspaces/12")]
    row = (await all_rows(sqlite_store))[change_id]
    assert (row["outcome"], row["result"]["status"]["key"]) == ("already_applied", 310)
    bulk, one = (await attempts_by_change(sqlite_store))[change_id]
    assert (bulk["endpoint"], bulk["http_status"], bulk["error_type"]) == (BULK, 200, "protocol")
    assert "not the documented envelope" in bulk["error_message"]
    assert one["endpoint"] == ONE
