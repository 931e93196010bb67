"""Request validation for the two write endpoints, as the real service answers it.

A body that is not the documented shape (not JSON, not an object, no ``workspace`` /
``workspace_status_change`` wrapper, a missing required parameter) is a 400; a well-shaped body
with a bad value is a 422 listing every bad field, like a Rails model validation. Types are
strict JSON types: ``"310"`` is not an integer and ``1`` is not a boolean. Unknown fields inside
``workspace`` are ignored, as Rails strong parameters drop unpermitted keys.

The validated update comes back in stored form: values are already shaped as the response
schema renders them (``price`` as a string, ID references as strings).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

from .errors import ApiError, ErrorType, RequestError, bad_request


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object in a request body, or a 400."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object")
    return data


def require_object(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The wrapper object ``name`` of a request body, or a 400 as Rails' ``params.require``."""
    value = body.get(name)
    if not isinstance(value, dict) or not value:
        raise bad_request(f"param is missing or the value is empty: {name}", name)
    return value


class Kind(StrEnum):
    """How a documented ``workspace`` request field is checked and stored."""

    TEXT = "text"
    NULLABLE_TEXT = "nullable_text"
    DATE = "date"
    BOOLEAN = "boolean"
    INTEGER = "integer"
    REFERENCE = "reference"
    REFERENCE_LIST = "reference_list"
    PRICE = "price"
    TEXT_OBJECT = "text_object"


WORKSPACE_FIELDS: dict[str, Kind] = {
    "consultant_role_name": Kind.TEXT,
    "client_role_name": Kind.TEXT,
    "description": Kind.TEXT,
    "currency": Kind.TEXT,
    "revenue_recognition_method_id": Kind.NULLABLE_TEXT,
    "revenue_recognition_method_name": Kind.NULLABLE_TEXT,
    "start_date": Kind.DATE,
    "due_date": Kind.DATE,
    "project_template_start_date": Kind.DATE,
    "budgeted": Kind.BOOLEAN,
    "exclude_archived_stories_percent_complete": Kind.BOOLEAN,
    "tasks_default_non_billable": Kind.BOOLEAN,
    "stories_are_fixed_fee_by_default": Kind.BOOLEAN,
    "expenses_in_burn_rate": Kind.BOOLEAN,
    "actual_fees_includes_expenses": Kind.BOOLEAN,
    "actual_fees_includes_additional_line_items": Kind.BOOLEAN,
    "posts_require_privacy_decision": Kind.BOOLEAN,
    "project_template_checklist_as_todos": Kind.BOOLEAN,
    "project_template_weekends_as_workdays": Kind.BOOLEAN,
    "project_template_create_unnamed_resources": Kind.BOOLEAN,
    "project_template_distribute_hours": Kind.BOOLEAN,
    "require_notes_on_time_entries": Kind.BOOLEAN,
    "time_trackable": Kind.BOOLEAN,
    "archived": Kind.BOOLEAN,
    "change_orders_enabled": Kind.BOOLEAN,
    "rate_card_id": Kind.INTEGER,
    "project_tracker_template_id": Kind.INTEGER,
    "project_template_before_story_id": Kind.INTEGER,
    "target_margin": Kind.INTEGER,
    "approver_id": Kind.REFERENCE,
    "primary_workspace_group_id": Kind.REFERENCE,
    "account_color_id": Kind.REFERENCE,
    "task_status_set_id": Kind.REFERENCE,
    "workspace_group_ids": Kind.REFERENCE_LIST,
    "account_insights_mapping_ids": Kind.REFERENCE_LIST,
    "price": Kind.PRICE,
    "invoice_preference": Kind.TEXT_OBJECT,
    "external_link": Kind.TEXT_OBJECT,
}
"""Plain documented fields; ``title``, ``access_level``, ``stage``, ``status_key``,
``custom_fields``, ``external_reference`` and ``project_template_assignment_mappings`` have
their own checks."""

ENUMS: dict[str, tuple[str, ...]] = {
    "access_level": ("invitation", "open", "admins"),
    "stage": ("estimate", "project"),
}
TEXT_OBJECT_KEYS: dict[str, tuple[str, ...]] = {
    "invoice_preference": (
        "client_invoice_address",
        "client_invoice_name",
        "consultant_invoice_address",
        "consultant_invoice_name",
        "project_code",
        "purchase_order",
    ),
    "external_link": ("text", "url"),
}
EXTERNAL_REFERENCE_TEXT = (
    "service_name",
    "service_model",
    "service_model_ref",
    "status",
    "external_message",
    "external_link",
    "external_status",
)
EXTERNAL_REFERENCE_REQUIRED = ("service_name", "service_model", "service_model_ref")
MAPPING_KEYS = ("resource_id", "user_id", "role_id")
DOCUMENTED_FIELDS: frozenset[str] = frozenset(
    [
        *WORKSPACE_FIELDS,
        *ENUMS,
        "title",
        "status_key",
        "custom_fields",
        "external_reference",
        "project_template_assignment_mappings",
    ]
)

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def humanize(name: str) -> str:
    """``due_date`` → ``Due date``, as Rails names attributes in messages."""
    text = name.replace("_", " ")
    return text[:1].upper() + text[1:]


def is_int(value: object) -> bool:
    """A JSON integer (``True`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_iso_date(value: object) -> bool:
    """A calendar date spelt ``YYYY-MM-DD``."""
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


@dataclass(slots=True)
class WorkspaceUpdate:
    """A validated ``workspace`` object of a PUT, in stored form.

    ``custom_fields`` maps custom_field_id to its new value (``None`` clears it).
    """

    fields: dict[str, Any] = field(default_factory=dict)
    custom_fields: dict[int, str | None] = field(default_factory=dict)
    status_key: int | None = None


def _type_error(name: str, expected: str) -> ApiError:
    return ApiError(ErrorType.VALIDATION, f"{humanize(name)} must be {expected}", name)


def _check_text_object(name: str, value: object, keys: tuple[str, ...]) -> list[ApiError]:
    if not isinstance(value, dict):
        return [_type_error(name, "an object")]
    return [
        _type_error(f"{name}.{key}", "a string")
        for key in keys
        if key in value and not isinstance(value[key], str)
    ]


def _check_plain(name: str, kind: Kind, value: object) -> tuple[list[ApiError], object]:
    if kind is Kind.TEXT:
        return ([] if isinstance(value, str) else [_type_error(name, "a string")]), value
    if kind is Kind.NULLABLE_TEXT:
        ok = value is None or isinstance(value, str)
        return ([] if ok else [_type_error(name, "a string or null")]), value
    if kind is Kind.DATE:
        ok = is_iso_date(value)
        return ([] if ok else [_type_error(name, "a valid ISO 8601 date (YYYY-MM-DD)")]), value
    if kind is Kind.BOOLEAN:
        return ([] if isinstance(value, bool) else [_type_error(name, "true or false")]), value
    if kind is Kind.INTEGER:
        return ([] if is_int(value) else [_type_error(name, "an integer")]), value
    if kind is Kind.REFERENCE:
        if not is_int(value):
            return [_type_error(name, "an integer")], value
        return [], str(value)
    if kind is Kind.REFERENCE_LIST:
        if not isinstance(value, list) or not all(is_int(item) for item in value):
            return [_type_error(name, "a list of integers")], value
        return [], [str(item) for item in value]
    if kind is Kind.PRICE:
        if not is_int(value):
            return [_type_error(name, "an integer")], value
        return [], str(value)
    return _check_text_object(name, value, TEXT_OBJECT_KEYS[name]), value


def _check_external_reference(value: object) -> list[ApiError]:
    name = "external_reference"
    if not isinstance(value, dict):
        return [_type_error(name, "an object")]
    errors = [
        ApiError(ErrorType.VALIDATION, f"{humanize(key)} can't be blank", f"{name}.{key}")
        for key in EXTERNAL_REFERENCE_REQUIRED
        if not value.get(key)
    ]
    errors += [
        _type_error(f"{name}.{key}", "a string")
        for key in EXTERNAL_REFERENCE_TEXT
        if key in value and value[key] is not None and not isinstance(value[key], str)
    ]
    if "locked" in value and not isinstance(value["locked"], bool):
        errors.append(_type_error(f"{name}.locked", "true or false"))
    return errors


def _check_mappings(value: object) -> list[ApiError]:
    name = "project_template_assignment_mappings"
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        return [_type_error(name, "a list of objects")]
    return [
        _type_error(f"{name}[{index}].{key}", "an integer")
        for index, item in enumerate(value)
        for key in MAPPING_KEYS
        if key in item and not is_int(item[key])
    ]


def _check_custom_fields(value: object, update: WorkspaceUpdate) -> list[ApiError]:
    name = "custom_fields"
    if not isinstance(value, list):
        return [_type_error(name, "a list of objects")]
    errors: list[ApiError] = []
    for index, item in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(item, dict):
            errors.append(_type_error(where, "an object"))
            continue
        field_id = item.get("custom_field_id")
        if not isinstance(field_id, int) or isinstance(field_id, bool) or field_id <= 0:
            errors.append(_type_error(f"{where}.custom_field_id", "a positive integer"))
            continue
        if "value" not in item:
            errors.append(
                ApiError(ErrorType.VALIDATION, "Value can't be missing", f"{where}.value")
            )
            continue
        cf_value = item["value"]
        if cf_value is not None and not isinstance(cf_value, str):
            errors.append(_type_error(f"{where}.value", "a string or null"))
            continue
        update.custom_fields[field_id] = cf_value
    return errors


def check_status_key(name: str, value: object, enabled: Mapping[int, str]) -> ApiError | None:
    """Why ``value`` is not a usable status key for this account, or None when it is."""
    if not is_int(value):
        return _type_error(name, "an integer")
    assert isinstance(value, int)
    if value not in enabled:
        return ApiError(
            ErrorType.VALIDATION,
            f"{humanize(name)} {value} is not a project status enabled on this account",
            name,
        )
    return None


def validate_workspace_update(
    workspace: Mapping[str, Any], enabled: Mapping[int, str]
) -> WorkspaceUpdate:
    """Check the ``workspace`` object of a PUT; raises a 422 listing every bad field."""
    update = WorkspaceUpdate()
    errors: list[ApiError] = []
    for name, value in workspace.items():
        kind = WORKSPACE_FIELDS.get(name)
        if kind is not None:
            problems, stored = _check_plain(name, kind, value)
            errors += problems
            if not problems:
                update.fields[name] = stored
        elif name in _SPECIAL:
            errors += _SPECIAL[name](name, value, update, enabled)
    if errors:
        raise RequestError(422, errors)
    if "expenses_in_burn_rate" in update.fields:
        both = update.fields["expenses_in_burn_rate"]
        update.fields.setdefault("actual_fees_includes_expenses", both)
        update.fields.setdefault("actual_fees_includes_additional_line_items", both)
    return update


def _title(
    name: str, value: object, update: WorkspaceUpdate, _: Mapping[int, str]
) -> list[ApiError]:
    if not isinstance(value, str) or not value.strip():
        return [ApiError(ErrorType.VALIDATION, "Please give your project a title", name)]
    update.fields[name] = value
    return []


def _enum(
    name: str, value: object, update: WorkspaceUpdate, _: Mapping[int, str]
) -> list[ApiError]:
    if value not in ENUMS[name]:
        return [
            ApiError(ErrorType.VALIDATION, f"{humanize(name)} is not included in the list", name)
        ]
    update.fields[name] = value
    return []


def _status(
    name: str, value: object, update: WorkspaceUpdate, enabled: Mapping[int, str]
) -> list[ApiError]:
    problem = check_status_key(name, value, enabled)
    if problem is not None:
        return [problem]
    assert isinstance(value, int)
    update.status_key = value
    return []


def _custom(
    name: str, value: object, update: WorkspaceUpdate, _: Mapping[int, str]
) -> list[ApiError]:
    return _check_custom_fields(value, update)


def _external(
    name: str, value: object, update: WorkspaceUpdate, _: Mapping[int, str]
) -> list[ApiError]:
    problems = _check_external_reference(value)
    if not problems:
        update.fields[name] = value
    return problems


def _mappings(
    name: str, value: object, update: WorkspaceUpdate, _: Mapping[int, str]
) -> list[ApiError]:
    problems = _check_mappings(value)
    if not problems:
        update.fields[name] = value
    return problems


_Check = Callable[[str, object, WorkspaceUpdate, Mapping[int, str]], list[ApiError]]
_SPECIAL: dict[str, _Check] = {
    "title": _title,
    "access_level": _enum,
    "stage": _enum,
    "status_key": _status,
    "custom_fields": _custom,
    "external_reference": _external,
    "project_template_assignment_mappings": _mappings,
}


@dataclass(frozen=True, slots=True)
class StatusChangeRequest:
    """A validated ``workspace_status_change`` object of a POST."""

    workspace_id: int
    to_status_key: int


def validate_status_change(body: Mapping[str, Any]) -> StatusChangeRequest:
    """Check the shape and types of a status-change body (400, then 422).

    Whether the key is enabled, and whether it differs from the current status, is checked
    after the workspace lookup, as the real service does.
    """
    change = require_object(body, "workspace_status_change")
    for name in ("workspace_id", "to_status_key"):
        if change.get(name) is None:
            raise bad_request(f"param is missing or the value is empty: {name}", name)
    workspace_id = change["workspace_id"]
    to_status_key = change["to_status_key"]
    errors = [
        _type_error(name, "an integer")
        for name, value in (("workspace_id", workspace_id), ("to_status_key", to_status_key))
        if not is_int(value)
    ]
    if errors:
        raise RequestError(422, errors)
    return StatusChangeRequest(workspace_id, to_status_key)
