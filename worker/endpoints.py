"""What kantata-sync asks of Kantata OX, as it goes on the wire (pure).

A :class:`RequestSpec` is one request: method, target after the base URL (query included) and
JSON body. ``plan`` prints these, and :class:`~worker.client.KantataClient` sends exactly these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .changes import JSONObject

PUT_WORKSPACE = "PUT /workspaces/{id}"
POST_STATUS_CHANGE = "POST /workspace_status_changes"
GET_WORKSPACE = "GET /workspaces/{id}"
GET_WORKSPACES = "GET /workspaces"
MAX_PER_PAGE = 200
"""The most workspaces the index route returns in one page (Kantata's documented maximum)."""


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """A request as it goes on the wire: method, target after the base URL (query included),
    JSON body. ``plan`` prints these; the client sends exactly these."""

    endpoint: str
    method: str
    target: str
    body: JSONObject | None = None


def update_request(workspace_id: int, fields: JSONObject) -> RequestSpec:
    """``PUT /workspaces/{id}`` with ``{"workspace": fields}``."""
    return RequestSpec(PUT_WORKSPACE, "PUT", f"/workspaces/{workspace_id}", {"workspace": fields})


def status_change_request(workspace_id: int, to_status_key: int) -> RequestSpec:
    """``POST /workspace_status_changes``, including the workspace to read its new state."""
    body = {
        "workspace_status_change": {"workspace_id": workspace_id, "to_status_key": to_status_key}
    }
    return RequestSpec(
        POST_STATUS_CHANGE, "POST", "/workspace_status_changes?include=workspace", body
    )


def read_back_request(workspace_id: int) -> RequestSpec:
    """``GET /workspaces/{id}``: the read-back that proves a status is in place."""
    return RequestSpec(GET_WORKSPACE, "GET", f"/workspaces/{workspace_id}")


def list_query(
    ids: Sequence[int],
    *,
    include_custom_fields: bool,
    include_archived: bool,
    page: int = 1,
    per_page: int = MAX_PER_PAGE,
) -> list[tuple[str, str]]:
    """The query of ``GET /workspaces`` for these IDs (at most :data:`MAX_PER_PAGE`)."""
    if not ids or len(ids) > MAX_PER_PAGE:
        raise ValueError(f"between 1 and {MAX_PER_PAGE} workspace IDs a request, not {len(ids)}")
    query = [("only", ",".join(str(int(i)) for i in ids)), ("per_page", str(per_page))]
    if page != 1:
        query.append(("page", str(page)))
    if include_archived:
        query.append(("include_archived", "true"))
    if include_custom_fields:
        query.append(("include", "custom_field_values"))
    return query


def list_request(
    ids: Sequence[int],
    *,
    include_custom_fields: bool,
    include_archived: bool,
    page: int = 1,
    per_page: int = MAX_PER_PAGE,
) -> RequestSpec:
    """``GET /workspaces?only=…``: up to 200 workspaces by ID; unknown IDs are skipped."""
    query = list_query(
        ids,
        include_custom_fields=include_custom_fields,
        include_archived=include_archived,
        page=page,
        per_page=per_page,
    )
    target = "/workspaces?" + "&".join(f"{k}={v}" for k, v in query)
    return RequestSpec(GET_WORKSPACES, "GET", target)
