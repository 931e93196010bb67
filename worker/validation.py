"""Pure validation of producer input: an enqueue line or a stored row becomes a typed change.

Everything a producer can get wrong is caught here, before a request is spent, and reported as an
:class:`~worker.exceptions.InputError` that names the column (``payload.due_date``) and the
problem. The allowed workspace fields are the request fields of ``PUT /workspaces/{id}`` in
Kantata's published OpenAPI document.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from .changes import Change, ClaimedRow, JSONObject, Kind, NewChange
from .exceptions import InputError
from .statuses import color_for

INT32_MAX = 2**31 - 1
MAX_TEXT = 65_535
MAX_PAYLOAD_BYTES = 1_000_000
MAX_SOURCE_REF = 255
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_date(value: str) -> str:
    if not _DATE.fullmatch(value):
        raise ValueError("must be an ISO 8601 date (YYYY-MM-DD)")
    try:
        date.fromisoformat(value)
    except ValueError:
        raise ValueError("is not a real calendar date") from None
    return value


def _status_key(value: int) -> int:
    if color_for(value) is None:
        raise ValueError("must be a Kantata status key between 100 and 699")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Text = Annotated[StrictStr, Field(max_length=MAX_TEXT)]
Id32 = Annotated[StrictInt, Field(ge=1, le=INT32_MAX)]
Int32 = Annotated[StrictInt, Field(ge=-INT32_MAX - 1, le=INT32_MAX)]
IsoDate = Annotated[StrictStr, AfterValidator(_iso_date)]
StatusKey = Annotated[StrictInt, AfterValidator(_status_key)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InvoicePreference(_Strict):
    client_invoice_address: Text | None = None
    client_invoice_name: Text | None = None
    consultant_invoice_address: Text | None = None
    consultant_invoice_name: Text | None = None
    project_code: Text | None = None
    purchase_order: Text | None = None


class TemplateAssignmentMapping(_Strict):
    resource_id: Id32 | None = None
    user_id: Id32 | None = None
    role_id: Id32 | None = None


class ExternalReference(_Strict):
    service_name: Text
    service_model: Text
    service_model_ref: Text
    status: Literal["successful", "pending", "failed"] | None = None
    external_message: Text | None = None
    external_link: Text | None = None
    external_status: Text | None = None
    locked: StrictBool | None = None


class ExternalLink(_Strict):
    text: Text | None = None
    url: Text | None = None


class CustomFieldValue(_Strict):
    custom_field_id: Id32
    value: Text


class WorkspaceFields(_Strict):
    """The ``workspace`` object of ``PUT /workspaces/{id}``; every field optional."""

    consultant_role_name: Text | None = None
    client_role_name: Text | None = None
    budgeted: StrictBool | None = None
    start_date: IsoDate | None = None
    due_date: IsoDate | None = None
    description: Text | None = None
    currency: Annotated[StrictStr, Field(pattern=r"^[A-Z]{3}$")] | None = None
    access_level: Literal["invitation", "open", "admins"] | None = None
    rate_card_id: Id32 | None = None
    exclude_archived_stories_percent_complete: StrictBool | None = None
    revenue_recognition_method_id: Text | None = None
    revenue_recognition_method_name: Text | None = None
    tasks_default_non_billable: StrictBool | None = None
    stories_are_fixed_fee_by_default: StrictBool | None = None
    expenses_in_burn_rate: StrictBool | None = None
    actual_fees_includes_expenses: StrictBool | None = None
    actual_fees_includes_additional_line_items: StrictBool | None = None
    posts_require_privacy_decision: StrictBool | None = None
    status_key: StatusKey | None = None
    invoice_preference: InvoicePreference | None = None
    approver_id: Id32 | None = None
    workspace_group_ids: list[Id32] | None = None
    project_template_start_date: IsoDate | None = None
    project_template_checklist_as_todos: StrictBool | None = None
    project_template_assignment_mappings: list[TemplateAssignmentMapping] | None = None
    project_template_weekends_as_workdays: StrictBool | None = None
    project_template_create_unnamed_resources: StrictBool | None = None
    project_template_distribute_hours: StrictBool | None = None
    project_tracker_template_id: Id32 | None = None
    primary_workspace_group_id: Id32 | None = None
    target_margin: Int32 | None = None
    external_reference: ExternalReference | None = None
    account_color_id: Id32 | None = None
    external_link: ExternalLink | None = None
    account_insights_mapping_ids: list[Id32] | None = None
    custom_fields: list[CustomFieldValue] | None = None
    stage: Literal["estimate", "project"] | None = None
    require_notes_on_time_entries: StrictBool | None = None
    time_trackable: StrictBool | None = None
    title: Annotated[Text, AfterValidator(_not_blank)] | None = None
    archived: StrictBool | None = None
    price: Annotated[StrictInt, Field(ge=0, le=INT32_MAX)] | None = None
    project_template_before_story_id: Id32 | None = None
    change_orders_enabled: StrictBool | None = None
    task_status_set_id: Id32 | None = None


NULLABLE_FIELDS = frozenset({"revenue_recognition_method_id", "revenue_recognition_method_name"})


class StatusChangePayload(_Strict):
    """The payload of a ``status_change``: the status key to move the workspace to."""

    to_status_key: StatusKey


def _first_error(exc: ValidationError, prefix: str) -> InputError:
    error = exc.errors(include_input=False, include_url=False)[0]
    loc = ".".join(str(part) for part in error["loc"] if part not in ("function-after",))
    column = f"{prefix}.{loc}" if loc else prefix
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    return InputError(column, message)


def validate_payload(kind: Kind, payload: object) -> JSONObject:
    """Check a payload against its kind; return it normalised (explicit nulls dropped)."""
    if not isinstance(payload, dict):
        raise InputError("payload", "must be a JSON object")
    if kind is Kind.STATUS_CHANGE:
        key = payload.get("to_status_key")
        if len(payload) == 1 and type(key) is int and color_for(key) is not None:
            return {"to_status_key": key}  # the usual payload, in a fraction of the time
        try:
            return StatusChangePayload.model_validate(payload).model_dump()
        except ValidationError as exc:
            raise _first_error(exc, "payload") from exc
    if not payload:
        raise InputError("payload", "a workspace_update needs at least one field")
    for name, value in payload.items():
        if value is None and name not in NULLABLE_FIELDS:
            raise InputError(f"payload.{name}", "must not be null")
    try:
        fields = WorkspaceFields.model_validate(payload)
    except ValidationError as exc:
        raise _first_error(exc, "payload") from exc
    return fields.model_dump(exclude_unset=True)


def validate_kind(kind: object) -> Kind:
    if not isinstance(kind, str):
        raise InputError("kind", "must be a string")
    try:
        return Kind(kind)
    except ValueError:
        raise InputError(
            "kind", f"unknown kind {kind[:40]!r}; expected status_change or workspace_update"
        ) from None


def validate_workspace_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError("workspace_id", "must be an integer")
    if not 1 <= value <= INT32_MAX:
        raise InputError("workspace_id", f"must be between 1 and {INT32_MAX}")
    return value


def validate_source_ref(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError("source_ref", "must be a string or null")
    if not value or len(value) > MAX_SOURCE_REF:
        raise InputError("source_ref", f"must be 1 to {MAX_SOURCE_REF} characters")
    return value


def decode_payload(raw: object) -> object:
    """Parse the stored payload column (JSON text, or bytes where SQLite held non-text)."""
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError("payload", f"is not valid UTF-8 (byte {exc.start})") from exc
    if not isinstance(raw, str):
        raise InputError("payload", "must be JSON text")
    if len(raw) > MAX_PAYLOAD_BYTES or len(raw.encode("utf-8", "surrogatepass")) > (
        MAX_PAYLOAD_BYTES
    ):
        raise InputError("payload", f"is larger than {MAX_PAYLOAD_BYTES} bytes")
    return _loads("payload", raw)


def _loads(column: str, text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass  # json decides, and names the problem: it also takes NaN and huge integers
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(column, f"is not valid JSON ({exc.msg} at {exc.pos})") from exc
    except RecursionError as exc:
        raise InputError(column, "is nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer literal longer than Python will convert
        raise InputError(column, f"is not usable JSON ({exc})") from exc


def _text_column(name: str, raw: object) -> object:
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(name, f"is not valid UTF-8 (byte {exc.start})") from exc
    return raw


def validate_row(row: ClaimedRow, ambiguous: bool = False) -> Change:
    """A claimed row becomes a :class:`Change`, or raises :class:`InputError`."""
    workspace_id = validate_workspace_id(row.workspace_id)
    kind = validate_kind(_text_column("kind", row.kind))
    payload = validate_payload(kind, decode_payload(row.payload))
    return Change(
        id=row.id,
        workspace_id=workspace_id,
        kind=kind,
        payload=payload,
        attempts=row.attempts,
        lease_token=row.lease_token,
        ambiguous=ambiguous,
    )


def parse_line(line: str) -> NewChange:
    """One JSON Lines record of ``kantata-sync enqueue`` becomes a :class:`NewChange`."""
    if len(line.encode("utf-8", "surrogatepass")) > MAX_PAYLOAD_BYTES:
        raise InputError("line", f"is larger than {MAX_PAYLOAD_BYTES} bytes")
    record = _loads("line", line)
    if not isinstance(record, dict):
        raise InputError("line", "must be a JSON object")
    unknown = sorted(set(record) - {"workspace_id", "kind", "payload", "source_ref"})
    if unknown:
        raise InputError(
            unknown[0], "unknown column" if unknown[0] else "unknown column (empty name)"
        )
    for column in ("workspace_id", "kind", "payload"):
        if column not in record:
            raise InputError(column, "is required")
    workspace_id = validate_workspace_id(record["workspace_id"])
    kind = validate_kind(record["kind"])
    payload = validate_payload(kind, record["payload"])
    if len(json.dumps(payload)) > MAX_PAYLOAD_BYTES:
        raise InputError("payload", f"is larger than {MAX_PAYLOAD_BYTES} bytes")
    return NewChange(workspace_id, kind, payload, validate_source_ref(record.get("source_ref")))
