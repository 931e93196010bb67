"""Normalising Kantata's answers, comparing them with the desired state, and the repairs."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from worker.changes import Kind, NewChange
from worker.desired import Compare, DesiredState, Wanted
from worker.drift import (
    ABSENT,
    Drift,
    Finding,
    actual_value,
    as_row,
    compare,
    normalise,
    normalise_custom,
    repair_changes,
    same,
)
from worker.validation import validate_payload

T = datetime(2026, 11, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        (Compare.TEXT, "Q3 rollout", "Q3 rollout"),
        (Compare.TEXT, None, None),
        (Compare.CODE, "usd", "USD"),
        (Compare.ACCESS_LEVEL, "admin", "admins"),
        (Compare.ACCESS_LEVEL, "open", "open"),
        (Compare.DATE, "2026-12-01", date(2026, 12, 1)),
        (Compare.DATE, "2026-12-01T00:00:00Z", date(2026, 12, 1)),
        (Compare.DATE, "2026-12-01 00:00:00", date(2026, 12, 1)),
        (Compare.DATE, "2026-02-31", "2026-02-31"),
        (Compare.DATE, None, None),
        (Compare.BOOLEAN, True, True),
        (Compare.BOOLEAN, "false", False),
        (Compare.NUMBER, 30, Decimal(30)),
        (Compare.NUMBER, 30.0, Decimal(30)),
        (Compare.NUMBER, "30.50", Decimal("30.5")),
        (Compare.NUMBER, "n/a", "n/a"),
        (Compare.NUMBER, True, True),
        (Compare.MONEY, 1200, Decimal(1200)),
        (Compare.MONEY, "1200.00", Decimal(1200)),
        (Compare.MONEY, "$1,200.00", Decimal(1200)),
        (Compare.MONEY, "0", Decimal(0)),
        (Compare.REFERENCE, 12, "12"),
        (Compare.REFERENCE, "12", "12"),
        (Compare.REFERENCE_LIST, [3, 1, 2], ("1", "2", "3")),
        (Compare.REFERENCE_LIST, ["2", "1"], ("1", "2")),
        (Compare.STATUS, "310", 310),
        (Compare.STATUS, 310, 310),
    ],
)
def test_normalise(kind: Compare, value: Any, expected: Any) -> None:
    assert normalise(kind, value) == expected


@pytest.mark.parametrize(
    ("value_type", "desired", "actual", "equal"),
    [
        ("string", "foo", "foo", True),
        ("string", "foo", "Foo", False),
        ("string", "13", "013", False),
        ("date", "2014-02-25", "2014-02-25", True),
        ("date", "2014-02-25", "2014-02-26", False),
        ("number", "13", 13, True),
        ("number", "13", "13.0", True),
        ("number", "13", 14, False),
        ("currency", "[998, USD]", [998, "USD"], True),
        ("currency", "[998, USD]", "[998,usd]", True),
        ("currency", "[998, USD]", [999, "USD"], False),
        ("currency", "[998, USD]", [998, "EUR"], False),
        ("multi", "[1, 2, 4]", [4, 2, 1], True),
        ("multi", "[1, 2, 4]", [1, 2], False),
        ("single", "[3]", [3], True),
        ("single", "3", [3], True),
        (None, "foo", "foo", True),
        ("string", "foo", None, False),
    ],
)
def test_custom_field_values_compare_by_their_type(
    value_type: str | None, desired: str, actual: Any, equal: bool
) -> None:
    assert (normalise_custom(value_type, desired) == normalise_custom(value_type, actual)) is equal
    assert same("custom_fields.7", desired, actual, value_type) is equal


@pytest.mark.parametrize(
    ("path", "desired", "actual", "equal"),
    [
        ("title", "A", "A", True),
        ("title", "A", "A ", False),
        ("price", 1200, "1200", True),
        ("price", 1200, "1200.00", True),
        ("price", 1200, "1100", False),
        ("due_date", "2026-12-01", "2026-12-01", True),
        ("due_date", "2026-12-01", "2026-12-02", False),
        ("target_margin", 30, 30.0, True),
        ("rate_card_id", 4, 4, True),
        ("task_status_set_id", 12, "12", True),
        ("workspace_group_ids", [1, 2], ["2", "1"], True),
        ("access_level", "admins", "admin", True),
        ("access_level", "open", "admin", False),
        ("currency", "USD", "USD", True),
        ("archived", True, True, True),
        ("archived", True, False, False),
        ("status", 310, "310", True),
        ("status", 310, "600", False),
    ],
)
def test_same(path: str, desired: Any, actual: Any, equal: bool) -> None:
    assert same(path, desired, actual) is equal


WORKSPACE: dict[str, Any] = {
    "id": "5",
    "title": "A",
    "price": "1200",
    "price_in_cents": 120000,
    "due_date": "2026-12-01",
    "status": {"color": "green", "key": "310", "message": "In Progress"},
}
CUSTOM = {7: {"custom_field_id": "7", "type": "string", "value": "foo"}}


def test_actual_value_where_kantata_keeps_it() -> None:
    assert actual_value("status", WORKSPACE, None) == ("310", None)
    assert actual_value("status", {}, None) == (ABSENT, None)
    assert actual_value("title", WORKSPACE, None) == ("A", None)
    assert actual_value("approver_id", WORKSPACE, None) == (ABSENT, None)
    assert actual_value("custom_fields.7", WORKSPACE, CUSTOM) == ("foo", "string")
    assert actual_value("custom_fields.8", WORKSPACE, CUSTOM) == (None, None)
    assert actual_value("custom_fields.7", WORKSPACE, None) == (ABSENT, None)
    cents_only = {"price_in_cents": 99950}
    assert actual_value("price", cents_only, None) == (Decimal("999.5"), None)
    assert same("price", 999.5, actual_value("price", cents_only, None)[0])


def state(fields: dict[str, Any], unsettled: frozenset[str] = frozenset()) -> DesiredState:
    return DesiredState(
        5,
        {path: Wanted(value, 40 + n, T) for n, (path, value) in enumerate(fields.items())},
        unsettled,
    )


def test_compare_reports_each_drifted_field_with_who_set_it() -> None:
    desired = state(
        {
            "title": "A",
            "price": 1200,
            "due_date": "2026-12-02",
            "status": 600,
            "custom_fields.7": "foo",
            "custom_fields.8": "bar",
        }
    )
    result = compare(desired, WORKSPACE, CUSTOM)
    assert [(d.field, d.desired, d.actual) for d in result.drift] == [
        ("custom_fields.8", "bar", None),
        ("due_date", "2026-12-02", "2026-12-01"),
        ("status", 600, "310"),
    ]
    assert all(d.finding is Finding.DRIFTED and d.workspace_id == 5 for d in result.drift)
    assert [d.change_id for d in result.drift] == [45, 42, 43]
    assert result.drift[0].completed_at == T
    assert (result.checked, result.unverified, result.settling) == (6, 0, 0)


def test_fields_not_returned_are_unverified_and_unsettled_ones_not_judged() -> None:
    desired = state(
        {"approver_id": 3, "custom_fields.7": "other", "title": "Z"},
        unsettled=frozenset({"title"}),
    )
    result = compare(desired, WORKSPACE, None)
    assert result.drift == ()
    assert (result.checked, result.unverified, result.settling) == (0, 2, 1)


def test_repairs_set_each_drifted_field_back_updates_first_then_the_status() -> None:
    drift = [
        Drift(5, Finding.DRIFTED, "status", 600, "310", 43, T),
        Drift(5, Finding.DRIFTED, "custom_fields.8", "bar", None, 45, T),
        Drift(5, Finding.DRIFTED, "price", 1200, "1100", 41, T),
        Drift(6, Finding.MISSING, detail="gone"),
        Drift(7, Finding.UNREADABLE, detail="503"),
        Drift(9, Finding.DRIFTED, "due_date", "2026-12-02", "2026-12-01", 50, T),
    ]
    changes = repair_changes(drift, "abc123")
    assert changes == [
        NewChange(
            5,
            Kind.WORKSPACE_UPDATE,
            {"custom_fields": [{"custom_field_id": 8, "value": "bar"}]},
            "verify:abc123:5:custom_fields.8",
        ),
        NewChange(5, Kind.WORKSPACE_UPDATE, {"price": 1200}, "verify:abc123:5:price"),
        NewChange(5, Kind.STATUS_CHANGE, {"to_status_key": 600}, "verify:abc123:5:status"),
        NewChange(9, Kind.WORKSPACE_UPDATE, {"due_date": "2026-12-02"}, "verify:abc123:9:due_date"),
    ]
    for change in changes:
        assert validate_payload(change.kind, change.payload) == change.payload


def test_report_rows_are_json_ready() -> None:
    row = as_row(Drift(5, Finding.DRIFTED, "price", 1200, Decimal("1100.0"), 41, T))
    assert row == {
        "workspace_id": 5,
        "finding": "drifted",
        "field": "price",
        "desired": 1200,
        "actual": "1100.0",
        "change_id": 41,
        "completed_at": "2026-11-05T12:00:00+00:00",
        "detail": None,
    }
