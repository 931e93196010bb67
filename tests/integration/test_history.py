"""show, runs, the report's new columns, operator notes and --supersede, on both engines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from worker import queries
from worker.changes import AttemptRecord, Kind, NewChange, Result, RunStats, State
from worker.explain import Why, why_not_sent
from worker.models import sync_changes
from worker.queries import Filters
from worker.store import Store
from worker.supersede import enqueue_superseding

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def update(workspace_id: int, title: str, ref: str | None = None) -> NewChange:
    return NewChange(workspace_id, Kind.WORKSPACE_UPDATE, {"title": title}, ref)


async def row(store: Store, change_id: int) -> dict[str, object]:
    async with store.engine.connect() as conn:
        found = (
            await conn.execute(sa.select(sync_changes).where(sync_changes.c.id == change_id))
        ).one()
        return dict(found._mapping)


async def fail_it(store: Store, change_id: int, status: int = 403) -> None:
    """``change_id`` failed with ``status``, as a run writes it: the row and the attempt log."""
    async with store.engine.begin() as conn:
        workspace = await conn.scalar(
            sa.update(sync_changes)
            .where(sync_changes.c.id == change_id)
            .values(
                state="failed",
                attempts=1,
                http_status=status,
                error_type="system",
                error_message="You do not have permission",
                completed_at=NOW,
                updated_at=NOW,
            )
            .returning(sync_changes.c.workspace_id)
        )
    record = AttemptRecord(
        "run-a",
        (change_id,),
        int(workspace),
        "POST /workspace_status_changes",
        status,
        3.0,
        "system",
        "You do not have permission",
        "req-fail",
        NOW,
    )
    await store.write_batch((), (), (record,), NOW)


async def test_show_gathers_attempts_runs_and_the_changes_around_it(store: Store) -> None:
    first, second, third = await store.enqueue(
        [update(7, "a"), update(7, "b", "crm-7"), update(8, "c")]
    )
    await store.start_run("run-1", "w1", "run", NOW)
    await store.start_run("run-2", "w2", "serve", NOW + timedelta(seconds=5))
    claimed = {r.id: r for r in await store.claim("w1", 50, 60, NOW)}
    retry_at = NOW + timedelta(minutes=5)
    records = [
        AttemptRecord(
            "run-1",
            (first, second),
            7,
            "PUT /workspaces/{id}",
            503,
            12.5,
            "system",
            "down",
            "req-1",
            NOW,
        ),
        AttemptRecord(
            "run-1", (third,), 8, "PUT /workspaces/{id}", 200, 4.0, None, None, "req-other", NOW
        ),
        # A change ID that only contains ``first``'s digits must not count as ``first``'s.
        AttemptRecord(
            "run-1",
            (first * 10 + 1,),
            7,
            "PUT /workspaces/{id}",
            200,
            1.0,
            None,
            None,
            "req-lookalike",
            NOW,
        ),
        AttemptRecord(
            "run-2",
            (first, second),
            7,
            "PUT /workspaces/{id}",
            None,
            60000.0,
            "timeout",
            "timed out",
            None,
            NOW + timedelta(seconds=6),
        ),
    ]
    results = [
        Result(
            first,
            claimed[first].lease_token,
            State.PENDING,
            attempts=2,
            error_type="timeout",
            next_attempt_at=retry_at,
        ),
        Result(
            second,
            claimed[second].lease_token,
            State.PENDING,
            attempts=2,
            error_type="timeout",
            next_attempt_at=retry_at,
        ),
        Result(third, claimed[third].lease_token, State.SUCCEEDED, attempts=1, http_status=200),
    ]
    await store.write_batch(results, (), records, NOW)
    await store.finish_run("run-1", RunStats(claimed=3), "drained", NOW, 2.0)

    history = await store.change_history(NOW, change_id=first)
    assert history is not None
    assert [a["request_id"] for a in history.attempts] == ["req-1", None]
    assert [a["run_id"] for a in history.attempts] == ["run-1", "run-2"]
    assert history.attempts[1]["error_type"] == "timeout"
    assert [(r["id"], r["ended_because"]) for r in history.runs] == [
        ("run-1", "drained"),
        ("run-2", None),
    ]
    why = why_not_sent(history.queued(), history.workspace, NOW, live_workers=1)
    assert why is not None and (why.why, why.until) == (Why.WAITING_FOR_RETRY, retry_at)

    # The second waits behind the first's retry; found by its source_ref.
    by_ref = await store.change_history(NOW, source_ref="crm-7")
    assert by_ref is not None and by_ref.change["id"] == second
    why = why_not_sent(by_ref.queued(), by_ref.workspace, NOW, live_workers=1)
    # Its own retry comes first; once that is past, the first's retry still holds it.
    assert why is not None and why.why is Why.WAITING_FOR_RETRY
    assert await store.change_history(NOW, change_id=third + 100) is None
    assert await store.change_history(NOW, source_ref="nobody") is None


async def test_show_names_the_change_ahead_and_the_worker_that_holds_it(store: Store) -> None:
    first, second = await store.enqueue([update(3, "a"), update(3, "b")])
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.update(sync_changes)
            .where(sync_changes.c.id == first)
            .values(
                state="in_flight",
                lease_owner="worker-x",
                lease_expires_at=NOW + timedelta(seconds=60),
            )
        )
    history = await store.change_history(NOW, change_id=second)
    assert history is not None
    why = why_not_sent(history.queued(), history.workspace, NOW, live_workers=1)
    assert why is not None
    assert (why.why, why.change_id, why.worker) == (Why.HELD_BEHIND, first, "worker-x")
    mine = await store.change_history(NOW, change_id=first)
    assert mine is not None
    why = why_not_sent(mine.queued(), mine.workspace, NOW, live_workers=1)
    assert why is not None and (why.why, why.worker) == (Why.IN_FLIGHT, "worker-x")


async def test_show_lists_what_a_request_carried(store: Store) -> None:
    first, second = await store.enqueue([update(4, "a"), update(4, "b")])
    claimed = {r.id: r for r in await store.claim("w", 50, 60, NOW)}
    await store.write_batch(
        [
            Result(
                first,
                claimed[first].lease_token,
                State.SUCCEEDED,
                attempts=1,
                merged_into_id=second,
            ),
            Result(second, claimed[second].lease_token, State.SUCCEEDED, attempts=1),
        ],
        (),
        (),
        NOW,
    )
    carrier = await store.change_history(NOW, change_id=second)
    assert carrier is not None and carrier.carried == [first]
    assert why_not_sent(carrier.queued(), carrier.workspace, NOW, 1) is None


async def test_runs_newest_first(store: Store) -> None:
    for k in range(3):
        await store.start_run(f"run-{k}", "w", "run", NOW + timedelta(minutes=k))
    await store.finish_run("run-0", RunStats(claimed=4, succeeded=3, failed=1), "drained", NOW, 1.5)
    runs = await store.runs(limit=2)
    assert [r["id"] for r in runs] == ["run-2", "run-1"]
    [oldest] = [r for r in await store.runs(limit=10) if r["id"] == "run-0"]
    assert (oldest["claimed"], oldest["succeeded"], oldest["failed"], oldest["duration_s"]) == (
        4,
        3,
        1,
        1.5,
    )


async def test_report_has_payload_completion_and_the_last_request_id(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queries, "REPORT_PAGE", 2)  # several pages, each on its own connection
    ids = await store.enqueue([update(w, f"t{w}") for w in range(1, 6)])
    await fail_it(store, ids[0])
    rows = [r async for r in store.report(Filters())]
    assert [r["id"] for r in rows] == ids
    assert rows[0]["last_request_id"] == "req-fail"
    assert rows[0]["completed_at"] == NOW
    assert rows[0]["payload"] == '{"title":"t1"}'
    assert [r["last_request_id"] for r in rows[1:]] == [None] * 4
    limited = [r["id"] async for r in store.report(Filters(), limit=3)]
    assert limited == ids[:3]


async def test_retry_clears_the_last_answer_and_notes_who_and_why(store: Store) -> None:
    [change_id] = await store.enqueue([update(1, "a")])
    await fail_it(store, change_id)
    retried = await store.retry(Filters(ids=(change_id,)), NOW, False, "n1 retried by ann: fixed")
    assert retried == [change_id]
    after = await row(store, change_id)
    assert (after["state"], after["attempts"]) == ("pending", 0)
    cleared = ("http_status", "error_type", "error_message", "error_field", "result", "outcome")
    assert [after[k] for k in cleared] == [None] * len(cleared)
    assert await store.cancel(Filters(ids=(change_id,)), NOW, False, "n2 cancelled by bob") == [
        change_id
    ]
    after = await row(store, change_id)
    assert after["state"] == "cancelled" and after["http_status"] is None
    assert after["operator_note"] == "n1 retried by ann: fixed\nn2 cancelled by bob"
    # A dry run writes no note.
    await store.retry(Filters(ids=(change_id,)), NOW, True, "n3")
    assert (await row(store, change_id))[
        "operator_note"
    ] == "n1 retried by ann: fixed\nn2 cancelled by bob"
    # The attempt log keeps the 403.
    history = await store.change_history(NOW, change_id=change_id)
    assert history is not None and [a["http_status"] for a in history.attempts] == [403]


async def test_supersede_hands_the_source_ref_on_and_keeps_the_history(store: Store) -> None:
    failed, busy, done = await store.enqueue(
        [update(1, "bad", "crm-1"), update(2, "x", "crm-2"), update(3, "y", "crm-3")]
    )
    await fail_it(store, failed)
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.update(sync_changes).where(sync_changes.c.id == done).values(state="succeeded")
        )
    lines = [
        (1, update(1, "good", "crm-1")),
        (2, update(2, "x2", "crm-2")),
        (3, update(3, "y2", "crm-3")),
        (4, update(4, "new", "crm-4")),
    ]
    result = await enqueue_superseding(store.engine, lines, "ann", NOW)
    assert [n for n, _ in result.rejected] == [2, 3]
    assert f"change {busy} is pending" in result.rejected[0][1]
    assert f"change {done} is succeeded" in result.rejected[1][1]
    new, brand_new = result.ids
    assert result.replaced == {failed: new}
    old = await row(store, failed)
    assert (old["source_ref"], old["superseded_by"], old["state"]) == (None, new, "failed")
    assert str(old["operator_note"]).endswith(
        f"replaced by change {new} (enqueue --supersede) by ann"
    )
    assert (await row(store, new))["source_ref"] == "crm-1"
    assert (await row(store, brand_new))["source_ref"] == "crm-4"
    history = await store.change_history(NOW, source_ref="crm-1")
    assert history is not None and history.change["id"] == new
    assert history.predecessors == [failed]
    # A superseded change is history: retry leaves it, and the jsonl report leaves it out.
    assert await store.retry(Filters(ids=(failed,)), NOW, False, "x") == []
    current = [r["id"] async for r in store.report(Filters(superseded=False))]
    assert failed not in current and new in current
    # The new change can itself be superseded once it fails; the chain is followed back.
    await fail_it(store, new)
    again = await enqueue_superseding(store.engine, [(1, update(1, "best", "crm-1"))], "ann", NOW)
    [newest] = again.ids
    history = await store.change_history(NOW, change_id=newest)
    assert history is not None and history.predecessors == [new, failed]
