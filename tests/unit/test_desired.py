"""The desired state the outbox implies: which fields a change sets, and how changes fold."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from worker.changes import Kind, State
from worker.desired import (
    NOT_VERIFIED,
    VERIFIED,
    OutboxRow,
    Wanted,
    desired_payloads,
    field_values,
    fold,
    fold_all,
)
from worker.validation import WorkspaceFields, validate_payload

from ..kantata_api import workspace_request_fields

T1 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
T2 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
T3 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
UPDATE, STATUS = str(Kind.WORKSPACE_UPDATE), str(Kind.STATUS_CHANGE)


@pytest.mark.parametrize(
    ("kind", "payload", "expected"),
    [
        (STATUS, {"to_status_key": 310}, {"status": 310}),
        (
            UPDATE,
            {"title": "A", "due_date": "2026-12-01"},
            {"title": "A", "due_date": "2026-12-01"},
        ),
        (UPDATE, {"status_key": 600, "price": 5}, {"status": 600, "price": 5}),
        (
            UPDATE,
            {
                "custom_fields": [
                    {"custom_field_id": 7, "value": "a"},
                    {"custom_field_id": 9, "value": "b"},
                ]
            },
            {"custom_fields.7": "a", "custom_fields.9": "b"},
        ),
        # Setting expenses_in_burn_rate sets both parts, unless the change sets a part itself.
        (
            UPDATE,
            {"expenses_in_burn_rate": True},
            {
                "actual_fees_includes_expenses": True,
                "actual_fees_includes_additional_line_items": True,
            },
        ),
        (
            UPDATE,
            {"actual_fees_includes_expenses": False, "expenses_in_burn_rate": True},
            {
                "actual_fees_includes_expenses": False,
                "actual_fees_includes_additional_line_items": True,
            },
        ),
        # Actions and fields a workspace does not read back as are not part of the desired state.
        (
            UPDATE,
            {"project_tracker_template_id": 4, "invoice_preference": {"project_code": "P"}},
            {},
        ),
        (UPDATE, {"external_link": {"url": "https://x.invalid"}}, {}),
        (UPDATE, "not an object", {}),
        (STATUS, {"to_status_key": "310"}, {}),
        (STATUS, {"to_status_key": True}, {}),
        ("bogus", {"title": "A"}, {}),
    ],
)
def test_field_values(kind: str, payload: Any, expected: dict[str, Any]) -> None:
    assert field_values(kind, payload) == expected


def test_every_documented_field_is_either_verified_or_said_why_not() -> None:
    known = set(VERIFIED) | set(NOT_VERIFIED)
    assert workspace_request_fields() <= known
    assert set(WorkspaceFields.model_fields) == known
    assert not set(VERIFIED) & set(NOT_VERIFIED)


def row(
    ident: int,
    payload: dict[str, Any],
    *,
    kind: str = UPDATE,
    state: str = State.SUCCEEDED,
    workspace: int = 5,
    at: datetime | None = T1,
) -> OutboxRow:
    return OutboxRow(ident, workspace, kind, payload, str(state), at)


FOLDS: list[tuple[str, list[OutboxRow], dict[str, Wanted], set[str]]] = [
    (
        "later succeeded updates win, field by field",
        [
            row(1, {"title": "A", "price": 100}, at=T1),
            row(2, {"title": "B"}, at=T2),
        ],
        {"title": Wanted("B", 2, T2), "price": Wanted(100, 1, T1)},
        set(),
    ),
    (
        "custom fields merge by custom_field_id",
        [
            row(
                1,
                {
                    "custom_fields": [
                        {"custom_field_id": 7, "value": "a"},
                        {"custom_field_id": 8, "value": "b"},
                    ]
                },
            ),
            row(2, {"custom_fields": [{"custom_field_id": 7, "value": "c"}]}, at=T2),
        ],
        {"custom_fields.7": Wanted("c", 2, T2), "custom_fields.8": Wanted("b", 1, T1)},
        set(),
    ),
    (
        "the status comes from a status change or a PUT's status_key, whichever is later",
        [
            row(1, {"to_status_key": 310}, kind=STATUS, at=T1),
            row(2, {"status_key": 410}, at=T2),
            row(3, {"to_status_key": 600}, kind=STATUS, at=T3),
        ],
        {"status": Wanted(600, 3, T3)},
        set(),
    ),
    (
        "failed, invalid and cancelled changes set nothing",
        [
            row(1, {"title": "A"}),
            row(2, {"title": "B"}, state=State.FAILED),
            row(3, {"title": "C"}, state=State.INVALID),
            row(4, {"to_status_key": 310}, kind=STATUS, state=State.CANCELLED),
        ],
        {"title": Wanted("A", 1, T1)},
        set(),
    ),
    (
        "pending and in-flight changes leave the desired state but mark their fields unsettled",
        [
            row(1, {"title": "A", "due_date": "2026-01-01"}),
            row(2, {"title": "B"}, state=State.PENDING, at=None),
            row(3, {"to_status_key": 310}, kind=STATUS, state=State.IN_FLIGHT, at=None),
        ],
        {"title": Wanted("A", 1, T1), "due_date": Wanted("2026-01-01", 1, T1)},
        {"title", "status"},
    ),
    (
        "rows fold in ID order whatever order they come in",
        [row(2, {"title": "B"}, at=T2), row(1, {"title": "A"}, at=T1)],
        {"title": Wanted("B", 2, T2)},
        set(),
    ),
]


@pytest.mark.parametrize(("case", "rows", "fields", "unsettled"), FOLDS, ids=[f[0] for f in FOLDS])
def test_fold(
    case: str, rows: list[OutboxRow], fields: dict[str, Wanted], unsettled: set[str]
) -> None:
    state = fold(5, rows)
    assert dict(state.fields) == fields
    assert state.unsettled == unsettled


def test_fold_all_groups_consecutive_rows_by_workspace() -> None:
    rows = [
        row(1, {"title": "A"}, workspace=3),
        row(4, {"custom_fields": [{"custom_field_id": 1, "value": "x"}]}, workspace=3),
        row(2, {"title": "B"}, workspace=8),
    ]
    states = list(fold_all(rows))
    assert [s.workspace_id for s in states] == [3, 8]
    assert states[0].needs_custom_fields and not states[1].needs_custom_fields
    assert states[1].fields["title"].value == "B"
    assert list(fold_all([])) == []


@pytest.mark.parametrize(
    ("path", "value", "kind", "payload"),
    [
        ("status", 310, Kind.STATUS_CHANGE, {"to_status_key": 310}),
        (
            "custom_fields.7",
            "x",
            Kind.WORKSPACE_UPDATE,
            {"custom_fields": [{"custom_field_id": 7, "value": "x"}]},
        ),
        ("due_date", "2026-12-01", Kind.WORKSPACE_UPDATE, {"due_date": "2026-12-01"}),
        (
            "actual_fees_includes_expenses",
            True,
            Kind.WORKSPACE_UPDATE,
            {"actual_fees_includes_expenses": True},
        ),
    ],
)
def test_desired_payloads_are_valid_changes(
    path: str, value: Any, kind: Kind, payload: dict[str, Any]
) -> None:
    assert desired_payloads(path, value) == (kind, payload)
    assert validate_payload(kind, payload) == payload
