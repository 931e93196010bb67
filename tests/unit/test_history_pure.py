"""Retention durations, operator notes, supersede plans and the report's JSON Lines (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from worker.changes import Kind, NewChange
from worker.durations import parse_duration
from worker.queries import MAX_REASON, note_line
from worker.render import enqueue_line, json_row, payload_value
from worker.retention import _percentile, change_ids
from worker.supersede import Holder, plan_supersede
from worker.validation import parse_line

NOW = datetime(2026, 12, 1, 9, 30, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("2w", timedelta(weeks=2)),
        (" 7d ", timedelta(days=7)),
        ("7 d", timedelta(days=7)),
        ("+3h", timedelta(hours=3)),
        ("36500d", timedelta(days=36_500)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("30", "'30' has no unit; use s, m, h, d or w, e.g. 30d"),
        ("d", "'d' has no number"),
        ("30x", "unknown unit 'x'"),
        ("1M", "unknown unit 'M'"),
        ("30days", "unknown unit 'days'"),
        ("0d", "'0d' must be greater than zero"),
        ("-5d", "'-5d' must be greater than zero"),
        ("1.5d", "'1.5d' is not a whole number of d"),
        ("36501d", "longer than 36500 days"),
        ("99999999999999999999w", "longer than 36500 days"),
        ("1d12h", "not a duration"),
        ("d30", "not a duration"),
    ],
)
def test_parse_duration_names_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_duration(text)
    assert problem in str(raised.value)


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("12", {12}),
        ("12,13,14", {12, 13, 14}),
        (b"7,8", {7, 8}),
        ("", set()),
        ("5,,x,6", {5, 6}),
    ],
)
def test_change_ids_of_an_attempt(text: object, ids: set[int]) -> None:
    assert change_ids(text) == ids


@pytest.mark.parametrize(
    ("action", "operator", "reason", "line"),
    [
        ("cancelled", "alice", None, "2026-12-01 09:30:05 UTC cancelled by alice"),
        ("cancelled", "alice", "", "2026-12-01 09:30:05 UTC cancelled by alice"),
        ("retried", "bob", "perm fixed", "2026-12-01 09:30:05 UTC retried by bob: perm fixed"),
        (
            "retried",
            "bob",
            " two\nlines\t here ",
            "2026-12-01 09:30:05 UTC retried by bob: two lines here",
        ),
        ("retried", "  ", "x", "2026-12-01 09:30:05 UTC retried by (unknown): x"),
    ],
)
def test_note_line(action: str, operator: str, reason: str | None, line: str) -> None:
    assert note_line(action, operator, reason, NOW) == line


def test_a_long_reason_is_cut() -> None:
    line = note_line("cancelled", "alice", "y" * 5000, NOW)
    reason = line.split(": ", 1)[1]
    assert len(reason) == MAX_REASON and reason.endswith("…")


def change(ref: str | None, title: str = "t") -> NewChange:
    return NewChange(12, Kind.WORKSPACE_UPDATE, {"title": title}, ref)


@pytest.mark.parametrize(
    ("state", "replaced"),
    [
        ("failed", True),
        ("invalid", True),
        ("cancelled", True),
        ("pending", False),
        ("in_flight", False),
        ("succeeded", False),
    ],
)
def test_plan_supersede_by_the_holders_state(state: str, replaced: bool) -> None:
    plan = plan_supersede([(3, change("crm-1"))], {"crm-1": Holder(40, state)})
    if replaced:
        assert (plan.insert, plan.replaces, plan.rejected) == ([(3, change("crm-1"))], {3: 40}, [])
    else:
        assert plan.insert == [] and plan.replaces == {}
        [(line, reason)] = plan.rejected
        assert line == 3
        assert reason == (
            f"source_ref: change 40 is {state}; only a failed, invalid or cancelled change can "
            "be superseded"
        )


def test_plan_supersede_mixes_new_replaced_and_refused_lines_in_order() -> None:
    lines = [(1, change("new")), (2, change(None)), (4, change("old")), (5, change("busy"))]
    holders = {"old": Holder(7, "failed"), "busy": Holder(8, "pending")}
    plan = plan_supersede(lines, holders)
    assert [n for n, _ in plan.insert] == [1, 4]
    assert plan.replaces == {4: 7}
    assert [n for n, _ in plan.rejected] == [2, 5]
    assert plan.rejected[0][1].startswith("source_ref: is required with --supersede")


REPORT_ROW: dict[str, object] = {
    "id": 9,
    "source_ref": "crm-9",
    "workspace_id": 12,
    "kind": "status_change",
    "payload": '{"to_status_key":310}',
    "state": "failed",
    "outcome": None,
    "attempts": 1,
    "http_status": 403,
    "error_type": "system",
    "error_message": "no",
    "error_field": None,
    "merged_into_id": None,
    "superseded_by": None,
    "operator_note": None,
    "created_at": NOW,
    "updated_at": NOW,
    "completed_at": NOW,
    "last_request_id": "req-1",
}


@pytest.mark.parametrize(
    ("row", "line"),
    [
        (
            REPORT_ROW,
            {
                "workspace_id": 12,
                "kind": "status_change",
                "payload": {"to_status_key": 310},
                "source_ref": "crm-9",
            },
        ),
        (
            {**REPORT_ROW, "source_ref": None},
            {"workspace_id": 12, "kind": "status_change", "payload": {"to_status_key": 310}},
        ),
        (
            {**REPORT_ROW, "payload": "{not json"},
            {
                "workspace_id": 12,
                "kind": "status_change",
                "payload": "{not json",
                "source_ref": "crm-9",
            },
        ),
    ],
)
def test_jsonl_lines_carry_the_producer_columns_only(
    row: dict[str, object], line: dict[str, object]
) -> None:
    assert json.loads(enqueue_line(row)) == line


def test_a_jsonl_line_of_a_good_change_is_what_enqueue_reads() -> None:
    parsed = parse_line(enqueue_line(REPORT_ROW))
    assert parsed == NewChange(12, Kind.STATUS_CHANGE, {"to_status_key": 310}, "crm-9")


def test_json_rows_hold_the_new_columns() -> None:
    row = json_row(REPORT_ROW)
    assert row["payload"] == {"to_status_key": 310}
    assert row["completed_at"] == NOW.isoformat()
    assert row["last_request_id"] == "req-1"
    assert set(row) >= {"superseded_by", "operator_note"}


@pytest.mark.parametrize(
    ("stored", "shown"),
    [('{"a":1}', {"a": 1}), ("[1]", [1]), ("oops", "oops"), (b'{"x":2}', {"x": 2}), (None, None)],
)
def test_payload_value(stored: object, shown: object) -> None:
    assert payload_value(stored) == shown


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 0.99, 0.0),
        ([5.0], 0.99, 5.0),
        ([float(i) for i in range(1, 101)], 0.99, 99.0),
        ([float(i) for i in range(1, 101)], 0.5, 50.0),
        ([3.0, 1.0, 2.0], 1.0, 3.0),
    ],
)
def test_percentile_of_transaction_times(values: list[float], q: float, expected: float) -> None:
    assert _percentile(values, q) == expected
