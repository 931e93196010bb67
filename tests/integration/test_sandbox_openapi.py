"""Every kind of sandbox response validates against the schema openapi-subset.yml declares.

The document is OpenAPI 3.2, so no document loader is used: the declared response schema is
validated with OAS31Validator, with the document's ``components`` placed beside it so that
``#/components/...`` references resolve. 429 is not declared per operation and is checked
against ``components/schemas/Errors``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import jsonschema
import pytest
from openapi_schema_validator import OAS31Validator

from worker.sandbox import FaultConfig
from worker.sandbox.config import ApplyThenFailMode
from worker.sandbox.testing import SandboxHandle

from ..kantata_api import spec

SandboxFactory = Callable[..., AbstractAsyncContextManager[SandboxHandle]]
AUTH = {"Authorization": "Bearer sandbox-token"}
WORKSPACE = "/workspaces/{id}"
STATUS_CHANGES = "/workspace_status_changes"


def validator(schema: dict[str, Any]) -> OAS31Validator:
    root = {**schema, "components": spec()["components"]}
    return OAS31Validator(root, format_checker=OAS31Validator.FORMAT_CHECKER)


def declared_schema(path: str, method: str, status: int) -> dict[str, Any]:
    if status == 429 or status in (500, 502):
        return {"$ref": "#/components/schemas/Errors"}
    responses = spec()["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not declare {status}"
    schema: dict[str, Any] = responses[str(status)]["content"]["application/json"]["schema"]
    return schema


def check(path: str, method: str, status: int, body: Any) -> None:
    validator(declared_schema(path, method, status)).validate(body)
    if status != 200:
        assert set(body) == {"errors"}
        assert body["errors"]
        for error in body["errors"]:
            assert error["type"] in {"validation", "oauth", "system"}
            assert isinstance(error["message"], str) and error["message"]
            assert set(error) <= {"type", "message", "field"}
            assert (error["type"] == "validation") == ("field" in error) or status == 400
        return
    assert body["count"] == 1
    assert body["meta"] == {"count": 1, "page_count": 1, "page_number": 1, "page_size": 20}
    [result] = body["results"]
    assert isinstance(result["id"], str)
    primary = body[result["key"]]
    assert list(primary) == [result["id"]]
    assert primary[result["id"]]["id"] == result["id"]
    for workspace in body.get("workspaces", {}).values():
        assert set(workspace["status"]) == {"color", "key", "message"}
        assert workspace["status"]["key"].isdigit()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def exchange(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, Any]:
    async with http.request(
        method, url, json=body, data=data, headers=AUTH if headers is None else headers
    ) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


def test_the_validator_rejects_a_wrong_shape() -> None:
    schema = declared_schema(WORKSPACE, "get", 200)
    bad = {"workspaces": {"1": {"id": "1", "status": {"key": 310}}}}
    with pytest.raises(jsonschema.ValidationError):
        validator(schema).validate(bad)
    with pytest.raises(jsonschema.ValidationError):
        validator(declared_schema(WORKSPACE, "get", 401)).validate({"errors": [{"type": 1}]})
    with pytest.raises(jsonschema.ValidationError):
        validator(schema).validate({"workspaces": {"1": {"created_at": "yesterday"}}})


def _put(**fields: Any) -> dict[str, Any]:
    return {"workspace": fields}


def _post(workspace_id: Any, key: Any) -> dict[str, Any]:
    return {"workspace_status_change": {"workspace_id": workspace_id, "to_status_key": key}}


FULL_UPDATE = _put(
    title="Full",
    description="All documented fields",
    start_date="2026-03-01",
    due_date="2026-09-30",
    access_level="admins",
    stage="estimate",
    price=1200,
    budgeted=True,
    currency="USD",
    archived=False,
    consultant_role_name="Provider",
    client_role_name="Client",
    rate_card_id=3,
    exclude_archived_stories_percent_complete=True,
    revenue_recognition_method_id="1:percent_complete",
    revenue_recognition_method_name="% Complete (Hours)",
    tasks_default_non_billable=False,
    stories_are_fixed_fee_by_default=False,
    expenses_in_burn_rate=True,
    posts_require_privacy_decision=False,
    status_key=320,
    invoice_preference={"project_code": "P-1", "purchase_order": "PO-9"},
    approver_id=5,
    workspace_group_ids=[1, 2],
    project_template_start_date="2026-03-02",
    project_template_checklist_as_todos=True,
    project_template_assignment_mappings=[{"resource_id": 1, "user_id": 2, "role_id": 3}],
    project_template_weekends_as_workdays=False,
    project_template_create_unnamed_resources=False,
    project_template_distribute_hours=True,
    project_tracker_template_id=8,
    primary_workspace_group_id=2,
    target_margin=30,
    external_reference={
        "service_name": "jira",
        "service_model": "issue",
        "service_model_ref": "K-1",
    },
    account_color_id=4,
    external_link={"text": "Board", "url": "https://example.invalid/board"},
    account_insights_mapping_ids=[6],
    custom_fields=[{"custom_field_id": 7, "value": "foo"}],
    require_notes_on_time_entries=True,
    time_trackable=True,
    project_template_before_story_id=11,
    change_orders_enabled=False,
    task_status_set_id=12,
)


async def test_workspace_responses(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    seen: set[tuple[str, int]] = set()
    async with sandbox_factory(forbidden=frozenset({9}), rate_limit=1000) as sb:
        url = f"{sb.url}/workspaces"
        cases: list[tuple[str, str, Any, dict[str, str] | None, int]] = [
            ("get", f"{url}/1", None, None, 200),
            ("put", f"{url}/1", FULL_UPDATE, None, 200),
            ("put", f"{url}/1?include=custom_field_values", _put(title="again"), None, 200),
            ("get", f"{url}/1?include=custom_field_values,unknown", None, None, 200),
            ("get", f"{url}/1", None, {}, 401),
            ("put", f"{url}/1", _put(title="x"), {"Authorization": "Bearer nope"}, 401),
            ("get", f"{url}/404", None, None, 404),
            ("put", f"{url}/404", _put(title="x"), None, 404),
            ("put", f"{url}/1", {"title": "x"}, None, 400),
            ("put", f"{url}/9", _put(title="x"), None, 403),
            ("put", f"{url}/1", _put(title="", due_date="2026-02-31", stage="x"), None, 422),
            ("put", f"{url}/1", _put(status_key=999), None, 422),
        ]
        for method, target, body, headers, expected in cases:
            status, data = await exchange(http, method, target, body, headers)
            assert status == expected, (method, target, data)
            check(WORKSPACE, method, status, data)
            seen.add((method, status))

        sb.set_faults(
            FaultConfig(apply_then_fail_rate=1.0, apply_then_fail_mode=ApplyThenFailMode.ERROR)
        )
        for method, body in (("get", None), ("put", _put(title="fails"))):
            status, data = await exchange(http, method, f"{url}/2", body)
            assert status == 503
            check(WORKSPACE, method, status, data)
        sb.set_faults(FaultConfig(error_rate=1.0, seed=5))
        for _ in range(6):
            status, data = await exchange(http, "get", f"{url}/2")
            check(WORKSPACE, "get", status, data)
        sb.set_faults(FaultConfig(burst_429_rate=1.0))
        status, data = await exchange(http, "put", f"{url}/2", _put(title="x"))
        assert status == 429
        check(WORKSPACE, "put", status, data)
    assert {("get", 200), ("put", 200), ("get", 401), ("put", 400), ("put", 403)} <= seen
    assert {("get", 404), ("put", 404), ("put", 422)} <= seen


async def test_include_custom_field_values_shape(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    url = f"{sandbox.url}/workspaces/3?include=custom_field_values"
    status, data = await exchange(http, "put", url, FULL_UPDATE)
    assert status == 200
    check(WORKSPACE, "put", status, data)
    [value] = data["custom_field_values"].values()
    assert value["custom_field_id"] == "7" and value["value"] == "foo"
    assert data["workspaces"]["3"]["custom_field_value_ids"] == [value["id"]]
    assert data["workspaces"]["3"]["status"] == {
        "color": "green",
        "key": "320",
        "message": "In Review",
    }


async def test_status_change_responses(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(forbidden=frozenset({9}), rate_limit=1000, retry_after=2) as sb:
        url = f"{sb.url}/workspace_status_changes"
        cases: list[tuple[str, Any, dict[str, str] | None, int]] = [
            (url, _post(1, 310), None, 200),
            (f"{url}?include=user,workspace", _post(1, 600), None, 200),
            (f"{url}?include=user", _post(2, 600), None, 200),
            (url, _post(1, 310), {}, 401),
            (url, {"workspace_id": 1}, None, 400),
            (url, _post(1, None), None, 400),
            (url, _post(9, 310), None, 403),
            (url, _post(404, 310), None, 404),
            (url, _post(1, 600), None, 422),
            (url, _post(1, 999), None, 422),
            (url, _post(1, "310"), None, 422),
        ]
        for target, body, headers, expected in cases:
            status, data = await exchange(http, "post", target, body, headers)
            assert status == expected, (target, body, data)
            check(STATUS_CHANGES, "post", status, data)
        status, data = await exchange(http, "post", url, data=b"nope", headers={**AUTH})
        assert status == 400
        check(STATUS_CHANGES, "post", status, data)

        sb.set_faults(
            FaultConfig(apply_then_fail_rate=1.0, apply_then_fail_mode=ApplyThenFailMode.ERROR)
        )
        status, data = await exchange(http, "post", url, _post(3, 310))
        assert status == 503
        check(STATUS_CHANGES, "post", status, data)
        sb.set_faults(FaultConfig(burst_429_rate=1.0))
        status, data = await exchange(http, "post", url, _post(4, 310))
        assert status == 429
        check(STATUS_CHANGES, "post", status, data)


async def test_status_change_include_shapes(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    url = f"{sandbox.url}/workspace_status_changes?include=user,workspace"
    status, data = await exchange(http, "post", url, _post(5, 410))
    assert status == 200
    check(STATUS_CHANGES, "post", status, data)
    [change] = data["workspace_status_changes"].values()
    assert change["from_status_key"] == "100" and change["to_status_key"] == "410"
    assert (change["from_color"], change["to_color"]) == ("grey", "yellow")
    assert change["workspace_id"] == "5"
    assert set(data["users"]) == {change["user_id"]}
    assert set(data["workspaces"]) == {"5"}


WORKSPACES = "/workspaces"


def check_index(status: int, body: Any) -> None:
    """An index answer: the declared schema, and for 200 the envelope of a page."""
    validator(declared_schema(WORKSPACES, "get", status)).validate(body)
    if status != 200:
        assert set(body) == {"errors"} and body["errors"]
        return
    ids = [result["id"] for result in body["results"]]
    assert all(result["key"] == "workspaces" for result in body["results"])
    assert list(body["workspaces"]) == ids
    meta = body["meta"]
    assert meta["count"] == body["count"] >= len(ids)
    assert len(ids) <= meta["page_size"] <= 200
    assert meta["page_count"] == -(-body["count"] // meta["page_size"])
    for ident, workspace in body["workspaces"].items():
        assert workspace["id"] == ident
        assert workspace["status"]["key"].isdigit()
        for value_id in workspace.get("custom_field_value_ids", []):
            assert body["custom_field_values"][value_id]["subject_id"] == int(ident)


async def test_index_responses(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(rate_limit=1000) as sb:
        url = f"{sb.url}/workspaces"
        status, _ = await exchange(http, "put", f"{url}/2", FULL_UPDATE)
        assert status == 200
        cases: list[tuple[str, dict[str, str] | None, int]] = [
            (f"{url}?only=1,2,3,999&per_page=200", None, 200),
            (f"{url}?only=2&include=custom_field_values&include_archived=true", None, 200),
            (f"{url}?only=999", None, 200),
            (f"{url}?per_page=7&page=3", None, 200),
            (f"{url}?per_page=1000", None, 200),
            (f"{url}.json?only=1", None, 200),
            (f"{url}?only=1", {}, 401),
            (f"{url}?per_page=abc", None, 400),
        ]
        for target, headers, expected in cases:
            status, data = await exchange(http, "get", target, headers=headers)
            assert status == expected, (target, data)
            check_index(status, data)
        sb.set_faults(FaultConfig(error_rate=1.0, seed=5))
        for _ in range(4):
            status, data = await exchange(http, "get", f"{url}?only=1")
            assert status >= 500
            check_index(status, data)
        sb.set_faults(FaultConfig(burst_429_rate=1.0))
        status, data = await exchange(http, "get", f"{url}?only=1")
        assert status == 429
        check_index(status, data)
