"""Request validation of the sandbox: 400 for the wrong shape, 422 for bad values."""

from __future__ import annotations

from typing import Any

import pytest

from worker.sandbox.errors import ErrorType, RequestError
from worker.sandbox.validation import (
    DOCUMENTED_FIELDS,
    humanize,
    is_iso_date,
    parse_body,
    require_object,
    validate_status_change,
    validate_workspace_update,
)
from worker.statuses import DEFAULT_STATUSES

from ..kantata_api import workspace_request_fields


def fields_of(error: RequestError) -> list[str | None]:
    return [e.field for e in error.errors]


def test_every_documented_request_field_is_known() -> None:
    assert workspace_request_fields() == DOCUMENTED_FIELDS


@pytest.mark.parametrize("raw", [b"", b"nope", b"{", b"\xff\xfe", b"[]", b"3", b'"x"', b"null"])
def test_parse_body_rejects_non_objects(raw: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        parse_body(raw)
    assert caught.value.status == 400
    assert caught.value.errors[0].type is ErrorType.SYSTEM


@pytest.mark.parametrize("body", [{}, {"workspace": None}, {"workspace": []}, {"workspace": {}}])
def test_require_object(body: dict[str, Any]) -> None:
    with pytest.raises(RequestError) as caught:
        require_object(body, "workspace")
    assert caught.value.status == 400
    assert require_object({"workspace": {"a": 1}}, "workspace") == {"a": 1}


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2026-12-01", True),
        ("2024-02-29", True),
        ("2026-02-29", False),
        ("2026-1-01", False),
        ("20261201", False),
        ("2026-12-01T00:00:00", False),
        (20261201, False),
        (None, False),
        ("\uff12\uff10\uff12\uff16-12-01", False),
    ],
)
def test_is_iso_date(value: object, ok: bool) -> None:
    assert is_iso_date(value) is ok


def test_humanize() -> None:
    assert humanize("due_date") == "Due date"
    assert humanize("to_status_key") == "To status key"


def test_update_is_returned_in_stored_form() -> None:
    update = validate_workspace_update(
        {
            "title": "T",
            "price": 12,
            "approver_id": 4,
            "account_insights_mapping_ids": [1, 2],
            "status_key": 310,
            "custom_fields": [
                {"custom_field_id": 7, "value": "a"},
                {"custom_field_id": 8, "value": None},
            ],
            "expenses_in_burn_rate": True,
            "unknown": {"ignored": True},
        },
        DEFAULT_STATUSES,
    )
    assert update.fields == {
        "title": "T",
        "price": "12",
        "approver_id": "4",
        "account_insights_mapping_ids": ["1", "2"],
        "expenses_in_burn_rate": True,
        "actual_fees_includes_expenses": True,
        "actual_fees_includes_additional_line_items": True,
    }
    assert update.status_key == 310
    assert update.custom_fields == {7: "a", 8: None}


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"title": "\t"}, "title"),
        ({"title": 3}, "title"),
        ({"access_level": "OPEN"}, "access_level"),
        ({"stage": None}, "stage"),
        ({"start_date": "tomorrow"}, "start_date"),
        ({"project_template_start_date": "2026-00-10"}, "project_template_start_date"),
        ({"status_key": True}, "status_key"),
        ({"status_key": 700}, "status_key"),
        ({"time_trackable": "yes"}, "time_trackable"),
        ({"rate_card_id": "3"}, "rate_card_id"),
        ({"approver_id": 1.0}, "approver_id"),
        ({"workspace_group_ids": "1,2"}, "workspace_group_ids"),
        ({"currency": None}, "currency"),
        ({"revenue_recognition_method_id": 5}, "revenue_recognition_method_id"),
        ({"invoice_preference": "x"}, "invoice_preference"),
        ({"invoice_preference": {"project_code": 5}}, "invoice_preference.project_code"),
        ({"external_link": {"url": 1}}, "external_link.url"),
        ({"external_reference": []}, "external_reference"),
        (
            {
                "external_reference": {
                    "service_name": "a",
                    "service_model": "b",
                    "service_model_ref": "c",
                    "locked": "no",
                }
            },
            "external_reference.locked",
        ),
        (
            {"project_template_assignment_mappings": [{"user_id": "2"}]},
            "project_template_assignment_mappings[0].user_id",
        ),
        ({"project_template_assignment_mappings": {}}, "project_template_assignment_mappings"),
        ({"custom_fields": [5]}, "custom_fields[0]"),
        (
            {"custom_fields": [{"custom_field_id": 0, "value": "x"}]},
            "custom_fields[0].custom_field_id",
        ),
        ({"custom_fields": [{"custom_field_id": 1}]}, "custom_fields[0].value"),
    ],
)
def test_bad_values_are_422(fields: dict[str, Any], bad: str) -> None:
    with pytest.raises(RequestError) as caught:
        validate_workspace_update(fields, DEFAULT_STATUSES)
    assert caught.value.status == 422
    assert bad in fields_of(caught.value)
    assert all(e.type is ErrorType.VALIDATION and e.message for e in caught.value.errors)


def test_nullable_text_accepts_null() -> None:
    update = validate_workspace_update({"revenue_recognition_method_id": None}, DEFAULT_STATUSES)
    assert update.fields == {"revenue_recognition_method_id": None}


def test_status_key_must_be_enabled_on_the_account() -> None:
    with pytest.raises(RequestError) as caught:
        validate_workspace_update({"status_key": 310}, {100: "Not Started"})
    assert fields_of(caught.value) == ["status_key"]


def test_status_change_shape() -> None:
    body = {"workspace_status_change": {"workspace_id": 3, "to_status_key": 310, "extra": 1}}
    change = validate_status_change(body)
    assert (change.workspace_id, change.to_status_key) == (3, 310)


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        (None, 400, "workspace_status_change"),
        ({"workspace_id": 3}, 400, "to_status_key"),
        ({"to_status_key": 310}, 400, "workspace_id"),
        ({"workspace_id": None, "to_status_key": 310}, 400, "workspace_id"),
        ({"workspace_id": 3, "to_status_key": "310"}, 422, "to_status_key"),
        ({"workspace_id": True, "to_status_key": 310}, 422, "workspace_id"),
    ],
)
def test_status_change_errors(change: Any, status: int, field: str) -> None:
    with pytest.raises(RequestError) as caught:
        validate_status_change({"workspace_status_change": change})
    assert caught.value.status == status
    assert field in fields_of(caught.value)
