"""plan and verify against real databases and the sandbox on a real socket.

``plan`` must name exactly what the next run sends, and pick what a claim would pick; ``verify``
must see every out-of-band edit and nothing else, never judge what it could not read, and its
repairs must bring Kantata back in step through the normal pipeline.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from worker.changes import Lease, NewChange
from worker.client import KantataClient
from worker.drift import Drift, Finding
from worker.models import sync_changes
from worker.outbox_reads import OutboxReader
from worker.preview import ClaimModel, Preview, preview
from worker.ratelimit import RateLimiter
from worker.sandbox import FaultConfig
from worker.sandbox.state import Route
from worker.sandbox.testing import SandboxHandle
from worker.sandbox.validation import validate_workspace_update
from worker.store import Store
from worker.verify import VerifyOptions, VerifyStats, WorkspaceReader, enqueue_repairs, verify

from .conftest import SandboxFactory
from .pipeline_helpers import dispatcher_for, fast_settings, status, update

c = sync_changes.c
NOW = datetime.now(UTC)


async def set_rows(store: Store, ids: Sequence[int], **values: Any) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(sa.update(sync_changes).where(c.id.in_(list(ids))).values(**values))


async def plan_of(store: Store, batch_size: int = 200, limit: int | None = None) -> Preview:
    rows = await OutboxReader(store.engine).due_changes(datetime.now(UTC), limit)
    return preview(rows, batch_size, limit)


async def test_plan_takes_what_a_claim_may_take(store: Store) -> None:
    ids = await store.enqueue(
        [
            update(1, title="A"),  # 0: plain
            update(2, title="B"),  # 1: in flight ...
            update(2, title="C"),  # 2: ... so this waits
            update(3, title="D"),  # 3: waits for a retry ...
            update(3, title="E"),  # 4: ... and holds this back
            update(4, title="F"),  # 5: a retry that is due
            update(5, title="G"),  # 6: succeeded already
            update(5, title="H"),  # 7
            update(1, title="I"),  # 8
        ]
    )
    await set_rows(store, [ids[1]], state="in_flight", lease_expires_at=NOW + timedelta(hours=1))
    await set_rows(store, [ids[3]], attempts=1, next_attempt_at=NOW + timedelta(hours=1))
    await set_rows(store, [ids[5]], attempts=1, next_attempt_at=NOW - timedelta(seconds=1))
    await set_rows(store, [ids[6]], state="succeeded", completed_at=NOW)

    result = await plan_of(store)
    assert [(r.workspace_id, r.change_ids) for r in result.requests] == [
        (1, (ids[0], ids[8])),
        (4, (ids[5],)),
        (5, (ids[7],)),
    ]
    limited = await plan_of(store, limit=1)
    assert [(r.workspace_id, r.change_ids) for r in limited.requests] == [(1, (ids[0],))]
    # Nothing was claimed or written.
    async with store.engine.connect() as conn:
        states = dict((await conn.execute(sa.select(c.id, c.state))).all())
        tokens = set((await conn.execute(sa.select(c.lease_token))).scalars())
    assert [states[i] for i in ids] == [
        "pending",
        "in_flight",
        *["pending"] * 4,
        "succeeded",
        "pending",
        "pending",
    ]
    assert tokens == {0}


async def test_the_claim_model_picks_what_the_claims_pick(store: Store) -> None:
    rng = random.Random(11)
    changes = [update(rng.randrange(1, 26), title=f"T{n}") for n in range(240)]
    ids = await store.enqueue(changes)
    await set_rows(store, rng.sample(ids, 8), attempts=1, next_attempt_at=NOW + timedelta(hours=1))
    rows = await OutboxReader(store.engine).due_changes(datetime.now(UTC))
    model = ClaimModel(rows)
    held: list[Lease] = []
    for limit in (7, 40, 40, 500):  # back to back: what the first claims took stays in flight
        claimed = await store.claim("test", limit, 60.0, datetime.now(UTC))
        held += [Lease(r.id, r.lease_token) for r in claimed]
        assert [r.id for r in model.claim(limit)] == [r.id for r in claimed], limit
    await store.release(held, datetime.now(UTC))


def by_workspace(
    requests: list[tuple[int, str, str, Any]],
) -> dict[int, list[tuple[str, str, Any]]]:
    grouped: dict[int, list[tuple[str, str, Any]]] = defaultdict(list)
    for workspace, method, target, body in requests:
        grouped[workspace].append((method, target, body))
    return dict(grouped)


def workspace_of(target: str, body: Any) -> int:
    if target.startswith("/workspace_status_changes"):
        return int(body["workspace_status_change"]["workspace_id"])
    if target.startswith("/workspaces?only="):  # a bulk read-back: plan lists it with the first
        return int(target.removeprefix("/workspaces?only=").split("&")[0].split(",")[0])
    return int(target.split("/")[2].split("?")[0])


async def test_plan_then_run_sends_exactly_the_plan(store: Store, sandbox: SandboxHandle) -> None:
    rng = random.Random(5)
    changes: list[NewChange] = []
    for n in range(120):
        workspace = rng.randrange(1, 31)
        pick = rng.random()
        if pick < 0.15:
            changes.append(status(workspace, rng.choice([310, 320, 410, 600])))
        elif pick < 0.4:
            value = rng.choice("abc")
            changes.append(
                update(
                    workspace,
                    custom_fields=[{"custom_field_id": rng.randrange(1, 4), "value": value}],
                )
            )
        else:
            changes.append(
                update(workspace, title=f"T{n}", price=n, due_date=f"2027-01-{n % 28 + 1:02d}")
            )
    ids = await store.enqueue(changes)
    # A status change whose earlier attempt may have landed: read back first, then sent.
    [ambiguous] = await store.enqueue([status(40, 310)])
    await set_rows(store, [ambiguous], attempts=1, http_status=503)
    [bad] = await store.enqueue([update(41, title="ok")])
    await set_rows(store, [bad], payload='{"title": ""}')

    planned = await plan_of(store)
    assert [i.change_id for i in planned.invalid] == [bad]
    assert planned.changes == len(ids) + 2
    async with dispatcher_for(store, sandbox) as dispatcher:
        await dispatcher.run()
    sent = [r.to_json() for r in sandbox.state.requests]
    assert all(r["status"] == 200 for r in sent)
    actual = by_workspace(
        [(workspace_of(r["target"], r["body"]), r["method"], r["target"], r["body"]) for r in sent]
    )
    expected = by_workspace(
        [(r.workspace_id, r.spec.method, r.spec.target, r.spec.body) for r in planned.requests]
    )
    assert actual == expected
    assert len(sent) == len(planned.requests) < planned.changes
    assert any(r.conditional for r in planned.requests)
    assert any(len(r.change_ids) > 1 for r in planned.requests)


async def run_verify(
    store: Store, sandbox: SandboxHandle, options: VerifyOptions | None = None, **settings: Any
) -> tuple[list[Drift], VerifyStats]:
    configured = fast_settings(sandbox, **settings)
    stats = VerifyStats()
    async with KantataClient(
        configured.api_base_url, configured.api_token(), timeout=2.0
    ) as client:
        reader = WorkspaceReader(client, RateLimiter(50), configured, stats, rng=random.Random(2))
        rows = [
            d async for d in verify(OutboxReader(store.engine), reader, options or VerifyOptions())
        ]
    return rows, stats


def edit(sandbox: SandboxHandle, workspace_id: int, **fields: Any) -> None:
    """An edit in Kantata's UI."""
    state = sandbox.state
    state.apply_update(
        state.workspaces[workspace_id],
        validate_workspace_update(fields, state.statuses),
        out_of_band=True,
    )


def found(rows: list[Drift]) -> set[tuple[int, str, str | None]]:
    return {(r.workspace_id, str(r.finding), r.field) for r in rows}


async def synced(store: Store, sandbox: SandboxHandle) -> None:
    """60 workspaces through a run: coalesced updates, custom field merges across requests,
    dates, money, statuses by POST and by PUT, archived projects, derived fields."""
    changes: list[NewChange] = []
    for n in range(1, 61):
        changes += [
            update(
                n,
                title=f"Old {n}",
                price=100 + n,
                custom_fields=[{"custom_field_id": 7, "value": "a"}],
            ),
            update(n, title=f"New {n}", due_date="2027-03-31", start_date="2026-12-01"),
            status(n, 310),
            update(
                n,
                custom_fields=[{"custom_field_id": 8, "value": "[998, USD]"}],
                access_level="admins",
            ),
        ]
        if n % 3 == 0:
            changes.append(update(n, status_key=410, expenses_in_burn_rate=True, target_margin=30))
        if n % 10 == 0:
            changes.append(update(n, archived=True))
    await store.enqueue(changes)
    async with dispatcher_for(store, sandbox) as dispatcher:
        await dispatcher.run()
    assert (await store.counts())["succeeded"] == len(changes)


async def test_verify_finds_exactly_the_out_of_band_edits_and_repair_fixes_them(
    sqlite_store: Store, sandbox: SandboxHandle
) -> None:
    await synced(sqlite_store, sandbox)
    sandbox.state.stats.reset()
    rows, stats = await run_verify(sqlite_store, sandbox)
    assert rows == []
    assert (stats.workspaces, stats.read_requests, stats.unverified_fields) == (60, 1, 0)
    assert stats.checked_fields > 60 * 8
    assert sandbox.state.stats.count(Route.GET_WORKSPACES) == 1

    edit(sandbox, 3, title="Renamed in the UI")
    edit(sandbox, 5, custom_fields=[{"custom_field_id": 7, "value": "ui"}])
    edit(sandbox, 8, price=5)
    edit(sandbox, 9, status_key=600)
    edit(sandbox, 12, actual_fees_includes_expenses=False)
    edit(sandbox, 20, archived=False)
    edit(sandbox, 21, description="never set by the outbox", due_date="2027-03-31")
    del sandbox.state.workspaces[22]
    rows, stats = await run_verify(sqlite_store, sandbox, VerifyOptions(chunk=25))
    assert found(rows) == {
        (3, "drifted", "title"),
        (5, "drifted", "custom_fields.7"),
        (8, "drifted", "price"),
        (9, "drifted", "status"),
        (12, "drifted", "actual_fees_includes_expenses"),
        (20, "drifted", "archived"),
        (22, "missing", None),
    }
    by_field = {r.field: r for r in rows}
    assert (by_field["price"].desired, by_field["price"].actual) == (108, "5")
    assert (by_field["status"].desired, by_field["status"].actual) == (410, "600")
    assert by_field["title"].change_id is not None and by_field["title"].completed_at is not None
    assert stats.read_requests == 3

    outbox = OutboxReader(sqlite_store.engine)
    repairs = await enqueue_repairs(sqlite_store, outbox, rows, "t1", await outbox.high_water())
    assert repairs["enqueued"] == 6 and repairs["skipped_workspaces"] == []
    async with dispatcher_for(sqlite_store, sandbox) as dispatcher:
        await dispatcher.run()
    rows, _ = await run_verify(sqlite_store, sandbox)
    assert found(rows) == {(22, "missing", None)}
    assert sandbox.state.workspaces[3].fields["title"] == "New 3"


async def test_queued_changes_are_not_judged_and_never_overwritten(
    sqlite_store: Store, sandbox: SandboxHandle
) -> None:
    await sqlite_store.enqueue([update(1, title="A", due_date="2027-01-01"), update(2, title="B")])
    async with dispatcher_for(sqlite_store, sandbox) as dispatcher:
        await dispatcher.run()
    edit(sandbox, 1, title="UI", due_date="2027-02-02")
    edit(sandbox, 2, title="UI")
    outbox = OutboxReader(sqlite_store.engine)
    high_water = await outbox.high_water()
    await sqlite_store.enqueue([update(1, title="queued")])  # settling: not judged
    rows, stats = await run_verify(sqlite_store, sandbox)
    assert found(rows) == {(1, "drifted", "due_date"), (2, "drifted", "title")}
    assert stats.settling_fields == 1
    # Workspace 1 got a change after verify began: its correction would undo it.
    repairs = await enqueue_repairs(sqlite_store, outbox, rows, "t2", high_water)
    assert (repairs["enqueued"], repairs["skipped_workspaces"]) == (1, [1])


async def test_verify_retries_5xx_and_429_and_never_judges_what_it_could_not_read(
    sqlite_store: Store, sandbox_factory: SandboxFactory
) -> None:
    async with sandbox_factory(rate_limit=2, retry_after=1) as sb:
        # Succeeded already (as if synced): the sandbox seeds "Project <n>" and status 100.
        ids = await sqlite_store.enqueue(
            [update(n, title=f"Project {n}") for n in range(1, 51)] + [status(3, 100)]
        )
        await set_rows(sqlite_store, ids, state="succeeded", completed_at=NOW)
        edit(sb, 7, title="UI")
        sb.state.stats.reset()
        sb.set_faults(FaultConfig(error_rate=0.5, seed=4))
        rows, stats = await run_verify(
            sqlite_store,
            sb,
            VerifyOptions(chunk=20),
            max_attempts=10,
            retry_base_delay=0.05,
            retry_max_delay=0.2,
        )
        assert found(rows) == {(7, "drifted", "title")}
        assert stats.unreadable == 0 and stats.retries >= 2
        answered = sb.state.stats
        assert answered.count(Route.GET_WORKSPACES, 429) >= 1
        assert sum(answered.count(Route.GET_WORKSPACES, s) for s in (500, 502, 503)) >= 1
        assert answered.count(Route.GET_WORKSPACES, 200) == 3
        assert stats.read_requests == answered.count(Route.GET_WORKSPACES)

        sb.set_faults(FaultConfig(error_rate=1.0, seed=4))
        rows, stats = await run_verify(sqlite_store, sb, VerifyOptions(chunk=20), max_attempts=2)
        assert {r.finding for r in rows} == {Finding.UNREADABLE}
        assert len(rows) == stats.unreadable == 50
        assert stats.drifted_fields == stats.missing == 0
        assert all("gave up after 2 attempts" in (r.detail or "") for r in rows)


async def test_which_workspaces_verify_reads(store: Store) -> None:
    ids = await store.enqueue([update(n, title="x") for n in (4, 9, 2, 7, 4)])
    early, late = NOW - timedelta(days=3), NOW - timedelta(hours=1)
    await set_rows(store, ids[:3], state="succeeded", completed_at=early)
    await set_rows(store, ids[3:], state="succeeded", completed_at=late)
    outbox = OutboxReader(store.engine)

    async def chunks(**kwargs: Any) -> list[list[int]]:
        return [chunk async for chunk in outbox.synced_workspaces(chunk=2, **kwargs)]

    assert await chunks() == [[2, 4], [7, 9]]
    assert await chunks(since=NOW - timedelta(days=1)) == [[4, 7]]
    assert await chunks(workspaces=(9, 7, 3)) == [[7, 9]]
    assert await chunks(limit=3) == [[2, 4], [7]]
    history = await outbox.history([4])
    assert [(r.id, r.state) for r in history] == [(ids[0], "succeeded"), (ids[4], "succeeded")]
