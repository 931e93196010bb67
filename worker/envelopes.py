"""Reading Kantata OX's success envelope (pure): primary objects, a workspace's state, pages.

``{"count", "results": [{"key": "workspaces", "id": "10"}], "workspaces": {"10": {...}}, "meta"}``:
``results`` names the primary objects, in order, in the keyed maps beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .changes import JSONObject
from .exceptions import ProtocolError
from .outcomes import cap_message


def primary_objects(body: JSONObject | None) -> list[JSONObject]:
    """The objects the ``results`` array points at, in order (the documented envelope)."""
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        raise ProtocolError("response has no results array")
    objects = []
    for ref in body["results"]:
        if not isinstance(ref, dict):
            raise ProtocolError("results entry is not an object")
        key, ident = ref.get("key"), ref.get("id")
        table = body.get(key) if isinstance(key, str) else None
        ident = str(ident) if isinstance(ident, str | int) and not isinstance(ident, bool) else None
        if not isinstance(table, dict) or ident not in table:
            where = cap_message(f"{_scalar(key)}/{ident}", 200)
            raise ProtocolError(f"results points at {where}, which the response lacks")
        objects.append(table[ident])
    return objects


def _scalar(value: Any) -> Any:
    """``value`` if it prints short and safely, else its type's name (nested JSON can't)."""
    return value if isinstance(value, str | int | float | bool) or value is None else "…"


def workspace_snapshot(body: JSONObject | None, workspace_id: int) -> JSONObject | None:
    """The workspace's ``status`` and ``updated_at`` as returned, for the change's result.

    Only plain values are kept (strings capped, numbers finite): whatever else an odd answer
    nests there could not be stored.
    """
    if not isinstance(body, dict):
        return None
    workspaces = body.get("workspaces")
    workspace = workspaces.get(str(workspace_id)) if isinstance(workspaces, dict) else None
    if not isinstance(workspace, dict):
        return None
    snapshot: JSONObject = {}
    status = workspace.get("status")
    if isinstance(status, dict):
        snapshot["status"] = {
            cap_message(k): _plain(v) for k, v in status.items() if _plain(v) is not _DROP
        }
    updated_at = _plain(workspace.get("updated_at"))
    if updated_at is not None and updated_at is not _DROP:
        snapshot["updated_at"] = updated_at
    return snapshot


_DROP = object()


def _plain(value: Any) -> Any:
    """A JSON scalar as it can be stored (a long string capped), or ``_DROP``."""
    if isinstance(value, str):
        return cap_message(value)
    if isinstance(value, float) and not math.isfinite(value):
        return _DROP
    if value is None or isinstance(value, bool | int | float):
        return value
    return _DROP


def status_key_of(body: JSONObject | None, workspace_id: int) -> int | None:
    """The workspace's current ``status.key`` from a GET, or None when absent or not a key."""
    snapshot = workspace_snapshot(body, workspace_id)
    status = snapshot.get("status") if snapshot else None
    key = status.get("key") if isinstance(status, dict) else None
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, float):
        return int(key) if key.is_integer() else None
    if isinstance(key, str):
        try:
            return int(key)
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class WorkspacePage:
    """One page of ``GET /workspaces``: the workspaces by ID, their custom field values by
    custom field ID, and where the page stands among the pages."""

    workspaces: dict[int, JSONObject]
    custom_field_values: dict[int, dict[int, JSONObject]]
    page_number: int
    page_count: int

    @property
    def more(self) -> bool:
        """Whether later pages hold more of the requested workspaces."""
        return self.page_number < self.page_count


def workspace_page(body: JSONObject | None) -> WorkspacePage:
    """Parse a ``GET /workspaces`` answer; :class:`ProtocolError` if it is not the envelope.

    Workspaces come from the ``results`` array; each one's custom field values are found
    through its ``custom_field_value_ids`` in the top-level ``custom_field_values`` map.
    """
    workspaces: dict[int, JSONObject] = {}
    values: dict[int, dict[int, JSONObject]] = {}
    value_table = body.get("custom_field_values") if isinstance(body, dict) else None
    for workspace in primary_objects(body):
        ident = _int_or_none(workspace.get("id"))
        if ident is None:
            raise ProtocolError("a listed workspace has no usable id")
        workspaces[ident] = workspace
        ids = workspace.get("custom_field_value_ids")
        if isinstance(ids, list) and isinstance(value_table, dict):
            mine: dict[int, JSONObject] = {}
            for value_id in ids:
                value = value_table.get(str(value_id))
                field_id = (
                    _int_or_none(value.get("custom_field_id")) if isinstance(value, dict) else None
                )
                if isinstance(value, dict) and field_id is not None:
                    mine[field_id] = value
            values[ident] = mine
    meta = body.get("meta") if isinstance(body, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    page_number = _int_or_none(meta.get("page_number")) or 1
    page_count = _int_or_none(meta.get("page_count")) or page_number
    return WorkspacePage(workspaces, values, page_number, page_count)


def _int_or_none(value: Any) -> int | None:
    """An ID as Kantata writes it (a string of digits, or an integer), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None
