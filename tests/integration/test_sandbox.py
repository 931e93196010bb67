"""The sandbox over real sockets: routes, envelopes, auth, validation, limits, faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import pytest

from worker.sandbox import FaultConfig, SandboxConfig
from worker.sandbox.config import ApplyThenFailMode
from worker.sandbox.faults import FaultKind
from worker.sandbox.testing import SandboxHandle

SandboxFactory = Callable[..., AbstractAsyncContextManager[SandboxHandle]]
TOKEN = "sandbox-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
META = {"count": 1, "page_count": 1, "page_number": 1, "page_size": 20}
SAME_STATUS = {
    "errors": [
        {
            "type": "validation",
            "message": "Project already has specified status",
            "field": "to_status_key",
        }
    ]
}
UNAUTHORIZED = {"errors": [{"type": "oauth", "message": "Invalid OAuth 2 Request"}]}
RATE_LIMITED = {"errors": [{"type": "system", "message": "Rate limit exceeded"}]}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Reply:
    """A finished response: status, headers and the parsed JSON body."""

    def __init__(self, status: int, headers: Any, body: Any) -> None:
        self.status = status
        self.headers = headers
        self.body = body


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    json: Any = None,
    data: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    client_timeout: float = 10.0,
) -> Reply:
    async with http.request(
        method,
        url,
        json=json,
        data=data,
        headers=AUTH if headers is None else headers,
        timeout=aiohttp.ClientTimeout(total=client_timeout),
    ) as response:
        return Reply(response.status, response.headers, await response.json(content_type=None))


async def put(http: aiohttp.ClientSession, sb: SandboxHandle, wid: object, **fields: Any) -> Reply:
    return await call(http, "PUT", f"{sb.url}/workspaces/{wid}", json={"workspace": fields})


async def post_status(
    http: aiohttp.ClientSession, sb: SandboxHandle, wid: object, key: object, include: str = ""
) -> Reply:
    query = f"?include={include}" if include else ""
    body = {"workspace_status_change": {"workspace_id": wid, "to_status_key": key}}
    return await call(http, "POST", f"{sb.url}/workspace_status_changes{query}", json=body)


async def get(
    http: aiohttp.ClientSession, sb: SandboxHandle, wid: object, query: str = ""
) -> Reply:
    return await call(http, "GET", f"{sb.url}/workspaces/{wid}{query}")


def only_workspace(reply: Reply, wid: int) -> dict[str, Any]:
    assert reply.status == 200, reply.body
    assert reply.body["results"] == [{"key": "workspaces", "id": str(wid)}]
    assert reply.body["count"] == 1
    assert reply.body["meta"] == META
    workspace: dict[str, Any] = reply.body["workspaces"][str(wid)]
    return workspace


# --- reading and writing workspaces ---------------------------------------------------------


async def test_get_returns_seeded_workspace(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    workspace = only_workspace(await get(http, sandbox, 7), 7)
    assert workspace["id"] == "7"
    assert workspace["title"] == "Project 7"
    assert workspace["status"] == {"color": "grey", "key": "100", "message": "Not Started"}
    for name in (
        "description",
        "start_date",
        "due_date",
        "access_level",
        "stage",
        "price",
        "budgeted",
        "currency",
        "archived",
        "created_at",
        "updated_at",
    ):
        assert name in workspace
    assert set(only_workspace(await get(http, sandbox, 200), 200)) == set(workspace)
    assert (await get(http, sandbox, 201)).status == 404


async def test_seeding_follows_config(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(workspaces=3, initial_status=310) as sb:
        workspace = only_workspace(await get(http, sb, 3), 3)
        assert workspace["status"] == {"color": "green", "key": "310", "message": "Active"}
        assert (await get(http, sb, 4)).status == 404
        assert sorted(sb.state.workspaces) == [1, 2, 3]


async def test_put_changes_what_get_returns(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    before = only_workspace(await get(http, sandbox, 3), 3)
    fields = {
        "title": "Renamed",
        "description": "New description",
        "start_date": "2026-02-01",
        "due_date": "2026-12-01",
        "access_level": "open",
        "stage": "estimate",
        "price": 5000,
        "budgeted": False,
        "currency": "EUR",
        "archived": False,
        "consultant_role_name": "Us",
        "client_role_name": "Them",
        "time_trackable": True,
        "target_margin": 25,
        "rate_card_id": 4,
        "approver_id": 12,
        "workspace_group_ids": [1, 2],
        "invoice_preference": {"project_code": "X-1"},
        "external_link": {"text": "Jira", "url": "https://example.invalid"},
    }
    put_reply = only_workspace(await put(http, sandbox, 3, **fields), 3)
    after = only_workspace(await get(http, sandbox, 3), 3)
    assert put_reply == after
    expected = {**fields, "price": "5000", "approver_id": "12", "workspace_group_ids": ["1", "2"]}
    for name, value in expected.items():
        assert after[name] == value, name
    assert after["price_in_cents"] == 500_000
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] > before["updated_at"]


async def test_updated_at_changes_on_every_applied_put(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    stamps = [
        only_workspace(await put(http, sandbox, 4, title="Same"), 4)["updated_at"] for _ in range(5)
    ]
    assert len(set(stamps)) == 5
    assert stamps == sorted(stamps)


async def test_unknown_workspace_fields_are_ignored(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    workspace = only_workspace(await put(http, sandbox, 5, title="Kept", no_such_field=1), 5)
    assert workspace["title"] == "Kept"
    assert "no_such_field" not in workspace
    assert "no_such_field" not in sandbox.state.workspaces[5].fields


async def test_expenses_in_burn_rate_sets_both_parts(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    workspace = only_workspace(await put(http, sandbox, 6, expenses_in_burn_rate=True), 6)
    assert workspace["actual_fees_includes_expenses"] is True
    assert workspace["actual_fees_includes_additional_line_items"] is True
    workspace = only_workspace(await put(http, sandbox, 6, actual_fees_includes_expenses=False), 6)
    assert workspace["expenses_in_burn_rate"] is False


async def test_custom_fields_merge_by_id(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    await put(
        http,
        sandbox,
        8,
        custom_fields=[
            {"custom_field_id": 7, "value": "foo"},
            {"custom_field_id": 9, "value": "bar"},
        ],
    )
    reply = await put(http, sandbox, 8, custom_fields=[{"custom_field_id": 7, "value": "baz"}])
    assert "custom_field_values" not in reply.body
    assert "custom_field_value_ids" not in only_workspace(reply, 8)

    reply = await get(http, sandbox, 8, "?include=custom_field_values")
    workspace = only_workspace(reply, 8)
    values = reply.body["custom_field_values"]
    assert sorted(workspace["custom_field_value_ids"]) == sorted(values)
    by_field = {v["custom_field_id"]: v["value"] for v in values.values()}
    assert by_field == {"7": "baz", "9": "bar"}
    assert all(v["subject_id"] == 8 and v["subject_type"] == "Workspace" for v in values.values())

    await put(http, sandbox, 8, custom_fields=[{"custom_field_id": 9, "value": None}])
    inspected = await call(http, "GET", f"{sandbox.origin}/__sandbox__/workspaces/8")
    assert inspected.body["custom_field_values"] == {"7": "baz"}
    reply = await put(http, sandbox, 8, title="x", custom_fields=[])
    assert reply.status == 200


async def test_put_include_custom_field_values_and_unknown_includes(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    url = f"{sandbox.url}/workspaces/9?include=custom_field_values,bogus,creator"
    body = {"workspace": {"custom_fields": [{"custom_field_id": 3, "value": "v"}]}}
    reply = await call(http, "PUT", url, json=body)
    workspace = only_workspace(reply, 9)
    [value] = reply.body["custom_field_values"].values()
    assert workspace["custom_field_value_ids"] == [value["id"]]
    assert "bogus" not in reply.body


async def test_put_status_key_changes_status_without_history(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    workspace = only_workspace(await put(http, sandbox, 10, status_key=310), 10)
    assert workspace["status"] == {"color": "green", "key": "310", "message": "Active"}
    again = only_workspace(await put(http, sandbox, 10, status_key=310), 10)
    assert again["status"]["key"] == "310"
    assert only_workspace(await get(http, sandbox, 10), 10)["status"]["key"] == "310"
    assert sandbox.state.status_changes(10) == []
    assert sandbox.state.history == []


async def test_archived_workspace_needs_include_archived(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    only_workspace(await put(http, sandbox, 11, archived=True), 11)
    missing = await get(http, sandbox, 11)
    assert missing.status == 404
    assert missing.body["errors"][0]["type"] == "system"
    assert only_workspace(await get(http, sandbox, 11, "?include_archived=true"), 11)["archived"]
    only_workspace(await put(http, sandbox, 11, archived=False), 11)
    only_workspace(await get(http, sandbox, 11), 11)


# --- status changes -------------------------------------------------------------------------


async def test_status_change_records_history_in_order(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    for key in (310, 410, 600):
        reply = await post_status(http, sandbox, 12, key)
        assert reply.status == 200, reply.body
    await post_status(http, sandbox, 13, 500)

    workspace = only_workspace(await get(http, sandbox, 12), 12)
    assert workspace["status"] == {"color": "blue", "key": "600", "message": "Completed"}
    changes = sandbox.state.status_changes(12)
    assert [(c.from_status_key, c.to_status_key) for c in changes] == [
        (100, 310),
        (310, 410),
        (410, 600),
    ]
    per_workspace = await call(
        http, "GET", f"{sandbox.origin}/__sandbox__/workspaces/12/status_changes"
    )
    assert per_workspace.body["workspace_id"] == 12
    assert [c["to_status_key"] for c in per_workspace.body["status_changes"]] == [310, 410, 600]
    history = await call(http, "GET", f"{sandbox.origin}/__sandbox__/history")
    assert [(c["workspace_id"], c["to_status_key"]) for c in history.body["status_changes"]] == [
        (12, 310),
        (12, 410),
        (12, 600),
        (13, 500),
    ]


async def test_status_change_envelope(sandbox: SandboxHandle, http: aiohttp.ClientSession) -> None:
    reply = await post_status(http, sandbox, 14, 310)
    assert reply.status == 200
    [result] = reply.body["results"]
    assert result["key"] == "workspace_status_changes"
    assert isinstance(result["id"], str)
    record = reply.body["workspace_status_changes"][result["id"]]
    assert record["from_status_key"] == "100"
    assert record["to_status_key"] == "310"
    assert (record["from_color"], record["to_color"]) == ("grey", "green")
    assert (record["from_message"], record["to_message"]) == ("Not Started", "Active")
    assert record["created_at"] and record["updated_at"]
    assert "user_id" not in record and "workspace_id" not in record
    assert "users" not in reply.body and "workspaces" not in reply.body
    assert reply.body["meta"] == META


async def test_status_change_includes(sandbox: SandboxHandle, http: aiohttp.ClientSession) -> None:
    reply = await post_status(http, sandbox, 15, 310, include="user,workspace,nonsense")
    assert reply.status == 200
    [result] = reply.body["results"]
    record = reply.body["workspace_status_changes"][result["id"]]
    assert record["workspace_id"] == "15"
    assert reply.body["users"][record["user_id"]]["id"] == record["user_id"]
    assert reply.body["workspaces"]["15"]["status"]["key"] == "310"
    assert "nonsense" not in reply.body

    reply = await post_status(http, sandbox, 16, 310, include="user")
    record = reply.body["workspace_status_changes"][reply.body["results"][0]["id"]]
    assert "user_id" in record and "workspace_id" not in record
    assert "workspaces" not in reply.body


async def test_same_status_is_rejected(sandbox: SandboxHandle, http: aiohttp.ClientSession) -> None:
    reply = await post_status(http, sandbox, 17, 100)
    assert (reply.status, reply.body) == (422, SAME_STATUS)
    assert (await post_status(http, sandbox, 17, 310)).status == 200
    reply = await post_status(http, sandbox, 17, 310)
    assert (reply.status, reply.body) == (422, SAME_STATUS)
    assert len(sandbox.state.status_changes(17)) == 1


# --- validation -----------------------------------------------------------------------------

PUT_422 = [
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": None}, "title"),
    ({"access_level": "everyone"}, "access_level"),
    ({"stage": "done"}, "stage"),
    ({"start_date": "2026-13-01"}, "start_date"),
    ({"due_date": "01/12/2026"}, "due_date"),
    ({"due_date": "2026-02-30"}, "due_date"),
    ({"due_date": "2026-12-01T00:00:00Z"}, "due_date"),
    ({"status_key": "310"}, "status_key"),
    ({"status_key": 3.5}, "status_key"),
    ({"status_key": 999}, "status_key"),
    ({"status_key": 330}, "status_key"),
    ({"budgeted": "true"}, "budgeted"),
    ({"archived": 1}, "archived"),
    ({"price": "100"}, "price"),
    ({"price": True}, "price"),
    ({"target_margin": 1.5}, "target_margin"),
    ({"workspace_group_ids": [1, "2"]}, "workspace_group_ids"),
    ({"description": 5}, "description"),
    ({"custom_fields": {"custom_field_id": 1}}, "custom_fields"),
    (
        {"custom_fields": [{"custom_field_id": "7", "value": "x"}]},
        "custom_fields[0].custom_field_id",
    ),
    ({"custom_fields": [{"custom_field_id": 7, "value": 3}]}, "custom_fields[0].value"),
    ({"external_reference": {"service_name": "jira"}}, "external_reference.service_model"),
]


@pytest.mark.parametrize(("fields", "field"), PUT_422)
async def test_put_validation_errors(
    sandbox: SandboxHandle, http: aiohttp.ClientSession, fields: dict[str, Any], field: str
) -> None:
    before = sandbox.state.workspaces[18].to_json()
    reply = await put(http, sandbox, 18, **fields)
    assert reply.status == 422, reply.body
    errors = reply.body["errors"]
    assert all(e["type"] == "validation" and e["message"] for e in errors)
    assert field in [e["field"] for e in errors]
    assert sandbox.state.workspaces[18].to_json() == before


async def test_put_reports_every_bad_field(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    reply = await put(http, sandbox, 18, title="", stage="x", due_date="soon", status_key=1)
    assert reply.status == 422
    assert sorted(e["field"] for e in reply.body["errors"]) == [
        "due_date",
        "stage",
        "status_key",
        "title",
    ]


@pytest.mark.parametrize(
    ("wid", "key", "status", "field"),
    [
        (19, "310", 422, "to_status_key"),
        (19, 31.0, 422, "to_status_key"),
        (19, 999, 422, "to_status_key"),
        ("19", 310, 422, "workspace_id"),
        (19, None, 400, "to_status_key"),
        (None, 310, 400, "workspace_id"),
    ],
)
async def test_post_validation_errors(
    sandbox: SandboxHandle,
    http: aiohttp.ClientSession,
    wid: object,
    key: object,
    status: int,
    field: str,
) -> None:
    reply = await post_status(http, sandbox, wid, key)
    assert reply.status == status, reply.body
    assert field in [e.get("field") for e in reply.body["errors"]]
    assert reply.body["errors"][0]["type"] == ("validation" if status == 422 else "system")
    assert sandbox.state.history == []


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("PUT", "/workspaces/20", b"not json"),
        ("PUT", "/workspaces/20", b""),
        ("PUT", "/workspaces/20", b"[1, 2]"),
        ("PUT", "/workspaces/20", b'{"title": "no wrapper"}'),
        ("PUT", "/workspaces/20", b'{"workspace": "title"}'),
        ("PUT", "/workspaces/20", b'{"workspace": {}}'),
        ("POST", "/workspace_status_changes", b"{"),
        ("POST", "/workspace_status_changes", b'"text"'),
        ("POST", "/workspace_status_changes", b'{"workspace_id": 20, "to_status_key": 310}'),
        (
            "POST",
            "/workspace_status_changes",
            b'{"workspace_status_change": {"to_status_key": 310}}',
        ),
        ("POST", "/workspace_status_changes", b'{"workspace_status_change": {"workspace_id": 20}}'),
    ],
)
async def test_malformed_bodies_are_400(
    sandbox: SandboxHandle, http: aiohttp.ClientSession, method: str, path: str, data: bytes
) -> None:
    reply = await call(
        http,
        method,
        f"{sandbox.url}{path}",
        data=data,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert reply.status == 400, reply.body
    [error] = reply.body["errors"]
    assert error["type"] == "system" and error["message"]


# --- auth, permissions, lookups -------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}],
)
async def test_bad_tokens_are_401(
    sandbox: SandboxHandle, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    for method, path, body in (
        ("GET", "/workspaces/1", None),
        ("PUT", "/workspaces/1", {"workspace": {"title": "x"}}),
        (
            "POST",
            "/workspace_status_changes",
            {"workspace_status_change": {"workspace_id": 1, "to_status_key": 310}},
        ),
    ):
        reply = await call(http, method, f"{sandbox.url}{path}", json=body, headers=headers)
        assert (reply.status, reply.body) == (401, UNAUTHORIZED)
    assert sandbox.state.workspaces[1].put_count == 0


async def test_several_tokens_and_runtime_revocation(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(tokens=("alpha", "beta")) as sb:
        alpha = {"Authorization": "Bearer alpha"}
        beta = {"Authorization": "Bearer beta"}
        assert (await call(http, "GET", f"{sb.url}/workspaces/1", headers=alpha)).status == 200
        assert (await call(http, "GET", f"{sb.url}/workspaces/1", headers=AUTH)).status == 401
        revoke = await call(
            http,
            "POST",
            f"{sb.origin}/__sandbox__/tokens/revoke",
            json={"token": "alpha"},
            headers={},
        )
        assert revoke.body == {"token": "alpha", "revoked": True}
        reply = await call(http, "GET", f"{sb.url}/workspaces/1", headers=alpha)
        assert (reply.status, reply.body) == (401, UNAUTHORIZED)
        assert (await call(http, "GET", f"{sb.url}/workspaces/1", headers=beta)).status == 200
        await call(
            http,
            "POST",
            f"{sb.origin}/__sandbox__/tokens/restore",
            json={"token": "alpha"},
            headers={},
        )
        assert (await call(http, "GET", f"{sb.url}/workspaces/1", headers=alpha)).status == 200


async def test_forbidden_workspaces(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(forbidden=frozenset({4})) as sb:
        for reply in (await put(http, sb, 4, title="x"), await post_status(http, sb, 4, 310)):
            assert reply.status == 403
            [error] = reply.body["errors"]
            assert error["type"] == "system" and error["message"]
        assert only_workspace(await get(http, sb, 4), 4)["title"] == "Project 4"
        assert sb.state.history == []
        assert (await put(http, sb, 5, title="x")).status == 200


@pytest.mark.parametrize("wid", [0, 9999, "abc", -1])
async def test_unknown_workspaces_are_404(
    sandbox: SandboxHandle, http: aiohttp.ClientSession, wid: object
) -> None:
    replies = [await get(http, sandbox, wid), await put(http, sandbox, wid, title="x")]
    if isinstance(wid, int):
        replies.append(await post_status(http, sandbox, wid, 310))
    for reply in replies:
        assert reply.status == 404
        [error] = reply.body["errors"]
        assert error["type"] == "system" and error["message"]


async def test_unknown_api_paths_are_json_404(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    for method, path in (("GET", "/projects"), ("DELETE", "/workspaces/1"), ("GET", "/")):
        reply = await call(http, method, f"{sandbox.url}{path}")
        assert reply.status == 404
        assert reply.body["errors"][0]["type"] == "system"


async def test_every_response_has_a_unique_request_id(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    replies = [
        await get(http, sandbox, 1),
        await get(http, sandbox, 1),
        await put(http, sandbox, 1, title=""),
        await post_status(http, sandbox, 1, 100),
        await call(http, "GET", f"{sandbox.url}/workspaces/1", headers={}),
        await call(http, "GET", f"{sandbox.url}/nothing"),
        await call(http, "GET", f"{sandbox.origin}/__sandbox__/stats"),
    ]
    ids = [reply.headers["X-Request-Id"] for reply in replies]
    assert all(ids) and len(set(ids)) == len(ids)


# --- rate limit -----------------------------------------------------------------------------


async def _burst(http: aiohttp.ClientSession, sb: SandboxHandle, n: int) -> list[Reply]:
    return list(await asyncio.gather(*(get(http, sb, 1 + i % 5) for i in range(n))))


async def test_rate_limit_never_exceeded_under_a_burst(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(rate_limit=10) as sb:
        replies = await _burst(http, sb, 40)
        statuses = [r.status for r in replies]
        assert set(statuses) <= {200, 429}
        assert 1 <= statuses.count(200) <= 10
        assert statuses.count(429) >= 30
        for reply in replies:
            if reply.status == 429:
                assert reply.body == RATE_LIMITED
                assert "Retry-After" not in reply.headers
        stats = (await call(http, "GET", f"{sb.origin}/__sandbox__/stats")).body
        assert stats["max_accepted_per_second"] <= 10
        assert stats["max_received_per_second"] >= 40
        assert stats["total_429"] == statuses.count(429) == stats["rate_limited"]
        assert stats["rate_limit"] == 10


async def test_429_carries_retry_after_when_configured(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(rate_limit=2, retry_after=3) as sb:
        replies = await _burst(http, sb, 6)
        limited = [r for r in replies if r.status == 429]
        assert limited
        assert all(r.headers["Retry-After"] == "3" for r in limited)


async def test_inspection_routes_are_exempt_from_the_rate_limit(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(rate_limit=1) as sb:
        assert (await get(http, sb, 1)).status == 200
        for _ in range(5):
            assert (await call(http, "GET", f"{sb.origin}/__sandbox__/stats")).status == 200
        assert (await get(http, sb, 1)).status == 429


# --- faults ---------------------------------------------------------------------------------


async def test_error_faults_are_5xx(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(faults=FaultConfig(error_rate=1.0, seed=1)) as sb:
        replies = [await put(http, sb, 1, title="never") for _ in range(12)]
        assert {r.status for r in replies} <= {500, 502, 503}
        assert len({r.status for r in replies}) > 1
        assert all(r.body["errors"][0]["type"] == "system" for r in replies)
        assert sb.state.workspaces[1].put_count == 0
        assert sb.state.stats.faults[FaultKind.ERROR] == 12


async def test_latency_is_added(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(faults=FaultConfig(latency_ms=200)) as sb:
        started = time.monotonic()
        assert (await get(http, sb, 1)).status == 200
        assert time.monotonic() - started >= 0.19


async def test_hang_times_the_client_out_without_blocking_others(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(faults=FaultConfig(hang_rate=1.0, hang_seconds=2.0)) as sb:
        url = f"{sb.url}/workspaces/2"
        body = {"workspace": {"title": "late"}}
        hanging = asyncio.create_task(call(http, "PUT", url, json=body, client_timeout=0.3))
        for _ in range(1000):
            if sb.state.stats.faults[FaultKind.HANG]:
                break
            await asyncio.sleep(0.01)
        sb.set_faults(FaultConfig())
        assert (await get(http, sb, 2)).status == 200
        with pytest.raises(asyncio.TimeoutError):
            await hanging
        assert sb.state.workspaces[2].put_count == 0
        assert sb.state.stats.faults[FaultKind.HANG] == 1


async def test_drop_cuts_the_connection(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(faults=FaultConfig(drop_rate=1.0)) as sb:
        for _ in range(3):
            with pytest.raises(aiohttp.ClientError):
                await put(http, sb, 3, title="dropped")
        with pytest.raises(aiohttp.ClientError):
            await post_status(http, sb, 3, 310)
        assert sb.state.workspaces[3].put_count == 0
        assert sb.state.history == []
        assert sb.state.stats.count(status="dropped") == 4


async def test_apply_then_503(sandbox_factory: SandboxFactory, http: aiohttp.ClientSession) -> None:
    faults = FaultConfig(apply_then_fail_rate=1.0, apply_then_fail_mode=ApplyThenFailMode.ERROR)
    async with sandbox_factory(faults=faults) as sb:
        reply = await post_status(http, sb, 4, 310)
        assert reply.status == 503
        assert reply.body["errors"][0]["type"] == "system"
        assert (await put(http, sb, 4, title="applied")).status == 503
        sb.set_faults(FaultConfig())
        workspace = only_workspace(await get(http, sb, 4), 4)
        assert workspace["status"]["key"] == "310"
        assert workspace["title"] == "applied"
        retry = await post_status(http, sb, 4, 310)
        assert (retry.status, retry.body) == (422, SAME_STATUS)


async def test_apply_then_hang(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    faults = FaultConfig(
        apply_then_fail_rate=1.0, apply_then_fail_mode=ApplyThenFailMode.HANG, hang_seconds=2.0
    )
    async with sandbox_factory(faults=faults) as sb:
        with pytest.raises(asyncio.TimeoutError):
            await call(
                http,
                "POST",
                f"{sb.url}/workspace_status_changes",
                client_timeout=0.3,
                json={"workspace_status_change": {"workspace_id": 5, "to_status_key": 600}},
            )
        assert [c.to_status_key for c in sb.state.status_changes(5)] == [600]
        assert sb.state.workspaces[5].status_key == 600


async def test_apply_then_fail_passes_errors_through(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    faults = FaultConfig(apply_then_fail_rate=1.0, apply_then_fail_mode=ApplyThenFailMode.ERROR)
    async with sandbox_factory(faults=faults) as sb:
        assert (await post_status(http, sb, 4, 100)).body == SAME_STATUS


async def test_429_bursts(sandbox_factory: SandboxFactory, http: aiohttp.ClientSession) -> None:
    async with sandbox_factory(
        retry_after=1, faults=FaultConfig(burst_429_rate=1.0, burst_seconds=30)
    ) as sb:
        reply = await get(http, sb, 1)
        assert (reply.status, reply.body) == (429, RATE_LIMITED)
        assert reply.headers["Retry-After"] == "1"
        sb.set_faults(FaultConfig(burst_429_rate=0.0))
        assert (await get(http, sb, 1)).status == 200
        sb.set_faults(FaultConfig(burst_429_rate=0.5, burst_seconds=30, seed=3))
        statuses = [(await get(http, sb, 1)).status for _ in range(10)]
        first = statuses.index(429)
        assert set(statuses[first:]) == {429}
        assert sb.state.stats.faults[FaultKind.BURST_429] == 1 + len(statuses) - first


async def test_faults_are_deterministic_under_a_seed(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    faults = FaultConfig(
        error_rate=0.2,
        drop_rate=0.2,
        apply_then_fail_rate=0.2,
        apply_then_fail_mode=ApplyThenFailMode.ERROR,
        seed=42,
    )

    async def run() -> list[object]:
        outcomes: list[object] = []
        async with sandbox_factory(faults=faults) as sb:
            for n in range(30):
                try:
                    outcomes.append((await put(http, sb, 1 + n % 3, title=f"t{n}")).status)
                except aiohttp.ClientError:
                    outcomes.append("dropped")
        return outcomes

    first, second = await run(), await run()
    assert first == second
    assert {200, "dropped"} <= set(first)
    assert set(first) & {500, 502, 503}


async def test_faults_change_at_runtime_through_inspection(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    faults_url = f"{sandbox.origin}/__sandbox__/faults"
    reply = await call(http, "POST", faults_url, json={"error_rate": 1.0, "seed": 7}, headers={})
    assert reply.status == 200 and reply.body["error_rate"] == 1.0
    assert (await call(http, "GET", faults_url, headers={})).body == reply.body
    assert (await get(http, sandbox, 1)).status in {500, 502, 503}
    assert (await call(http, "GET", f"{sandbox.origin}/__sandbox__/stats")).status == 200
    assert (await call(http, "GET", f"{sandbox.url}/not_a_route")).status == 404
    assert (await call(http, "POST", faults_url, json={}, headers={})).status == 200
    assert (await get(http, sandbox, 1)).status == 200
    for bad in ({"error_rate": 2}, {"nope": 1}, {"seed": "x"}, [1]):
        assert (await call(http, "POST", faults_url, json=bad, headers={})).status == 400
    assert sandbox.faults.config == FaultConfig()


# --- inspection -----------------------------------------------------------------------------


async def test_inspection_is_off_by_default(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(SandboxConfig()) as sb:
        for method, path in (
            ("GET", "stats"),
            ("GET", "workspaces/1"),
            ("POST", "faults"),
            ("POST", "tokens/revoke"),
            ("GET", "history"),
        ):
            async with http.request(method, f"{sb.origin}/__sandbox__/{path}", json={}) as response:
                assert response.status == 404


async def test_inspection_workspace_view(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    await put(
        http,
        sandbox,
        21,
        title="Seen",
        status_key=410,
        custom_fields=[{"custom_field_id": 7, "value": "foo"}],
    )
    view = (await call(http, "GET", f"{sandbox.origin}/__sandbox__/workspaces/21")).body
    assert view["id"] == 21
    assert view["status_key"] == 410
    assert view["title"] == "Seen"
    assert view["custom_field_values"] == {"7": "foo"}
    assert view["put_count"] == 1
    assert view == sandbox.state.workspaces[21].to_json()
    missing = await call(http, "GET", f"{sandbox.origin}/__sandbox__/workspaces/999")
    assert missing.status == 404


async def test_stats_and_reset(sandbox: SandboxHandle, http: aiohttp.ClientSession) -> None:
    await get(http, sandbox, 1)
    await get(http, sandbox, 1)
    await put(http, sandbox, 1, title="")
    await post_status(http, sandbox, 1, 310)
    await call(http, "GET", f"{sandbox.url}/workspaces/1", headers={})
    stats = (await call(http, "GET", f"{sandbox.origin}/__sandbox__/stats")).body
    assert stats["requests"] == {
        "GET /workspaces/{id}": {"200": 2, "401": 1},
        "PUT /workspaces/{id}": {"422": 1},
        "POST /workspace_status_changes": {"200": 1},
    }
    assert stats["total"] == 5
    assert stats["total_429"] == 0
    assert 1 <= stats["max_accepted_per_second"] <= 5
    assert stats["max_received_per_second"] >= stats["max_accepted_per_second"]
    assert stats["elapsed_seconds"] >= 0
    assert stats == {
        **sandbox.state.stats.to_json(),
        "rate_limit": 0,
        "read_rate_limit": None,
        "elapsed_seconds": stats["elapsed_seconds"],
    }
    reset = (await call(http, "POST", f"{sandbox.origin}/__sandbox__/reset_stats")).body
    assert reset["requests"] == {} and reset["total"] == 0
    assert reset["max_accepted_per_second"] == 0
