"""Claims, leases, fencing and operator transitions on a real SQLite file and real PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from worker.batches import packed, unpack
from worker.changes import Kind, Lease, NewChange, Result, State
from worker.models import sync_changes
from worker.queries import Filters
from worker.store import Store


async def write_back(store: Store, results: list[Result], now: datetime) -> list[int]:
    """Results alone, as a flush with nothing else in it writes them."""
    return await store.write_batch(results, (), (), now)


NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def update(workspace_id: int, title: str, ref: str | None = None) -> NewChange:
    return NewChange(workspace_id, Kind.WORKSPACE_UPDATE, {"title": title}, ref)


def status(workspace_id: int, key: int) -> NewChange:
    return NewChange(workspace_id, Kind.STATUS_CHANGE, {"to_status_key": key})


async def rows(store: Store) -> dict[int, dict[str, object]]:
    async with store.engine.connect() as conn:
        result = await conn.execute(sa.select(sync_changes).order_by(sync_changes.c.id))
        return {row.id: dict(row._mapping) for row in result}


async def test_enqueue_assigns_ascending_ids_and_defaults(store: Store) -> None:
    ids = await store.enqueue([update(1, "a", "ref-1"), status(1, 310), update(2, "b")])
    assert ids == sorted(ids) and len(set(ids)) == 3
    stored = await rows(store)
    assert [stored[i]["state"] for i in ids] == ["pending"] * 3
    assert [stored[i]["attempts"] for i in ids] == [0, 0, 0]
    assert json.loads(str(stored[ids[0]]["payload"])) == {"title": "a"}
    assert stored[ids[0]]["source_ref"] == "ref-1"
    assert isinstance(stored[ids[0]]["created_at"], datetime)


async def test_claim_takes_whole_workspaces_oldest_first_and_never_twice(store: Store) -> None:
    ids = await store.enqueue([update(1, "a"), update(2, "b"), update(1, "c"), update(3, "d")])
    first = await store.claim("w1", limit=2, lease_seconds=60, now=NOW)
    # Workspace 1's queued changes travel together, so that they can merge into one PUT.
    assert [r.id for r in first] == [ids[0], ids[2]]
    second = await store.claim("w2", limit=10, lease_seconds=60, now=NOW)
    assert [r.id for r in second] == [ids[1], ids[3]]
    stored = await rows(store)
    assert stored[ids[0]]["state"] == "in_flight"
    assert (stored[ids[0]]["lease_owner"], stored[ids[1]]["lease_owner"]) == ("w1", "w2")
    # Workspace 1 is held by w1: a change enqueued for it now must wait, although due.
    [late] = await store.enqueue([update(1, "e")])
    assert await store.claim("w3", limit=10, lease_seconds=60, now=NOW) == []
    assert (await rows(store))[late]["state"] == "pending"


async def test_a_claim_never_exceeds_its_limit_and_keeps_prefixes(store: Store) -> None:
    ids = await store.enqueue([update(1, str(i)) for i in range(7)] + [update(2, "x")])
    claimed = await store.claim("w", limit=5, lease_seconds=60, now=NOW)
    assert [r.id for r in claimed] == ids[:5]


async def test_a_change_waiting_for_retry_blocks_later_changes_of_its_workspace(
    store: Store,
) -> None:
    ids = await store.enqueue([update(1, "a"), update(1, "b"), update(2, "c")])
    [a, b, _c] = await store.claim("w", limit=10, lease_seconds=60, now=NOW)
    await write_back(
        store,
        [
            Result(
                a.id,
                a.lease_token,
                State.PENDING,
                attempts=1,
                next_attempt_at=NOW + timedelta(seconds=30),
            ),
        ],
        NOW,
    )
    await store.release([Lease(b.id, b.lease_token), Lease(_c.id, _c.lease_token)], NOW)
    claimed = await store.claim("w", limit=10, lease_seconds=60, now=NOW + timedelta(seconds=1))
    assert [r.id for r in claimed] == [ids[2]]
    later = await store.claim("w", limit=10, lease_seconds=60, now=NOW + timedelta(seconds=31))
    assert [r.id for r in later] == [ids[0], ids[1]]


async def test_write_back_is_fenced_by_the_lease_token(store: Store) -> None:
    [change_id] = await store.enqueue([update(1, "a")])
    [stale] = await store.claim("w1", limit=1, lease_seconds=10, now=NOW)
    # w1 stalls past its lease; w2 reclaims the change and finishes it.
    [fresh] = await store.claim("w2", limit=1, lease_seconds=10, now=NOW + timedelta(seconds=11))
    assert fresh.id == change_id and fresh.lease_token > stale.lease_token
    lost = await write_back(
        store,
        [Result(change_id, stale.lease_token, State.FAILED, attempts=1, error_message="old")],
        NOW,
    )
    assert lost == [change_id]
    ok = await write_back(
        store, [Result(change_id, fresh.lease_token, State.SUCCEEDED, attempts=1)], NOW
    )
    assert ok == []
    stored = (await rows(store))[change_id]
    assert stored["state"] == "succeeded" and stored["error_message"] is None
    assert stored["lease_owner"] is None and stored["completed_at"] is not None


async def test_expired_leases_return_to_pending_with_a_new_token(store: Store) -> None:
    [change_id] = await store.enqueue([update(1, "a")])
    [claimed] = await store.claim("dead", limit=1, lease_seconds=5, now=NOW)
    assert await store.claim("other", limit=1, lease_seconds=5, now=NOW) == []
    [again] = await store.claim("other", limit=1, lease_seconds=5, now=NOW + timedelta(seconds=6))
    assert again.id == change_id
    assert again.attempts == claimed.attempts == 0
    assert (await rows(store))[change_id]["lease_owner"] == "other"


async def test_release_returns_changes_untouched(store: Store) -> None:
    ids = await store.enqueue([update(1, "a"), status(2, 310)])
    claimed = await store.claim("w", limit=10, lease_seconds=60, now=NOW)
    released = await store.release([Lease(r.id, r.lease_token) for r in claimed], NOW)
    assert released == 2
    stored = await rows(store)
    assert [stored[i]["state"] for i in ids] == ["pending", "pending"]
    assert [stored[i]["attempts"] for i in ids] == [0, 0]


async def test_extend_keeps_a_lease_alive(store: Store) -> None:
    await store.enqueue([update(1, "a")])
    [claimed] = await store.claim("w", limit=1, lease_seconds=5, now=NOW)
    held = await store.extend(
        [Lease(claimed.id, claimed.lease_token)], 60, NOW + timedelta(seconds=4)
    )
    assert held == {claimed.id}
    assert await store.claim("x", limit=1, lease_seconds=5, now=NOW + timedelta(seconds=30)) == []


async def test_counts_outcomes_next_due_and_report(store: Store) -> None:
    ids = await store.enqueue([update(1, "a", "crm-1"), update(2, "b"), status(3, 310)])
    claimed = await store.claim("w", limit=10, lease_seconds=60, now=NOW)
    tokens = {r.id: r.lease_token for r in claimed}
    await write_back(
        store,
        [
            Result(
                ids[0],
                tokens[ids[0]],
                State.SUCCEEDED,
                outcome=None,
                attempts=1,
                http_status=200,
                result={"updated_at": "x"},
            ),
            Result(
                ids[1],
                tokens[ids[1]],
                State.FAILED,
                attempts=1,
                http_status=422,
                error_type="validation",
                error_message="Title can't be blank",
                error_field="title",
            ),
            Result(
                ids[2],
                tokens[ids[2]],
                State.PENDING,
                attempts=1,
                http_status=503,
                next_attempt_at=NOW + timedelta(seconds=5),
            ),
        ],
        NOW,
    )
    counts = await store.counts()
    assert counts["succeeded"] == 1 and counts["failed"] == 1 and counts["pending"] == 1
    assert set(counts) == {str(s) for s in State}
    due = await store.next_due(NOW, NOW + timedelta(seconds=60))
    assert due == NOW + timedelta(seconds=5)
    assert await store.next_due(NOW, NOW + timedelta(seconds=1)) is None
    failed = [r async for r in store.report(Filters(states=(State.FAILED,)))]
    assert [(r["id"], r["error_message"], r["error_field"]) for r in failed] == [
        (ids[1], "Title can't be blank", "title")
    ]
    by_ref = [r async for r in store.report(Filters(source_refs=("crm-1",)))]
    assert [r["id"] for r in by_ref] == [ids[0]]


async def test_retry_and_cancel_respect_states_and_dry_run(store: Store) -> None:
    ids = await store.enqueue([update(1, "a"), update(2, "b"), update(3, "c")])
    claimed = await store.claim("w", limit=1, lease_seconds=60, now=NOW)
    await write_back(
        store,
        [Result(ids[0], claimed[0].lease_token, State.FAILED, attempts=5, error_type="system")],
        NOW,
    )
    assert await store.retry(Filters(error_types=("system",)), NOW, dry_run=True) == [ids[0]]
    assert (await rows(store))[ids[0]]["state"] == "failed"
    assert await store.retry(Filters(error_types=("system",)), NOW, dry_run=False) == [ids[0]]
    stored = (await rows(store))[ids[0]]
    assert stored["state"] == "pending" and stored["attempts"] == 0
    # Cancel touches pending changes only.
    cancelled = await store.cancel(Filters(workspace_ids=(2, 3)), NOW, dry_run=False)
    assert cancelled == ids[1:]
    assert await store.retry(Filters(states=(State.PENDING,)), NOW, dry_run=False) == []


async def test_existing_source_refs(store: Store) -> None:
    await store.enqueue([update(1, "a", "crm-1"), update(1, "b", "crm-2")])
    assert await store.existing_source_refs(["crm-2", "crm-3"]) == {"crm-2"}


async def test_sqlite_rows_with_bytes_that_are_not_utf8_are_still_claimed(
    sqlite_store: Store,
) -> None:
    """A producer can store invalid UTF-8 in SQLite; the claim must not fail on it."""
    async with sqlite_store.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO sync_changes (workspace_id, kind, payload) "
                "VALUES (1, 'workspace_update', CAST(X'7B22FF22' AS TEXT))"
            )
        )
    [row] = await sqlite_store.claim("w", limit=5, lease_seconds=60, now=NOW)
    assert row.payload == b'{"\xff"'
    report = [r async for r in sqlite_store.report(Filters())]
    assert report[0]["kind"] == "workspace_update"


@pytest.mark.parametrize(
    ("workspace_id", "kind", "payload", "expected"),
    [
        pytest.param("7", "'status_change'", "'{}'", (7, b"status_change", b"{}"), id="plain"),
        pytest.param(
            "'abc'", "'status_change'", "'{}'", (b"abc", b"status_change", b"{}"), id="text-id"
        ),
        pytest.param("7.5", "'k'", "'{}'", (b"7.5", b"k", b"{}"), id="real-id"),
        pytest.param(
            "X'01FF'",
            "X'FF00'",
            "CAST(X'7B22FF22' AS TEXT)",
            (b"\x01\xff", b"\xff\x00", b'{"\xff"'),
            id="blobs-and-bad-utf8",
        ),
        pytest.param(
            "9223372036854775807",
            "'k'",
            "'\"ü\"'",
            (2**63 - 1, b"k", '"ü"'.encode()),
            id="largest-int-and-unicode",
        ),
    ],
)
async def test_sqlite_claims_hand_back_producer_columns_as_stored(
    sqlite_store: Store,
    workspace_id: str,
    kind: str,
    payload: str,
    expected: tuple[object, object, object],
) -> None:
    """A claim reads SQLite's rows packed into one JSON value (see ``batches.packed``): whatever
    a producer stored comes back as the row held it, integers and nulls as such, anything else
    as its bytes, for validation to judge."""
    async with sqlite_store.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO sync_changes (workspace_id, kind, payload) "
                f"VALUES ({workspace_id}, {kind}, {payload})"
            )
        )
    [row] = await sqlite_store.claim("w", limit=5, lease_seconds=60, now=NOW)
    assert (row.workspace_id, row.kind, row.payload) == expected
    assert (row.attempts, row.lease_token, row.http_status, row.source_ref) == (0, 1, None, None)


async def test_a_packed_select_brings_every_row_in_one(sqlite_store: Store) -> None:
    """SQLite's driver wants the GIL back for every row it steps through; a packed select
    answers with one row however many it holds, in order."""
    numbers = sa.select(sa.func.json_each(json.dumps(list(range(1000)))).table_valued("value"))
    rows = numbers.subquery()
    statement = packed(sa.select(rows.c.value, sa.literal(None)).order_by(rows.c.value))
    async with sqlite_store.engine.connect() as conn:
        result = (await conn.execute(statement)).all()
    assert len(result) == 1
    assert unpack(result[0][0]) == [[n, None] for n in range(1000)]


async def test_next_due_skips_changes_queued_behind_another_worker(store: Store) -> None:
    """A change whose workspace another worker holds is not due: no claim loop may spin on it."""
    await store.enqueue([update(1, "a"), update(1, "b")])
    [held] = await store.claim("other", limit=1, lease_seconds=60, now=NOW)
    assert held.workspace_id == 1
    later = NOW + timedelta(seconds=5)
    assert await store.claim("me", limit=10, lease_seconds=60, now=later) == []
    due = await store.next_due(later, later + timedelta(seconds=120))
    assert due == NOW + timedelta(seconds=60)  # when the other worker's lease runs out
    assert await store.next_due(later, later + timedelta(seconds=30)) is None


async def test_timestamps_written_in_batches_read_back_exactly(store: Store) -> None:
    """Times inside the batched JSON are stored as the model's own columns store them."""
    ids = await store.enqueue([update(1, "a"), update(2, "b")])
    done, retry = await store.claim("w", limit=10, lease_seconds=60, now=NOW)
    now = NOW + timedelta(microseconds=123456)
    later = NOW + timedelta(seconds=30, microseconds=7)
    await write_back(
        store,
        [
            Result(done.id, done.lease_token, State.SUCCEEDED, attempts=1),
            Result(retry.id, retry.lease_token, State.PENDING, attempts=1, next_attempt_at=later),
        ],
        now,
    )
    stored = await rows(store)
    assert stored[ids[0]]["completed_at"] == stored[ids[0]]["updated_at"] == now
    assert stored[ids[1]]["next_attempt_at"] == later
    assert stored[ids[1]]["completed_at"] is None
    if store.dialect == "sqlite":
        # Stored as text: the batch's text must compare like the model's own.
        async with store.engine.connect() as conn:
            raw = (
                await conn.execute(
                    sa.text(
                        "SELECT updated_at, completed_at, next_attempt_at FROM sync_changes "
                        "WHERE id IN (:a, :b) ORDER BY id"
                    ),
                    {"a": ids[0], "b": ids[1]},
                )
            ).all()
        assert raw[0][0] == raw[0][1] == "2026-11-23 12:00:00.123456"
        assert raw[1][2] == "2026-11-23 12:00:30.000007"
