"""Kantata OX JSON envelopes: success bodies with ``results`` and keyed maps, and error bodies."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

from worker.statuses import color_for

from .errors import ApiError, ErrorType
from .state import CustomFieldValue, StatusChange, Workspace

dumps = partial(json.dumps, separators=(",", ":"), ensure_ascii=False)
"""Compact JSON, as the API sends it."""

META = {"count": 1, "page_count": 1, "page_number": 1, "page_size": 20}


def parse_includes(raw: str | None) -> frozenset[str]:
    """The names in an ``include=a,b`` parameter; unknown names are the caller's to ignore."""
    if not raw:
        return frozenset()
    return frozenset(name.strip() for name in raw.split(",") if name.strip())


def status_json(key: int, statuses: Mapping[int, str]) -> dict[str, str]:
    """The ``status`` hash of a workspace: key as a string, colour and message."""
    return {
        "color": color_for(key) or "grey",
        "key": str(key),
        "message": statuses.get(key, f"Status {key}"),
    }


def workspace_json(
    workspace: Workspace, statuses: Mapping[int, str], *, custom_field_value_ids: bool = False
) -> dict[str, Any]:
    """A Workspace object as the API renders it."""
    data: dict[str, Any] = {
        "id": str(workspace.id),
        **workspace.fields,
        "status": status_json(workspace.status_key, statuses),
        "created_at": workspace.created_at,
        "updated_at": workspace.updated_at,
    }
    if custom_field_value_ids:
        data["custom_field_value_ids"] = [
            str(value.id) for _, value in sorted(workspace.custom_fields.items())
        ]
    return data


def custom_field_value_json(workspace: Workspace, value: CustomFieldValue) -> dict[str, Any]:
    """A CustomFieldValue object of a workspace (all sandbox custom fields are strings)."""
    return {
        "id": str(value.id),
        "account_id": 1,
        "can_edit": True,
        "created_at": value.created_at,
        "updated_at": value.updated_at,
        "custom_field_id": str(value.custom_field_id),
        "custom_field_name": f"Custom field {value.custom_field_id}",
        "display_value": value.value,
        "subject_id": workspace.id,
        "subject_type": "Workspace",
        "type": "string",
        "value": value.value,
    }


def custom_field_values_json(workspace: Workspace) -> dict[str, dict[str, Any]]:
    """The top-level ``custom_field_values`` map for one workspace."""
    return {
        str(value.id): custom_field_value_json(workspace, value)
        for _, value in sorted(workspace.custom_fields.items())
    }


def user_json(user_id: int) -> dict[str, Any]:
    """The User the sandbox assigns to a token."""
    return {
        "id": str(user_id),
        "full_name": f"Sandbox User {user_id}",
        "email_address": f"user{user_id}@sandbox.invalid",
        "headline": "Kantata OX sandbox",
    }


def status_change_json(
    change: StatusChange, statuses: Mapping[int, str], *, user: bool, workspace: bool
) -> dict[str, Any]:
    """A WorkspaceStatusChange object; ``user_id``/``workspace_id`` only when included."""
    data: dict[str, Any] = {
        "id": str(change.id),
        "from_status_key": str(change.from_status_key),
        "to_status_key": str(change.to_status_key),
        "from_color": color_for(change.from_status_key) or "grey",
        "to_color": color_for(change.to_status_key) or "grey",
        "from_message": statuses.get(change.from_status_key, ""),
        "to_message": statuses.get(change.to_status_key, ""),
        "created_at": change.created_at,
        "updated_at": change.created_at,
    }
    if user:
        data["user_id"] = str(change.user_id)
    if workspace:
        data["workspace_id"] = str(change.workspace_id)
    return data


def envelope(
    key: str, object_id: int, record: dict[str, Any], extra: Iterable[tuple[str, Any]] = ()
) -> dict[str, Any]:
    """The success envelope around one primary object, plus included top-level maps."""
    body: dict[str, Any] = {
        "count": 1,
        "results": [{"key": key, "id": str(object_id)}],
        key: {str(object_id): record},
    }
    for name, value in extra:
        body[name] = value
    body["meta"] = META
    return body


def error_body(errors: Iterable[ApiError]) -> bytes:
    """An error envelope, serialised."""
    return dumps({"errors": [error.to_json() for error in errors]}).encode()


def system_error(message: str) -> bytes:
    """A serialised envelope with one ``system`` error."""
    return error_body([ApiError(ErrorType.SYSTEM, message)])


def list_envelope(
    key: str,
    records: list[tuple[int, dict[str, Any]]],
    extra: Iterable[tuple[str, Any]],
    *,
    count: int,
    page_number: int,
    page_size: int,
) -> dict[str, Any]:
    """The success envelope of an index route: one page of primary objects, in order.

    ``count`` is every match, over all pages; ``meta`` says which page this is.
    """
    body: dict[str, Any] = {
        "count": count,
        "results": [{"key": key, "id": str(object_id)} for object_id, _ in records],
        key: {str(object_id): record for object_id, record in records},
    }
    for name, value in extra:
        body[name] = value
    body["meta"] = {
        "count": count,
        "page_count": -(-count // page_size),
        "page_number": page_number,
        "page_size": page_size,
    }
    return body
