"""The whole pipeline, end to end: a real SQLite file, the sandbox on a real socket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from worker.changes import NewChange, State
from worker.exceptions import DatabaseError
from worker.models import sync_attempts
from worker.sandbox import FaultConfig
from worker.sandbox.faults import FaultKind
from worker.sandbox.state import Route
from worker.sandbox.testing import SandboxHandle
from worker.store import Store

from .conftest import SandboxFactory
from .pipeline_helpers import TOKEN, all_rows, dispatcher_for, insert_raw, status, update


async def test_changes_are_coalesced_ordered_and_written_back(
    sqlite_store: Store, sandbox: SandboxHandle
) -> None:
    ids = await sqlite_store.enqueue(
        [
            update(1, title="First"),
            update(1, due_date="2026-12-01", custom_fields=[{"custom_field_id": 7, "value": "a"}]),
            update(1, custom_fields=[{"custom_field_id": 7, "value": "b"}], title="Final"),
            status(1, 310, "crm-1"),
            update(1, description="after the status change"),
            status(2, 600),
            update(3, title="Three"),
        ]
    )
    async with dispatcher_for(sqlite_store, sandbox) as dispatcher:
        report = await dispatcher.run()
    assert report.ended_because == "drained"
    rows = await all_rows(sqlite_store)
    assert {r["state"] for r in rows.values()} == {"succeeded"}
    assert [rows[i]["outcome"] for i in ids[:3]] == ["merged", "merged", "applied"]
    assert rows[ids[0]]["merged_into_id"] == ids[2]
    assert rows[ids[3]]["result"]["status"]["key"] == "310"
    assert [rows[i]["attempts"] for i in ids] == [1] * len(ids)

    state = sandbox.state
    assert state.stats.count(Route.PUT_WORKSPACE) == 3
    assert state.stats.count(Route.POST_STATUS_CHANGE) == 2
    one = state.workspaces[1].to_json()
    assert one["title"] == "Final"
    assert one["due_date"] == "2026-12-01"
    assert one["custom_field_values"] == {"7": "b"}
    assert one["description"] == "after the status change"
    assert [c.to_status_key for c in state.status_changes(1)] == [310]
    assert state.workspaces[2].status_key == 600

    async with sqlite_store.engine.connect() as conn:
        attempts = (await conn.execute(sa.select(sync_attempts))).all()
    assert len(attempts) == 5
    assert all(a.request_id for a in attempts)


async def test_one_run_sends_a_workspaces_status_changes_one_durable_result_at_a_time(
    sqlite_store: Store, sandbox: SandboxHandle
) -> None:
    ids = await sqlite_store.enqueue(
        [
            status(1, 310),
            update(1, title="between"),
            status(1, 100),
            status(1, 310),
            update(1, title="last"),
            status(2, 600),
        ]
    )
    async with dispatcher_for(sqlite_store, sandbox) as dispatcher:
        report = await dispatcher.run()
    assert report.ended_because == "drained"
    rows = await all_rows(sqlite_store)
    assert {rows[i]["state"] for i in ids} == {"succeeded"}
    assert [rows[i]["attempts"] for i in ids] == [1] * len(ids)
    assert [c.to_status_key for c in sandbox.state.status_changes(1)] == [310, 100, 310]
    assert sandbox.state.workspaces[1].to_json()["title"] == "last"
    # Each later status change was claimed again only after the one before it was written
    # back: the first claim took workspace 1 up to its second status change.
    assert report.stats.claimed == len(ids) + 3 + 2
    async with sqlite_store.engine.connect() as conn:
        sent = {
            int(a.change_ids): a.attempted_at
            for a in (await conn.execute(sa.select(sync_attempts))).all()
        }
    first, second, third = ids[0], ids[2], ids[3]
    assert rows[first]["completed_at"] <= sent[second]
    assert rows[second]["completed_at"] <= sent[third]


async def test_bad_rows_become_invalid_without_a_request(
    sqlite_store: Store, sandbox: SandboxHandle
) -> None:
    bad = [
        await insert_raw(sqlite_store, 1, "workspace_update", "{not json"),
        await insert_raw(sqlite_store, 1, "rename_project", '{"title": "x"}'),
        await insert_raw(sqlite_store, -4, "status_change", '{"to_status_key": 310}'),
        await insert_raw(sqlite_store, 1, "workspace_update", '{"due_date": "2026-02-30"}'),
        await insert_raw(sqlite_store, 1, "workspace_update", '{"colour": "red"}'),
        await insert_raw(sqlite_store, 1, "status_change", '{"to_status_key": "310"}'),
    ]
    good = await insert_raw(sqlite_store, 1, "workspace_update", '{"title": "ok"}')
    async with dispatcher_for(sqlite_store, sandbox) as dispatcher:
        report = await dispatcher.run()
    rows = await all_rows(sqlite_store)
    assert [rows[i]["state"] for i in bad] == ["invalid"] * len(bad)
    assert [rows[i]["error_field"] for i in bad] == [
        "payload",
        "kind",
        "workspace_id",
        "payload.due_date",
        "payload.colour",
        "payload.to_status_key",
    ]
    assert all(rows[i]["attempts"] == 0 for i in bad)
    assert rows[good]["state"] == "succeeded"
    assert sandbox.state.stats.count() == 1
    assert report.stats.invalid == len(bad)


async def test_kantata_errors_fail_at_once_with_type_message_and_field(
    sqlite_store: Store, sandbox_factory: SandboxFactory
) -> None:
    async with sandbox_factory(forbidden=frozenset({5})) as sandbox:
        ids = await sqlite_store.enqueue(
            [update(5, title="no"), status(99999, 310), status(2, 699), update(3, title="yes")]
        )
        async with dispatcher_for(sqlite_store, sandbox) as dispatcher:
            await dispatcher.run()
    rows = await all_rows(sqlite_store)
    forbidden, missing, disabled, fine = (rows[i] for i in ids)
    assert (forbidden["state"], forbidden["http_status"], forbidden["attempts"]) == (
        "failed",
        403,
        1,
    )
    assert "permission" in forbidden["error_message"]
    assert (missing["state"], missing["http_status"]) == ("failed", 404)
    assert (disabled["state"], disabled["http_status"], disabled["error_type"]) == (
        "failed",
        422,
        "validation",
    )
    assert disabled["error_field"] == "to_status_key"
    assert fine["state"] == "succeeded"


async def test_same_status_is_confirmed_by_read_back(
    sqlite_store: Store, sandbox: SandboxHandle
) -> None:
    [change_id] = await sqlite_store.enqueue([status(4, 100)])  # already the seeded status
    async with dispatcher_for(sqlite_store, sandbox) as dispatcher:
        await dispatcher.run()
    row = (await all_rows(sqlite_store))[change_id]
    assert (row["state"], row["outcome"]) == ("succeeded", "already_applied")
    assert row["result"]["status"]["key"] == "100"
    assert sandbox.state.stats.count(Route.GET_WORKSPACE, 200) == 1
    assert sandbox.state.status_changes(4) == []


async def test_apply_then_fail_never_records_a_status_change_twice(
    sqlite_store: Store, sandbox_factory: SandboxFactory
) -> None:
    faults = FaultConfig(apply_then_fail_rate=0.5, apply_then_fail_mode="503", seed=3)
    async with sandbox_factory(faults=faults) as sandbox:
        ids = await sqlite_store.enqueue([status(w, 310) for w in range(1, 31)])
        async with dispatcher_for(sqlite_store, sandbox, max_attempts=30) as dispatcher:
            await dispatcher.run()
        history = sandbox.state.history
        assert sandbox.state.stats.faults[FaultKind.APPLY_THEN_FAIL] > 5
    rows = await all_rows(sqlite_store)
    assert {rows[i]["state"] for i in ids} == {"succeeded"}
    assert {rows[i]["outcome"] for i in ids} == {"applied", "already_applied"}
    assert sorted(c.workspace_id for c in history) == list(range(1, 31))


async def test_transient_faults_are_retried_until_everything_lands_once(
    sqlite_store: Store, sandbox_factory: SandboxFactory
) -> None:
    faults = FaultConfig(error_rate=0.3, drop_rate=0.05, apply_then_fail_rate=0.1, seed=11)
    async with sandbox_factory(faults=faults) as sandbox:
        changes = []
        for w in range(1, 41):
            changes += [update(w, title=f"T{w}"), status(w, 310), update(w, price=w * 100)]
        ids = await sqlite_store.enqueue(changes)
        async with dispatcher_for(sqlite_store, sandbox, max_attempts=20) as dispatcher:
            report = await dispatcher.run()
        state = sandbox.state
        assert report.stats.retried > 0
        rows = await all_rows(sqlite_store)
        assert {rows[i]["state"] for i in ids} == {"succeeded"}
        for w in range(1, 41):
            workspace = state.workspaces[w].to_json()
            assert (workspace["title"], workspace["price"], workspace["status_key"]) == (
                f"T{w}",
                str(w * 100),
                310,
            )
            assert [c.to_status_key for c in state.status_changes(w)] == [310]


async def test_retries_give_up_after_max_attempts_with_the_last_error(
    sqlite_store: Store, sandbox_factory: SandboxFactory
) -> None:
    async with sandbox_factory(faults=FaultConfig(error_rate=1.0, seed=1)) as sandbox:
        [change_id] = await sqlite_store.enqueue([update(1, title="x")])
        async with dispatcher_for(sqlite_store, sandbox, max_attempts=3) as dispatcher:
            await dispatcher.run()
        assert sandbox.state.stats.count(Route.PUT_WORKSPACE) == 3
    row = (await all_rows(sqlite_store))[change_id]
    assert (row["state"], row["attempts"]) == ("failed", 3)
    assert row["http_status"] in {500, 502, 503}
    assert row["error_message"].startswith("gave up after 3 attempts")


async def test_a_revoked_token_stops_the_run_and_charges_nothing(
    sqlite_store: Store, sandbox: SandboxHandle
) -> None:
    ids = await sqlite_store.enqueue([update(w, title="x") for w in range(1, 51)])
    sandbox.state.revoke(TOKEN)
    async with dispatcher_for(sqlite_store, sandbox, concurrency=4) as dispatcher:
        report = await dispatcher.run()
    assert report.ended_because == "token_rejected"
    rows = await all_rows(sqlite_store)
    assert {rows[i]["state"] for i in ids} == {"pending"}
    assert {rows[i]["attempts"] for i in ids} == {0}
    assert sandbox.state.stats.count(status=401) <= 4


async def test_rate_limit_is_never_exceeded_and_429_slows_the_worker(
    sqlite_store: Store, sandbox_factory: SandboxFactory
) -> None:
    async with sandbox_factory(rate_limit=40) as sandbox:
        ids = await sqlite_store.enqueue([update(w, title="x") for w in range(1, 61)])
        async with dispatcher_for(sqlite_store, sandbox, rate_limit=40) as dispatcher:
            await dispatcher.run()
        assert sandbox.state.stats.total_429 == 0
        assert sandbox.state.stats.accepted.max <= 40
    async with sandbox_factory(rate_limit=20, retry_after=1) as sandbox:
        more = await sqlite_store.enqueue([update(w, title="y") for w in range(1, 61)])
        async with dispatcher_for(sqlite_store, sandbox, rate_limit=200) as dispatcher:
            report = await dispatcher.run()
            assert dispatcher.limiter.throttled > 0
        assert report.stats.rate_limited > 0
    rows = await all_rows(sqlite_store)
    assert {rows[i]["state"] for i in ids + more} == {"succeeded"}


async def test_one_log_line_per_attempt_and_one_summary_without_the_token(
    sqlite_store: Store, sandbox: SandboxHandle
) -> None:
    await sqlite_store.enqueue([update(1, title="a"), status(1, 310), status(2, 100)])
    with capture_logs(processors=[merge_contextvars]) as logs:
        async with dispatcher_for(sqlite_store, sandbox) as dispatcher:
            report = await dispatcher.run()
    attempts = [e for e in logs if e["event"] == "http.attempt"]
    assert len(attempts) == report.stats.requests == 4  # PUT, POST, POST (422), GET
    assert {e["workspace_id"] for e in attempts} == {1, 2}
    assert all("change_id" in e and e["run_id"] == report.run_id for e in attempts)
    summary = [e for e in logs if e["event"] == "run.finished"]
    assert len(summary) == 1 and summary[0]["succeeded"] == 3
    assert TOKEN not in repr(logs)


async def test_producers_can_insert_while_a_run_writes_back(
    sqlite_store: Store, sandbox_factory: SandboxFactory
) -> None:
    async with sandbox_factory(faults=FaultConfig(latency_ms=5)) as sandbox:
        await sqlite_store.enqueue([update(w, title="a") for w in range(1, 101)])

        async def produce() -> list[int]:
            ids: list[int] = []
            for w in range(101, 151):
                ids += await sqlite_store.enqueue([update(w, title="late")])
                await asyncio.sleep(0.005)
            return ids

        async with dispatcher_for(sqlite_store, sandbox) as dispatcher:
            _report, late = await asyncio.gather(dispatcher.run(), produce())
            await dispatcher.run()
    rows = await all_rows(sqlite_store)
    assert len(late) == 50
    assert {r["state"] for r in rows.values()} == {"succeeded"}


async def test_stop_drains_in_flight_work_and_leaves_nothing_claimed(
    sqlite_store: Store, sandbox_factory: SandboxFactory
) -> None:
    async with sandbox_factory(faults=FaultConfig(latency_ms=20)) as sandbox:
        await sqlite_store.enqueue([update(w, title="a") for w in range(1, 150)])
        stop = asyncio.Event()
        async with dispatcher_for(sqlite_store, sandbox, concurrency=4) as dispatcher:
            task = asyncio.create_task(dispatcher.run(stop))
            await asyncio.sleep(0.3)
            stop.set()
            report = await task
    assert report.ended_because == "stopped"
    counts = await sqlite_store.counts()
    assert counts[State.IN_FLIGHT] == 0
    assert 0 < counts[State.SUCCEEDED] < 149
    assert counts[State.SUCCEEDED] + counts[State.PENDING] == 149
    assert counts[State.SUCCEEDED] == sandbox.state.stats.count(Route.PUT_WORKSPACE, 200)


async def test_a_token_revoked_mid_run_stops_it_without_failing_or_charging(
    sqlite_store: Store, sandbox_factory: SandboxFactory
) -> None:
    async with sandbox_factory(faults=FaultConfig(latency_ms=10)) as sandbox:
        ids = await sqlite_store.enqueue([update(w, title="x") for w in range(1, 121)])
        async with dispatcher_for(sqlite_store, sandbox, concurrency=4) as dispatcher:
            task = asyncio.create_task(dispatcher.run())
            while sandbox.state.stats.count(Route.PUT_WORKSPACE, 200) < 10:
                await asyncio.sleep(0.01)
            sandbox.state.revoke(TOKEN)
            report = await task
        applied = sandbox.state.stats.count(Route.PUT_WORKSPACE, 200)
    assert report.ended_because == "token_rejected"
    rows = await all_rows(sqlite_store)
    states = [rows[i]["state"] for i in ids]
    assert "failed" not in states and "in_flight" not in states
    assert states.count("succeeded") == applied
    assert {rows[i]["attempts"] for i in ids if rows[i]["state"] == "pending"} == {0}
    assert states.count("pending") == len(ids) - applied > 0


async def test_requests_waiting_for_the_limiter_are_not_sent_after_a_401(
    sqlite_store: Store, sandbox: SandboxHandle
) -> None:
    ids = await sqlite_store.enqueue([update(w, title="x") for w in range(1, 41)])
    sandbox.state.revoke(TOKEN)
    async with dispatcher_for(sqlite_store, sandbox, rate_limit=20, concurrency=8) as dispatcher:
        report = await dispatcher.run()
    assert report.ended_because == "token_rejected"
    # Seven workers were queued behind the limiter; none of them may send after the 401.
    assert sandbox.state.stats.count(status=401) <= 2
    rows = await all_rows(sqlite_store)
    assert {(rows[i]["state"], rows[i]["attempts"]) for i in ids} == {("pending", 0)}


class FailingStore(Store):
    """A store whose write-back breaks after ``good`` batches, for ``bad`` batches in a row.

    ``bad=None`` means for ever, as when the database goes away.
    """

    def __init__(self, engine: Any, *, good: int = 1, bad: int | None = None) -> None:
        super().__init__(engine)
        self.good, self.bad = good, bad
        self.calls = self.failures = 0

    async def write_batch(self, results, releases, attempts, now):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls > self.good and (self.bad is None or self.failures < self.bad):
            self.failures += 1
            raise DatabaseError("writing results back: connection lost")
        return await super().write_batch(results, releases, attempts, now)


def _three_steps_each(workspaces: int) -> list[NewChange]:
    changes = []
    for w in range(1, workspaces + 1):
        changes += [update(w, title="a"), status(w, 310), update(w, title="b")]
    return changes


async def test_a_failed_write_ends_the_run_instead_of_hanging(
    sqlite_store: Store, sandbox_factory: SandboxFactory
) -> None:
    failing = FailingStore(sqlite_store.engine)
    await failing.enqueue(_three_steps_each(30))
    # Slow answers spread the run over several flushes, so that the second one fails.
    async with (
        sandbox_factory(faults=FaultConfig(latency_ms=20)) as sandbox,
        dispatcher_for(failing, sandbox, concurrency=4, db_retry_seconds=1.5) as dispatcher,
    ):
        with capture_logs() as logs, pytest.raises(DatabaseError, match="connection lost"):
            await asyncio.wait_for(dispatcher.run(), timeout=30)
    assert failing.failures >= 3  # the flusher retried before it gave up
    # The run still recorded its end and its summary, naming the error that ended it.
    [summary] = [e for e in logs if e["event"] == "run.finished"]
    assert summary["ended_because"] == "error"
    assert "connection lost" in summary["error"]
    rows = await all_rows(sqlite_store)
    # Nothing failed for good; changes whose result could not be written stay leased (a dead
    # database can be told nothing) and come back when the lease expires.
    assert "failed" not in {r["state"] for r in rows.values()}
    stuck = [r for r in rows.values() if r["state"] == "in_flight"]
    assert all(r["lease_expires_at"] is not None for r in stuck)
    assert len(stuck) < len(rows)


async def test_a_write_that_fails_once_is_retried_and_nothing_is_lost(
    sqlite_store: Store, sandbox_factory: SandboxFactory
) -> None:
    flaky = FailingStore(sqlite_store.engine, good=1, bad=2)
    ids = await flaky.enqueue(_three_steps_each(30))
    with capture_logs() as logs:
        async with (
            sandbox_factory(faults=FaultConfig(latency_ms=20)) as sandbox,
            dispatcher_for(flaky, sandbox, concurrency=4) as dispatcher,
        ):
            report = await asyncio.wait_for(dispatcher.run(), timeout=30)
    assert flaky.failures == 2
    assert [e["failures"] for e in logs if e["event"] == "flush.failed"] == [1, 2]
    assert report.ended_because == "drained"
    rows = await all_rows(sqlite_store)
    assert {rows[i]["state"] for i in ids} == {"succeeded"}
    # Every request was logged once, none twice, although two flushes carrying them failed.
    async with sqlite_store.engine.connect() as conn:
        logged = (
            await conn.execute(sa.select(sa.func.count()).select_from(sync_attempts))
        ).scalar()
    assert logged == report.stats.requests == sandbox.state.stats.count()
