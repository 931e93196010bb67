"""Where Kantata differs from the desired state (pure): normalise, compare, propose repairs.

Values are brought to one form before they are compared, the way Kantata writes them back:
dates may come back as a date-time (only the date counts); money and numbers come back as
strings or floats (``price`` "1200.00", ``target_margin`` 30.0) and compare as decimals, with
``price_in_cents`` when ``price`` is absent; IDs come back as strings; ID lists compare as sets;
``status.key`` is a string; ``access_level`` ``admins`` reads back as ``admin``; a currency code
compares case-insensitively. Custom field values compare by the value type Kantata reports
(``string``, ``date``, ``number``, ``currency`` as ``[998, USD]``, ``single``/``multi`` as a
set of choice IDs); a custom field with no value at all reads as null.

A field Kantata does not return (it needs an include, or the user may not see it) is
*unverified*, never drift; a field a queued change will set is *settling* and not judged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from .changes import JSONObject, Kind, NewChange
from .desired import (
    STATUS,
    Compare,
    DesiredState,
    compare_kind,
    custom_field_id,
    desired_payloads,
)

_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:$|[T ])")
_MONEY_NOISE = re.compile(r"[\s,]|^[^\d.+-]+")
ABSENT = object()
"""What :func:`actual_value` returns for a field the answer does not carry."""


class Finding(StrEnum):
    """What verify found for a workspace or one of its fields."""

    DRIFTED = "drifted"
    MISSING = "missing"
    """Kantata no longer returns the workspace (deleted, or out of the token's sight)."""
    UNREADABLE = "unreadable"
    """The read failed after its retries: nothing is known, nothing is judged."""


@dataclass(frozen=True, slots=True)
class Drift:
    """One row of verify's report."""

    workspace_id: int
    finding: Finding
    field: str | None = None
    desired: Any = None
    actual: Any = None
    change_id: int | None = None
    completed_at: datetime | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Comparison:
    """One workspace compared: its drift, and how many fields were judged or not."""

    drift: tuple[Drift, ...]
    checked: int
    unverified: int
    settling: int


def _text(value: Any) -> Any:
    return value


def _code(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _access_level(value: Any) -> Any:
    return "admins" if value == "admin" else value


def _date(value: Any) -> Any:
    if isinstance(value, str):
        match = _DATE.match(value.strip())
        if match:
            try:
                return date(*(int(part) for part in match.groups()))
            except ValueError:
                return value
    return value


def _boolean(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _decimal(value: Any, *, money: bool = False) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float | Decimal):
        text = str(value)
    elif isinstance(value, str):
        text = _MONEY_NOISE.sub("", value) if money else value.strip()
    else:
        return value
    try:
        number = Decimal(text)
    except InvalidOperation:
        return value
    return number.normalize() if number.is_finite() else value


def _number(value: Any) -> Any:
    return _decimal(value)


def _money(value: Any) -> Any:
    return _decimal(value, money=True)


def _reference(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value.strip() if isinstance(value, str) else value


def _reference_list(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(sorted(str(_reference(item)) for item in value))
    return value


def _status(value: Any) -> Any:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


_NORMALISERS = {
    Compare.TEXT: _text,
    Compare.CODE: _code,
    Compare.ACCESS_LEVEL: _access_level,
    Compare.DATE: _date,
    Compare.BOOLEAN: _boolean,
    Compare.NUMBER: _number,
    Compare.MONEY: _money,
    Compare.REFERENCE: _reference,
    Compare.REFERENCE_LIST: _reference_list,
    Compare.STATUS: _status,
}


def normalise(kind: Compare, value: Any) -> Any:
    """``value`` in the form in which it compares (custom fields: :func:`normalise_custom`)."""
    return _NORMALISERS[kind](value)


def _tokens(value: Any) -> tuple[str, ...]:
    """``[998, "USD"]``, ``"[998, USD]"`` or ``"998"`` as ``("998", "USD")``."""
    if isinstance(value, list):
        items = [str(item) for item in value]
    else:
        text = str(value).strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        items = text.split(",") if text else []
    return tuple(item.strip().strip("\"'").strip() for item in items)


def normalise_custom(value_type: str | None, value: Any) -> Any:
    """A custom field value in the form in which it compares, by its value type."""
    if value is None:
        return None
    if value_type == "date":
        return _date(value if isinstance(value, str) else str(value))
    if value_type == "number":
        return _decimal(value)
    if value_type == "currency":
        tokens = _tokens(value)
        if tokens:
            return (_decimal(tokens[0], money=True), *(t.upper() for t in tokens[1:]))
        return tokens
    if value_type in ("single", "multi"):
        return tuple(sorted(_tokens(value)))
    return value if isinstance(value, str) else str(value)


def actual_value(
    path: str,
    workspace: Mapping[str, Any],
    custom_values: Mapping[int, Mapping[str, Any]] | None,
) -> tuple[Any, str | None]:
    """What Kantata holds at ``path`` (or :data:`ABSENT`), and the custom field's value type.

    ``custom_values`` is None when the answer carried no custom field values at all.
    """
    if path == STATUS:
        status = workspace.get("status")
        return (status.get("key", ABSENT) if isinstance(status, dict) else ABSENT), None
    field_id = custom_field_id(path)
    if field_id is not None:
        if custom_values is None:
            return ABSENT, None
        value = custom_values.get(field_id)
        if value is None:
            return None, None
        kind = value.get("type")
        return value.get("value"), kind if isinstance(kind, str) else None
    if path == "price" and "price" not in workspace and "price_in_cents" in workspace:
        cents = _decimal(workspace["price_in_cents"])
        return (cents / 100 if isinstance(cents, Decimal) else ABSENT), None
    return workspace.get(path, ABSENT), None


def same(path: str, desired: Any, actual: Any, value_type: str | None = None) -> bool:
    """Whether Kantata's ``actual`` is the ``desired`` value of the field at ``path``."""
    kind = compare_kind(path)
    if kind is Compare.CUSTOM:
        return bool(normalise_custom(value_type, desired) == normalise_custom(value_type, actual))
    return bool(normalise(kind, desired) == normalise(kind, actual))


def compare(
    desired: DesiredState,
    workspace: Mapping[str, Any],
    custom_values: Mapping[int, Mapping[str, Any]] | None,
) -> Comparison:
    """Field by field, where ``workspace`` (as Kantata returned it) differs from ``desired``."""
    drift: list[Drift] = []
    checked = unverified = settling = 0
    for path in sorted(desired.fields):
        if path in desired.unsettled:
            settling += 1
            continue
        wanted = desired.fields[path]
        actual, value_type = actual_value(path, workspace, custom_values)
        if actual is ABSENT:
            unverified += 1
            continue
        checked += 1
        if not same(path, wanted.value, actual, value_type):
            drift.append(
                Drift(
                    desired.workspace_id,
                    Finding.DRIFTED,
                    path,
                    wanted.value,
                    actual,
                    wanted.change_id,
                    wanted.completed_at,
                )
            )
    return Comparison(tuple(drift), checked, unverified, settling)


def repair_changes(drift: Iterable[Drift], run_id: str) -> list[NewChange]:
    """The changes that set drifted fields back, in a workspace's order: updates, then status.

    Each carries ``source_ref`` ``verify:<run-id>:<workspace>:<field>``. Missing and
    unreadable workspaces get none.
    """
    updates: dict[int, list[NewChange]] = {}
    statuses: dict[int, NewChange] = {}
    for item in drift:
        if item.finding is not Finding.DRIFTED or item.field is None:
            continue
        kind, payload = desired_payloads(item.field, item.desired)
        ref = f"verify:{run_id}:{item.workspace_id}:{item.field}"
        change = NewChange(item.workspace_id, kind, payload, ref)
        mine = updates.setdefault(item.workspace_id, [])
        if kind is Kind.STATUS_CHANGE:
            statuses[item.workspace_id] = change
        else:
            mine.append(change)
    ordered: list[NewChange] = []
    for workspace_id, changes in updates.items():
        ordered += changes
        if workspace_id in statuses:
            ordered.append(statuses[workspace_id])
    return ordered


def plain(value: Any) -> Any:
    """A value as a report prints it (JSON-ready)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def as_row(item: Drift) -> JSONObject:
    """A report row."""
    return {
        "workspace_id": item.workspace_id,
        "finding": str(item.finding),
        "field": item.field,
        "desired": plain(item.desired),
        "actual": plain(item.actual),
        "change_id": item.change_id,
        "completed_at": plain(item.completed_at),
        "detail": item.detail,
    }
