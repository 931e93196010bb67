"""The desired state the outbox implies, folded from its changes (pure).

For each workspace: the last succeeded value of every field Kantata lets us read back, and the
last succeeded status. Changes fold in ``id`` order, so later succeeded updates win, custom
fields merge by ``custom_field_id`` (one path per custom field, ``custom_fields.7``), and a
status comes from a ``status_change`` or from a PUT's ``status_key`` alike (path ``status``).
``expenses_in_burn_rate`` is not a stored field: setting it sets both
``actual_fees_includes_expenses`` and ``actual_fees_includes_additional_line_items`` (Kantata's
documentation), unless the same change sets them itself, and it reads back as their AND; the
desired state holds the two fields instead.

Fields that are actions or that Kantata does not return on a workspace are not part of the
desired state (see :data:`NOT_VERIFIED`). Pending and in-flight changes do not change the desired
state, but the paths they will set are *unsettled*: verify does not judge them, and repairs
never overwrite them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from .changes import JSONObject, Kind, State

STATUS = "status"
CUSTOM_PREFIX = "custom_fields."
BURN_RATE_PARTS = ("actual_fees_includes_expenses", "actual_fees_includes_additional_line_items")


class Compare(StrEnum):
    """How a field's desired value and Kantata's answer are brought to one form."""

    TEXT = "text"
    CODE = "code"
    """Compared case-insensitively (a currency code)."""
    ACCESS_LEVEL = "access_level"
    """``admins`` is sent, and Kantata documents ``admin`` as what it returns."""
    DATE = "date"
    BOOLEAN = "boolean"
    NUMBER = "number"
    MONEY = "money"
    REFERENCE = "reference"
    REFERENCE_LIST = "reference_list"
    STATUS = "status"
    CUSTOM = "custom"


VERIFIED: Mapping[str, Compare] = {
    "title": Compare.TEXT,
    "description": Compare.TEXT,
    "consultant_role_name": Compare.TEXT,
    "client_role_name": Compare.TEXT,
    "revenue_recognition_method_id": Compare.TEXT,
    "revenue_recognition_method_name": Compare.TEXT,
    "stage": Compare.TEXT,
    "currency": Compare.CODE,
    "access_level": Compare.ACCESS_LEVEL,
    "start_date": Compare.DATE,
    "due_date": Compare.DATE,
    "budgeted": Compare.BOOLEAN,
    "archived": Compare.BOOLEAN,
    "exclude_archived_stories_percent_complete": Compare.BOOLEAN,
    "tasks_default_non_billable": Compare.BOOLEAN,
    "stories_are_fixed_fee_by_default": Compare.BOOLEAN,
    "actual_fees_includes_expenses": Compare.BOOLEAN,
    "actual_fees_includes_additional_line_items": Compare.BOOLEAN,
    "posts_require_privacy_decision": Compare.BOOLEAN,
    "require_notes_on_time_entries": Compare.BOOLEAN,
    "time_trackable": Compare.BOOLEAN,
    "change_orders_enabled": Compare.BOOLEAN,
    "price": Compare.MONEY,
    "target_margin": Compare.NUMBER,
    "rate_card_id": Compare.NUMBER,
    "task_status_set_id": Compare.REFERENCE,
    "approver_id": Compare.REFERENCE,
    "primary_workspace_group_id": Compare.REFERENCE,
    "account_color_id": Compare.REFERENCE,
    "workspace_group_ids": Compare.REFERENCE_LIST,
    "account_insights_mapping_ids": Compare.REFERENCE_LIST,
}
"""The request fields of ``PUT /workspaces/{id}`` that a workspace reads back as, and how.

Some only come back with an include or an optional field (``approver_id``, ``stage``, ...):
they are compared when the answer has them and counted as unverified when it does not.
"""

NOT_VERIFIED: Mapping[str, str] = {
    "invoice_preference": "not part of a workspace as Kantata returns it",
    "external_reference": "a separate object (include=external_references), written as an action",
    "external_link": "whether a later PUT merges or replaces it is not documented",
    "project_tracker_template_id": "applying a template is an action, not a stored value",
    "project_template_start_date": "a template option",
    "project_template_checklist_as_todos": "a template option",
    "project_template_assignment_mappings": "a template option",
    "project_template_weekends_as_workdays": "a template option",
    "project_template_create_unnamed_resources": "a template option",
    "project_template_distribute_hours": "a template option",
    "project_template_before_story_id": "a template option",
    "expenses_in_burn_rate": "derived; verified through the two fields it sets",
    "status_key": "verified as the status",
    "custom_fields": "verified one custom field at a time",
}


def compare_kind(path: str) -> Compare:
    """How the field at ``path`` is compared."""
    if path == STATUS:
        return Compare.STATUS
    if path.startswith(CUSTOM_PREFIX):
        return Compare.CUSTOM
    return VERIFIED[path]


def custom_field_id(path: str) -> int | None:
    """The custom field a path names (``custom_fields.7`` → 7), else None."""
    if not path.startswith(CUSTOM_PREFIX):
        return None
    rest = path.removeprefix(CUSTOM_PREFIX)
    return int(rest) if rest.isdigit() else None


def field_values(kind: str, payload: object) -> dict[str, Any]:
    """The verifiable paths a change sets, with the values it sends (nothing if unusable)."""
    if not isinstance(payload, dict):
        return {}
    if kind == Kind.STATUS_CHANGE:
        key = payload.get("to_status_key")
        return {STATUS: key} if isinstance(key, int) and not isinstance(key, bool) else {}
    if kind != Kind.WORKSPACE_UPDATE:
        return {}
    values: dict[str, Any] = {}
    for name, value in payload.items():
        if name == "custom_fields" and isinstance(value, list):
            for item in value:
                field_id = item.get("custom_field_id") if isinstance(item, dict) else None
                if isinstance(field_id, int) and not isinstance(field_id, bool):
                    values[f"{CUSTOM_PREFIX}{field_id}"] = item.get("value")
        elif name == "status_key":
            values[STATUS] = value
        elif name in VERIFIED:
            values[name] = value
    burn_rate = payload.get("expenses_in_burn_rate")
    if isinstance(burn_rate, bool):
        for part in BURN_RATE_PARTS:
            if part not in payload:
                values[part] = burn_rate
    return values


@dataclass(frozen=True, slots=True)
class Wanted:
    """A field's desired value as it was sent, and the succeeded change that sent it last."""

    value: Any
    change_id: int
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A change as verify reads it: only succeeded, pending and in-flight ones matter."""

    id: int
    workspace_id: int
    kind: str
    payload: object
    state: str
    completed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DesiredState:
    """What Kantata should hold for one workspace, by path, and what is still on its way."""

    workspace_id: int
    fields: Mapping[str, Wanted]
    unsettled: frozenset[str] = frozenset()

    @property
    def needs_custom_fields(self) -> bool:
        """Whether reading it back needs ``include=custom_field_values``."""
        return any(path.startswith(CUSTOM_PREFIX) for path in self.fields)


def fold(workspace_id: int, rows: Iterable[OutboxRow]) -> DesiredState:
    """One workspace's desired state from its rows (any order; folded in ID order)."""
    fields: dict[str, Wanted] = {}
    unsettled: set[str] = set()
    for row in sorted(rows, key=lambda r: r.id):
        values = field_values(row.kind, row.payload)
        if row.state == State.SUCCEEDED:
            for path, value in values.items():
                fields[path] = Wanted(value, row.id, row.completed_at)
        elif row.state in (State.PENDING, State.IN_FLIGHT):
            unsettled.update(values)
    return DesiredState(workspace_id, fields, frozenset(unsettled))


def fold_all(rows: Iterable[OutboxRow]) -> Iterator[DesiredState]:
    """Desired states from rows grouped by workspace (as a query ordered by workspace gives)."""
    current: int | None = None
    group: list[OutboxRow] = []
    for row in rows:
        if row.workspace_id != current:
            if group and current is not None:
                yield fold(current, group)
            current, group = row.workspace_id, []
        group.append(row)
    if group and current is not None:
        yield fold(current, group)


def desired_payloads(path: str, value: Any) -> tuple[Kind, JSONObject]:
    """The change that sets ``path`` back to ``value``: a status change for the status, else
    a one-field update (a custom field as a one-item ``custom_fields`` list)."""
    if path == STATUS:
        return Kind.STATUS_CHANGE, {"to_status_key": value}
    field_id = custom_field_id(path)
    if field_id is not None:
        return Kind.WORKSPACE_UPDATE, {
            "custom_fields": [{"custom_field_id": field_id, "value": value}]
        }
    return Kind.WORKSPACE_UPDATE, {path: value}
