"""Validation of producer input: payloads per kind, stored rows, and enqueue lines."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.changes import Change, ClaimedRow, Kind, NewChange
from worker.exceptions import InputError
from worker.validation import (
    INT32_MAX,
    MAX_PAYLOAD_BYTES,
    decode_payload,
    parse_line,
    validate_kind,
    validate_payload,
    validate_row,
    validate_source_ref,
    validate_workspace_id,
)

SC, WU = Kind.STATUS_CHANGE, Kind.WORKSPACE_UPDATE
REF = {"service_name": "crm", "service_model": "Deal", "service_model_ref": "D-1"}


# --------------------------------------------------------------------------- good payloads

GOOD = [
    pytest.param(SC, {"to_status_key": 310}, id="status-310"),
    pytest.param(SC, {"to_status_key": 100}, id="status-min"),
    pytest.param(SC, {"to_status_key": 699}, id="status-max"),
    pytest.param(WU, {"title": "New title"}, id="title"),
    pytest.param(WU, {"title": "x" * 65_535}, id="title-max-length"),
    pytest.param(WU, {"description": ""}, id="empty-description"),
    pytest.param(WU, {"budgeted": True, "archived": False}, id="booleans"),
    pytest.param(
        WU,
        {
            "tasks_default_non_billable": False,
            "stories_are_fixed_fee_by_default": True,
            "expenses_in_burn_rate": True,
            "actual_fees_includes_expenses": False,
            "actual_fees_includes_additional_line_items": True,
            "posts_require_privacy_decision": False,
            "require_notes_on_time_entries": True,
            "time_trackable": True,
            "change_orders_enabled": False,
            "exclude_archived_stories_percent_complete": True,
        },
        id="all-booleans",
    ),
    pytest.param(WU, {"due_date": "2026-12-01", "start_date": "2026-01-31"}, id="dates"),
    pytest.param(WU, {"due_date": "2024-02-29"}, id="leap-day"),
    pytest.param(WU, {"project_template_start_date": "2000-01-01"}, id="template-start-date"),
    pytest.param(WU, {"currency": "EUR"}, id="currency"),
    pytest.param(WU, {"access_level": "invitation"}, id="access-invitation"),
    pytest.param(WU, {"access_level": "open"}, id="access-open"),
    pytest.param(WU, {"access_level": "admins"}, id="access-admins"),
    pytest.param(WU, {"stage": "estimate"}, id="stage-estimate"),
    pytest.param(WU, {"stage": "project"}, id="stage-project"),
    pytest.param(WU, {"status_key": 600}, id="status-key-field"),
    pytest.param(WU, {"rate_card_id": 1, "approver_id": INT32_MAX}, id="id-bounds"),
    pytest.param(WU, {"target_margin": -(2**31)}, id="int32-min"),
    pytest.param(WU, {"target_margin": INT32_MAX}, id="int32-max"),
    pytest.param(WU, {"target_margin": 0}, id="int32-zero"),
    pytest.param(WU, {"price": 0}, id="price-zero"),
    pytest.param(WU, {"workspace_group_ids": [1, 2, 3]}, id="id-list"),
    pytest.param(WU, {"workspace_group_ids": []}, id="empty-id-list"),
    pytest.param(
        WU,
        {
            "custom_fields": [
                {"custom_field_id": 7, "value": "foo"},
                {"custom_field_id": 8, "value": ""},
            ]
        },
        id="custom-fields",
    ),
    pytest.param(
        WU, {"invoice_preference": {"project_code": "P", "purchase_order": "PO"}}, id="invoice"
    ),
    pytest.param(WU, {"invoice_preference": {"project_code": None}}, id="invoice-nested-null"),
    pytest.param(WU, {"invoice_preference": {}}, id="invoice-empty"),
    pytest.param(WU, {"external_reference": REF}, id="external-reference"),
    pytest.param(
        WU,
        {"external_reference": {**REF, "status": "pending", "locked": True, "external_link": "u"}},
        id="external-reference-full",
    ),
    pytest.param(
        WU, {"external_link": {"text": "CRM", "url": "https://crm/1"}}, id="external-link"
    ),
    pytest.param(
        WU,
        {"project_template_assignment_mappings": [{"resource_id": 1, "user_id": 2, "role_id": 3}]},
        id="assignment-mappings",
    ),
    pytest.param(WU, {"project_tracker_template_id": 9}, id="template"),
    pytest.param(WU, {"revenue_recognition_method_id": None}, id="nullable-field-null"),
    pytest.param(WU, {"revenue_recognition_method_name": None}, id="nullable-name-null"),
    pytest.param(WU, {"title": "Ünïcödé ✓"}, id="unicode"),
]


@pytest.mark.parametrize(("kind", "payload"), GOOD)
def test_good_payloads(kind: Kind, payload: dict[str, Any]) -> None:
    assert validate_payload(kind, payload) == payload


# --------------------------------------------------------------------------- bad payloads

BAD: list[Any] = [
    # (kind, payload, column, message fragment)
    pytest.param(SC, {}, "payload.to_status_key", "required", id="sc-missing-key"),
    pytest.param(
        SC, {"to_status_key": "310"}, "payload.to_status_key", "integer", id="sc-key-string"
    ),
    pytest.param(
        SC, {"to_status_key": 310.0}, "payload.to_status_key", "integer", id="sc-key-float"
    ),
    pytest.param(SC, {"to_status_key": True}, "payload.to_status_key", "integer", id="sc-key-bool"),
    pytest.param(SC, {"to_status_key": None}, "payload.to_status_key", "", id="sc-key-null"),
    pytest.param(SC, {"to_status_key": 99}, "payload.to_status_key", "100 and 699", id="sc-key-99"),
    pytest.param(
        SC, {"to_status_key": 700}, "payload.to_status_key", "100 and 699", id="sc-key-700"
    ),
    pytest.param(
        SC, {"to_status_key": -310}, "payload.to_status_key", "100 and 699", id="sc-key-neg"
    ),
    pytest.param(
        SC, {"to_status_key": 310, "note": "x"}, "payload.note", "unknown field", id="sc-extra"
    ),
    pytest.param(SC, [310], "payload", "JSON object", id="sc-not-object"),
    pytest.param(WU, {}, "payload", "at least one field", id="wu-empty"),
    pytest.param(WU, [], "payload", "JSON object", id="wu-list"),
    pytest.param(WU, "title", "payload", "JSON object", id="wu-string"),
    pytest.param(WU, None, "payload", "JSON object", id="wu-null"),
    # booleans
    pytest.param(WU, {"budgeted": 1}, "payload.budgeted", "boolean", id="bool-int"),
    pytest.param(WU, {"budgeted": "true"}, "payload.budgeted", "boolean", id="bool-string"),
    pytest.param(WU, {"archived": 0}, "payload.archived", "boolean", id="bool-zero"),
    pytest.param(WU, {"time_trackable": "yes"}, "payload.time_trackable", "boolean", id="bool-yes"),
    pytest.param(
        WU,
        {"external_reference": {**REF, "locked": "yes"}},
        "payload.external_reference.locked",
        "boolean",
        id="nested-bool",
    ),
    # integers
    pytest.param(WU, {"rate_card_id": "5"}, "payload.rate_card_id", "integer", id="id-string"),
    pytest.param(WU, {"rate_card_id": 5.0}, "payload.rate_card_id", "integer", id="id-float"),
    pytest.param(WU, {"rate_card_id": True}, "payload.rate_card_id", "integer", id="id-bool"),
    pytest.param(WU, {"rate_card_id": 0}, "payload.rate_card_id", "greater than", id="id-zero"),
    pytest.param(WU, {"approver_id": -4}, "payload.approver_id", "greater than", id="id-negative"),
    pytest.param(
        WU, {"approver_id": 2**31}, "payload.approver_id", "less than", id="id-over-int32"
    ),
    pytest.param(WU, {"rate_card_id": 10**40}, "payload.rate_card_id", "less than", id="id-huge"),
    pytest.param(
        WU, {"target_margin": 2**31}, "payload.target_margin", "less than", id="int32-over"
    ),
    pytest.param(
        WU,
        {"target_margin": -(2**31) - 1},
        "payload.target_margin",
        "greater than",
        id="int32-under",
    ),
    pytest.param(
        WU, {"target_margin": "10"}, "payload.target_margin", "integer", id="int32-string"
    ),
    pytest.param(WU, {"price": -1}, "payload.price", "greater than", id="price-negative"),
    pytest.param(WU, {"price": 1.5}, "payload.price", "integer", id="price-float"),
    pytest.param(
        WU,
        {"workspace_group_ids": [1, 0]},
        "payload.workspace_group_ids.1",
        "greater",
        id="list-item-zero",
    ),
    pytest.param(
        WU,
        {"workspace_group_ids": [1, "2"]},
        "payload.workspace_group_ids.1",
        "integer",
        id="list-item-str",
    ),
    pytest.param(
        WU, {"workspace_group_ids": "1,2"}, "payload.workspace_group_ids", "list", id="list-str"
    ),
    pytest.param(
        WU,
        {"account_insights_mapping_ids": [2**31]},
        "payload.account_insights_mapping_ids.0",
        "less than",
        id="list-item-huge",
    ),
    pytest.param(
        WU,
        {"project_template_assignment_mappings": [{"user_id": 0}]},
        "payload.project_template_assignment_mappings.0.user_id",
        "greater",
        id="mapping-id",
    ),
    # dates
    pytest.param(
        WU, {"due_date": "2026-1-01"}, "payload.due_date", "YYYY-MM-DD", id="date-short-month"
    ),
    pytest.param(
        WU, {"due_date": "2026/01/01"}, "payload.due_date", "YYYY-MM-DD", id="date-slashes"
    ),
    pytest.param(WU, {"due_date": "20260101"}, "payload.due_date", "YYYY-MM-DD", id="date-basic"),
    pytest.param(
        WU, {"due_date": "2026-12-01T00:00:00"}, "payload.due_date", "YYYY-MM-DD", id="datetime"
    ),
    pytest.param(
        WU, {"due_date": " 2026-12-01"}, "payload.due_date", "YYYY-MM-DD", id="date-space"
    ),
    pytest.param(WU, {"due_date": "01-12-2026"}, "payload.due_date", "YYYY-MM-DD", id="date-dmy"),
    pytest.param(WU, {"due_date": ""}, "payload.due_date", "YYYY-MM-DD", id="date-empty"),
    pytest.param(WU, {"due_date": 20261201}, "payload.due_date", "string", id="date-int"),
    pytest.param(WU, {"due_date": "2026-02-30"}, "payload.due_date", "calendar", id="feb-30"),
    pytest.param(WU, {"start_date": "2025-02-29"}, "payload.start_date", "calendar", id="not-leap"),
    pytest.param(WU, {"start_date": "2026-13-01"}, "payload.start_date", "calendar", id="month-13"),
    pytest.param(WU, {"start_date": "2026-00-10"}, "payload.start_date", "calendar", id="month-0"),
    pytest.param(WU, {"start_date": "2026-04-31"}, "payload.start_date", "calendar", id="april-31"),
    pytest.param(
        WU,
        {"project_template_start_date": "0000-01-01"},
        "payload.project_template_start_date",
        "calendar",
        id="year-0",
    ),
    # enums and patterns
    pytest.param(WU, {"access_level": "Open"}, "payload.access_level", "'open'", id="access-case"),
    pytest.param(
        WU, {"access_level": "public"}, "payload.access_level", "'admins'", id="access-unknown"
    ),
    pytest.param(WU, {"access_level": 1}, "payload.access_level", "", id="access-int"),
    pytest.param(WU, {"stage": "Estimate"}, "payload.stage", "'estimate'", id="stage-case"),
    pytest.param(WU, {"stage": "proposal"}, "payload.stage", "'project'", id="stage-unknown"),
    pytest.param(
        WU,
        {"external_reference": {**REF, "status": "done"}},
        "payload.external_reference.status",
        "'successful'",
        id="ref-status-enum",
    ),
    pytest.param(WU, {"status_key": 99}, "payload.status_key", "100 and 699", id="status-key-99"),
    pytest.param(WU, {"status_key": 700}, "payload.status_key", "100 and 699", id="status-key-700"),
    pytest.param(WU, {"status_key": "310"}, "payload.status_key", "integer", id="status-key-str"),
    pytest.param(WU, {"currency": "usd"}, "payload.currency", "pattern", id="currency-lower"),
    pytest.param(WU, {"currency": "USDX"}, "payload.currency", "pattern", id="currency-long"),
    pytest.param(WU, {"currency": "USD\n"}, "payload.currency", "pattern", id="currency-newline"),
    # text
    pytest.param(WU, {"title": ""}, "payload.title", "blank", id="title-empty"),
    pytest.param(WU, {"title": "   "}, "payload.title", "blank", id="title-spaces"),
    pytest.param(WU, {"title": "\t\n"}, "payload.title", "blank", id="title-whitespace"),
    pytest.param(WU, {"title": 5}, "payload.title", "string", id="title-int"),
    pytest.param(WU, {"title": "x" * 65_536}, "payload.title", "65535", id="title-too-long"),
    pytest.param(
        WU, {"description": ["a"]}, "payload.description", "string", id="description-list"
    ),
    # unknown fields
    pytest.param(WU, {"name": "x"}, "payload.name", "unknown field", id="unknown-field"),
    pytest.param(
        WU,
        {"title": "ok", "status": {"key": 310}},
        "payload.status",
        "unknown field",
        id="response-only-field",
    ),
    pytest.param(WU, {"Title": "x"}, "payload.Title", "unknown field", id="field-case"),
    pytest.param(
        WU,
        {"invoice_preference": {"po": "1"}},
        "payload.invoice_preference.po",
        "unknown field",
        id="invoice-unknown",
    ),
    pytest.param(
        WU,
        {"external_link": {"href": "u"}},
        "payload.external_link.href",
        "unknown field",
        id="link-unknown",
    ),
    # nulls
    pytest.param(WU, {"title": None}, "payload.title", "must not be null", id="null-title"),
    pytest.param(WU, {"budgeted": None}, "payload.budgeted", "must not be null", id="null-bool"),
    pytest.param(
        WU, {"custom_fields": None}, "payload.custom_fields", "must not be null", id="null-custom"
    ),
    pytest.param(WU, {"name": None}, "payload.name", "must not be null", id="null-unknown"),
    pytest.param(
        WU,
        {"custom_fields": [{"custom_field_id": 7, "value": None}]},
        "payload.custom_fields.0.value",
        "string",
        id="null-custom-value",
    ),
    # nested objects
    pytest.param(
        WU,
        {"invoice_preference": "x"},
        "payload.invoice_preference",
        "dictionary",
        id="invoice-string",
    ),
    pytest.param(
        WU,
        {"invoice_preference": {"project_code": 5}},
        "payload.invoice_preference.project_code",
        "string",
        id="invoice-type",
    ),
    pytest.param(WU, {"custom_fields": {}}, "payload.custom_fields", "list", id="custom-object"),
    pytest.param(
        WU,
        {"custom_fields": [{"custom_field_id": "7", "value": "x"}]},
        "payload.custom_fields.0.custom_field_id",
        "integer",
        id="custom-id-string",
    ),
    pytest.param(
        WU,
        {"custom_fields": [{"custom_field_id": 0, "value": "x"}]},
        "payload.custom_fields.0.custom_field_id",
        "greater",
        id="custom-id-zero",
    ),
    pytest.param(
        WU,
        {"custom_fields": [{"custom_field_id": 7}]},
        "payload.custom_fields.0.value",
        "required",
        id="custom-value-missing",
    ),
    pytest.param(
        WU,
        {
            "custom_fields": [
                {"custom_field_id": 7, "value": "a"},
                {"custom_field_id": 8, "value": 5},
            ]
        },
        "payload.custom_fields.1.value",
        "string",
        id="custom-second-bad",
    ),
    pytest.param(
        WU,
        {"custom_fields": [{"custom_field_id": 7, "value": "a", "extra": 1}]},
        "payload.custom_fields.0.extra",
        "unknown field",
        id="custom-extra",
    ),
    pytest.param(
        WU, {"custom_fields": ["x"]}, "payload.custom_fields.0", "", id="custom-item-not-object"
    ),
    pytest.param(
        WU,
        {"external_reference": {"service_model": "m", "service_model_ref": "r"}},
        "payload.external_reference.service_name",
        "required",
        id="ref-missing-service",
    ),
    pytest.param(
        WU,
        {"external_reference": {**REF, "service_model_ref": 1}},
        "payload.external_reference.service_model_ref",
        "string",
        id="ref-type",
    ),
    pytest.param(
        WU,
        {"external_reference": {**REF, "id": 1}},
        "payload.external_reference.id",
        "unknown field",
        id="ref-extra",
    ),
]


@pytest.mark.parametrize(("kind", "payload", "column", "fragment"), BAD)
def test_bad_payloads(kind: Kind, payload: Any, column: str, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        validate_payload(kind, payload)
    assert info.value.column == column
    assert fragment in info.value.message
    assert str(info.value) == f"{column}: {info.value.message}"


def test_status_change_payload_is_normalised() -> None:
    assert validate_payload(SC, {"to_status_key": 410}) == {"to_status_key": 410}


def test_unset_fields_not_added() -> None:
    assert validate_payload(WU, {"external_reference": REF}) == {"external_reference": REF}


# --------------------------------------------------------------------------- scalars


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        pytest.param(1, True, id="one"),
        pytest.param(INT32_MAX, True, id="int32-max"),
        pytest.param(0, False, id="zero"),
        pytest.param(-1, False, id="negative"),
        pytest.param(INT32_MAX + 1, False, id="over"),
        pytest.param(True, False, id="bool"),
        pytest.param(1.0, False, id="float"),
        pytest.param("1", False, id="string"),
        pytest.param(None, False, id="none"),
        pytest.param(b"1", False, id="bytes"),
    ],
)
def test_validate_workspace_id(value: object, ok: bool) -> None:
    if ok:
        assert validate_workspace_id(value) == value
    else:
        with pytest.raises(InputError) as info:
            validate_workspace_id(value)
        assert info.value.column == "workspace_id"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("status_change", Kind.STATUS_CHANGE, id="status"),
        pytest.param("workspace_update", Kind.WORKSPACE_UPDATE, id="update"),
        pytest.param("Status_Change", None, id="case"),
        pytest.param("", None, id="empty"),
        pytest.param("delete", None, id="unknown"),
        pytest.param(5, None, id="int"),
        pytest.param(None, None, id="none"),
    ],
)
def test_validate_kind(value: object, expected: Kind | None) -> None:
    if expected is not None:
        assert validate_kind(value) is expected
    else:
        with pytest.raises(InputError) as info:
            validate_kind(value)
        assert info.value.column == "kind"


def test_unknown_kind_message_is_bounded() -> None:
    with pytest.raises(InputError) as info:
        validate_kind("x" * 10_000)
    assert len(info.value.message) < 200
    assert "status_change or workspace_update" in info.value.message


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        pytest.param(None, True, id="none"),
        pytest.param("crm:1", True, id="text"),
        pytest.param("x" * 255, True, id="max"),
        pytest.param("", False, id="empty"),
        pytest.param("x" * 256, False, id="too-long"),
        pytest.param(5, False, id="int"),
        pytest.param(["a"], False, id="list"),
    ],
)
def test_validate_source_ref(value: object, ok: bool) -> None:
    if ok:
        assert validate_source_ref(value) == value
    else:
        with pytest.raises(InputError) as info:
            validate_source_ref(value)
        assert info.value.column == "source_ref"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param('{"a": 1}', {"a": 1}, id="text"),
        pytest.param(b'{"a": 1}', {"a": 1}, id="bytes"),
        pytest.param(bytearray(b'{"a": "\xc3\xa9"}'), {"a": "é"}, id="bytearray-utf8"),
        pytest.param(memoryview(b"[1]"), [1], id="memoryview"),
        pytest.param("null", None, id="json-null"),
    ],
)
def test_decode_payload(raw: object, expected: object) -> None:
    assert decode_payload(raw) == expected


# --------------------------------------------------------------------------- rows


def row(
    workspace_id: object = 42,
    kind: object = "workspace_update",
    payload: object = '{"title": "x"}',
    **extra: Any,
) -> ClaimedRow:
    return ClaimedRow(
        id=extra.get("id", 5),
        workspace_id=workspace_id,
        kind=kind,
        payload=payload,
        source_ref=extra.get("source_ref"),
        attempts=extra.get("attempts", 2),
        lease_token=extra.get("lease_token", 9),
    )


BAD_ROWS = [
    pytest.param(row(workspace_id="42"), "workspace_id", "integer", id="ws-string"),
    pytest.param(row(workspace_id=42.0), "workspace_id", "integer", id="ws-float"),
    pytest.param(row(workspace_id=True), "workspace_id", "integer", id="ws-bool"),
    pytest.param(row(workspace_id=None), "workspace_id", "integer", id="ws-null"),
    pytest.param(row(workspace_id=b"42"), "workspace_id", "integer", id="ws-bytes"),
    pytest.param(row(workspace_id=0), "workspace_id", "between", id="ws-zero"),
    pytest.param(row(workspace_id=-7), "workspace_id", "between", id="ws-negative"),
    pytest.param(row(workspace_id=2**31), "workspace_id", "between", id="ws-over-int32"),
    pytest.param(row(workspace_id=2**70), "workspace_id", "between", id="ws-huge"),
    pytest.param(row(kind=5), "kind", "string", id="kind-int"),
    pytest.param(row(kind=None), "kind", "string", id="kind-null"),
    pytest.param(row(kind="update"), "kind", "unknown kind", id="kind-unknown"),
    pytest.param(row(kind=b"\xff\xfe"), "kind", "UTF-8", id="kind-bad-bytes"),
    pytest.param(
        row(payload=b'{"title": "\xff"}'), "payload", "UTF-8 (byte 11)", id="payload-not-utf8"
    ),
    pytest.param(row(payload="{"), "payload", "not valid JSON", id="payload-truncated"),
    pytest.param(
        row(payload="{'title': 'x'}"), "payload", "not valid JSON", id="payload-single-quotes"
    ),
    pytest.param(row(payload=""), "payload", "not valid JSON", id="payload-empty"),
    pytest.param(
        row(payload='{"title": "x"} trailing'), "payload", "not valid JSON", id="payload-trailing"
    ),
    pytest.param(row(payload="[]"), "payload", "JSON object", id="payload-array"),
    pytest.param(row(payload="null"), "payload", "JSON object", id="payload-json-null"),
    pytest.param(row(payload="42"), "payload", "JSON object", id="payload-number"),
    pytest.param(row(payload='"{}"'), "payload", "JSON object", id="payload-double-encoded"),
    pytest.param(row(payload=None), "payload", "JSON text", id="payload-sql-null"),
    pytest.param(row(payload=42), "payload", "JSON text", id="payload-int"),
    pytest.param(row(payload="[" * 100_000), "payload", "nested too deeply", id="payload-deep"),
    pytest.param(
        row(payload='{"title": "' + "x" * MAX_PAYLOAD_BYTES + '"}'),
        "payload",
        "larger than",
        id="payload-oversize",
    ),
    pytest.param(
        row(payload=('{"title": "' + "x" * MAX_PAYLOAD_BYTES + '"}').encode()),
        "payload",
        "larger than",
        id="payload-oversize-bytes",
    ),
    pytest.param(
        row(payload='{"due_date": "2026-02-30"}'), "payload.due_date", "calendar", id="bad-field"
    ),
    pytest.param(
        row(kind="status_change", payload='{"to_status_key": 42}'),
        "payload.to_status_key",
        "100 and 699",
        id="bad-status-key",
    ),
    pytest.param(row(payload="{}"), "payload", "at least one field", id="empty-update"),
    pytest.param(
        row(workspace_id=0, kind=1, payload=None), "workspace_id", "", id="workspace-id-first"
    ),
    pytest.param(row(kind=1, payload=None), "kind", "", id="kind-before-payload"),
]


@pytest.mark.parametrize(("claimed", "column", "fragment"), BAD_ROWS)
def test_bad_rows(claimed: ClaimedRow, column: str, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        validate_row(claimed)
    assert info.value.column == column
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("claimed", "kind", "payload"),
    [
        pytest.param(row(), WU, {"title": "x"}, id="text"),
        pytest.param(row(payload=b'{"title": "\xc3\xa9"}'), WU, {"title": "é"}, id="bytes-utf8"),
        pytest.param(
            row(kind=b"status_change", payload='{"to_status_key": 600}'),
            SC,
            {"to_status_key": 600},
            id="kind-bytes",
        ),
        pytest.param(
            row(kind=memoryview(b"workspace_update")), WU, {"title": "x"}, id="kind-memoryview"
        ),
        pytest.param(row(workspace_id=INT32_MAX), WU, {"title": "x"}, id="ws-int32-max"),
    ],
)
def test_good_rows(claimed: ClaimedRow, kind: Kind, payload: dict[str, Any]) -> None:
    change = validate_row(claimed)
    assert change == Change(
        id=claimed.id,
        workspace_id=claimed.workspace_id,  # type: ignore[arg-type]
        kind=kind,
        payload=payload,
        attempts=2,
        lease_token=9,
        ambiguous=False,
    )


def test_row_ambiguous_passed_through() -> None:
    assert validate_row(row(), ambiguous=True).ambiguous is True
    assert validate_row(row()).ambiguous is False


def test_row_with_huge_integer_is_input_error() -> None:
    with pytest.raises(InputError) as info:
        validate_row(row(payload='{"price": ' + "1" * 5000 + "}"))
    assert info.value.column == "payload"


def test_payload_size_limit_counts_bytes() -> None:
    raw = ('"' + "é" * (MAX_PAYLOAD_BYTES // 2 + 10) + '"').encode()
    assert len(raw) > MAX_PAYLOAD_BYTES
    with pytest.raises(InputError, match="larger than"):
        decode_payload(raw)


# --------------------------------------------------------------------------- parse_line


def line(**record: Any) -> str:
    return json.dumps(record)


GOOD_LINE = {"workspace_id": 10, "kind": "status_change", "payload": {"to_status_key": 310}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(line(**GOOD_LINE), NewChange(10, SC, {"to_status_key": 310}), id="status"),
        pytest.param(
            line(**GOOD_LINE, source_ref="crm:1"),
            NewChange(10, SC, {"to_status_key": 310}, "crm:1"),
            id="with-source-ref",
        ),
        pytest.param(
            line(**GOOD_LINE, source_ref=None),
            NewChange(10, SC, {"to_status_key": 310}),
            id="null-ref",
        ),
        pytest.param(
            line(
                workspace_id=1,
                kind="workspace_update",
                payload={"title": "t", "due_date": "2026-12-01"},
            ),
            NewChange(1, WU, {"title": "t", "due_date": "2026-12-01"}),
            id="update",
        ),
        pytest.param(
            '  {"workspace_id": 10, "kind": "status_change", "payload": {"to_status_key": 310}}\n',
            NewChange(10, SC, {"to_status_key": 310}),
            id="surrounding-whitespace",
        ),
    ],
)
def test_parse_line_good(text: str, expected: NewChange) -> None:
    assert parse_line(text) == expected


BAD_LINES = [
    pytest.param("", "line", "not valid JSON", id="empty"),
    pytest.param("{", "line", "not valid JSON", id="truncated"),
    pytest.param("workspace_id=1", "line", "not valid JSON", id="not-json"),
    pytest.param("[" * 100_000, "line", "nested too deeply", id="deep"),
    pytest.param("[]", "line", "JSON object", id="array"),
    pytest.param("null", "line", "JSON object", id="null"),
    pytest.param('"x"', "line", "JSON object", id="string"),
    pytest.param(
        line(kind="status_change", payload={"to_status_key": 310}),
        "workspace_id",
        "required",
        id="missing-workspace-id",
    ),
    pytest.param(
        line(workspace_id=1, payload={"to_status_key": 310}), "kind", "required", id="missing-kind"
    ),
    pytest.param(
        line(workspace_id=1, kind="status_change"), "payload", "required", id="missing-payload"
    ),
    pytest.param(line(), "workspace_id", "required", id="empty-object"),
    pytest.param(
        line(**GOOD_LINE, state="succeeded"), "state", "unknown column", id="unknown-column"
    ),
    pytest.param(
        line(**GOOD_LINE, id=5, attempts=1), "attempts", "unknown column", id="unknown-first-sorted"
    ),
    pytest.param(line(**GOOD_LINE, source_ref=5), "source_ref", "string", id="ref-int"),
    pytest.param(line(**GOOD_LINE, source_ref=""), "source_ref", "1 to 255", id="ref-empty"),
    pytest.param(line(**GOOD_LINE, source_ref="x" * 256), "source_ref", "1 to 255", id="ref-long"),
    pytest.param(
        line(**{**GOOD_LINE, "workspace_id": "10"}), "workspace_id", "integer", id="ws-string"
    ),
    pytest.param(line(**{**GOOD_LINE, "workspace_id": 0}), "workspace_id", "between", id="ws-zero"),
    pytest.param(
        line(**{**GOOD_LINE, "workspace_id": 10.0}), "workspace_id", "integer", id="ws-float"
    ),
    pytest.param(line(**{**GOOD_LINE, "kind": "other"}), "kind", "unknown kind", id="kind-unknown"),
    pytest.param(line(**{**GOOD_LINE, "kind": None}), "kind", "string", id="kind-null"),
    pytest.param(
        line(**{**GOOD_LINE, "payload": '{"to_status_key": 310}'}),
        "payload",
        "JSON object",
        id="payload-double-encoded",
    ),
    pytest.param(
        line(**{**GOOD_LINE, "payload": {"to_status_key": 1}}),
        "payload.to_status_key",
        "100 and 699",
        id="payload-bad-field",
    ),
    pytest.param(
        line(
            workspace_id=1,
            kind="workspace_update",
            payload={
                "custom_fields": [
                    {"custom_field_id": i, "value": "x" * 65_535} for i in range(1, 17)
                ]
            },
        ),
        "line",
        "larger than",
        id="payload-oversize",
    ),
]


@pytest.mark.parametrize(("text", "column", "fragment"), BAD_LINES)
def test_parse_line_bad(text: str, column: str, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        parse_line(text)
    assert info.value.column == column
    assert fragment in info.value.message


def test_parse_line_huge_integer_is_input_error() -> None:
    with pytest.raises(InputError):
        parse_line('{"workspace_id": ' + "9" * 5000 + ', "kind": "status_change", "payload": {}}')


# --------------------------------------------------------------------------- properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
FIELD_NAMES = [
    "title", "due_date", "budgeted", "access_level", "stage", "status_key", "custom_fields",
    "invoice_preference", "external_reference", "rate_card_id", "target_margin", "price",
    "workspace_group_ids", "revenue_recognition_method_id", "currency", "to_status_key", "bogus",
]  # fmt: skip
valid_values = {
    "title": st.text(min_size=1, max_size=5).filter(str.strip),
    "due_date": st.dates().map(lambda d: d.isoformat()).filter(lambda s: len(s) == 10),
    "budgeted": st.booleans(),
    "access_level": st.sampled_from(["invitation", "open", "admins"]),
    "stage": st.sampled_from(["estimate", "project"]),
    "status_key": st.integers(100, 699),
    "target_margin": st.integers(-(2**31), INT32_MAX),
    "custom_fields": st.lists(
        st.fixed_dictionaries(
            {"custom_field_id": st.integers(1, INT32_MAX), "value": st.text(max_size=5)}
        ),
        max_size=3,
    ),
    "invoice_preference": st.fixed_dictionaries(
        {}, optional={"project_code": st.none() | st.text(max_size=3)}
    ),
}
near_valid_payload = (
    st.dictionaries(
        st.sampled_from(FIELD_NAMES),
        json_values,
        max_size=4,
    )
    | st.builds(
        dict,
        st.lists(st.sampled_from(list(valid_values)), min_size=1, max_size=4, unique=True).flatmap(
            lambda names: st.tuples(*[st.tuples(st.just(n), valid_values[n]) for n in names])
        ),
    )
    | st.fixed_dictionaries({"to_status_key": st.integers(0, 800) | json_values})
)
raw_scalar = st.none() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=20)
raw_payload = (
    raw_scalar
    | near_valid_payload.map(json.dumps)
    | near_valid_payload.map(lambda p: json.dumps(p).encode())
    | json_values.map(json.dumps)
)
raw_kind = (
    st.sampled_from(["status_change", "workspace_update"])
    | st.sampled_from([b"workspace_update", b"status_change", "x", b"\xff"])
    | raw_scalar
)
raw_workspace = st.integers(1, 1000) | st.integers(-5, 2**32) | raw_scalar


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_parse_line_arbitrary_text(text: str) -> None:
    try:
        result = parse_line(text)
    except InputError as exc:
        assert str(exc).startswith(f"{exc.column}: ")
        return
    assert isinstance(result, NewChange)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {},
            optional={
                "workspace_id": st.integers(-5, 2**32) | json_values,
                "kind": st.sampled_from(["status_change", "workspace_update"]) | json_values,
                "payload": near_valid_payload | json_values,
                "source_ref": st.none() | st.text(max_size=300) | json_values,
            },
        ),
    )
)
def test_parse_line_arbitrary_json(value: Any) -> None:
    try:
        change = parse_line(json.dumps(value))
    except InputError as exc:
        known = exc.column.split(".")[0] in {
            "line",
            "workspace_id",
            "kind",
            "payload",
            "source_ref",
        }
        assert known or (exc.message.startswith("unknown column") and exc.column in value)
        return
    assert isinstance(change, NewChange)
    again = {
        "workspace_id": change.workspace_id,
        "kind": str(change.kind),
        "payload": change.payload,
    }
    if change.source_ref is not None:
        again["source_ref"] = change.source_ref
    assert parse_line(json.dumps(again)) == change


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workspace_id=raw_workspace, kind=raw_kind, payload=raw_payload, ambiguous=st.booleans())
def test_validate_row_arbitrary(
    workspace_id: object, kind: object, payload: object, ambiguous: bool
) -> None:
    claimed = ClaimedRow(1, workspace_id, kind, payload, None, attempts=0, lease_token=3)
    try:
        change = validate_row(claimed, ambiguous)
    except InputError as exc:
        assert exc.column.split(".")[0] in {"workspace_id", "kind", "payload"}
        return
    assert change.ambiguous is ambiguous
    assert validate_payload(change.kind, change.payload) == change.payload
    stored = ClaimedRow(
        1, change.workspace_id, str(change.kind), json.dumps(change.payload), None, 0, 3
    )
    assert validate_row(stored, ambiguous) == change
