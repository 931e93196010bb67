"""The sandbox's index route ``GET /workspaces``, its request log, and out-of-band edits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import pytest

from worker.sandbox import FaultConfig
from worker.sandbox.state import Route
from worker.sandbox.testing import SandboxHandle

SandboxFactory = Callable[..., AbstractAsyncContextManager[SandboxHandle]]
AUTH = {"Authorization": "Bearer sandbox-token"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.get(url, headers=AUTH if headers is None else headers) as response:
        return response.status, await response.json()


async def call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, url, json=body) as response:
        return response.status, await response.json()


async def test_only_returns_the_known_ids_and_skips_the_rest(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    status, data = await get(http, f"{sandbox.url}/workspaces?only=3,5,9999,x,5&per_page=200")
    assert status == 200
    assert {r["id"] for r in data["results"]} == {"3", "5"}
    assert all(r["key"] == "workspaces" for r in data["results"])
    assert set(data["workspaces"]) == {"3", "5"}
    assert data["workspaces"]["3"]["title"] == "Project 3"
    assert data["count"] == 2
    assert data["meta"] == {"count": 2, "page_count": 1, "page_number": 1, "page_size": 200}
    assert "custom_field_values" not in data
    # Nothing known at all: an empty page, not a 404.
    status, data = await get(http, f"{sandbox.url}/workspaces?only=9998,9999")
    assert (status, data["count"], data["results"]) == (200, 0, [])


async def test_pages_per_page_capped_at_200_newest_first(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(workspaces=450) as sb:
        status, _ = await call(http, "PUT", f"{sb.url}/workspaces/7", {"workspace": {"title": "x"}})
        assert status == 401  # no token: the index route's neighbours need one too
        async with http.put(
            f"{sb.url}/workspaces/7", json={"workspace": {"title": "x"}}, headers=AUTH
        ) as response:
            assert response.status == 200
        _, first = await get(http, f"{sb.url}/workspaces?per_page=500")
        assert first["meta"] == {"count": 450, "page_count": 3, "page_number": 1, "page_size": 200}
        assert len(first["results"]) == 200
        assert first["results"][0]["id"] == "7"  # updated last: first by updated_at desc
        _, default = await get(http, f"{sb.url}/workspaces")
        assert default["meta"]["page_size"] == 20 and len(default["results"]) == 20
        seen: list[str] = []
        for page in (1, 2, 3, 4):
            _, data = await get(http, f"{sb.url}/workspaces?per_page=200&page={page}")
            assert data["meta"]["page_number"] == page
            seen += [r["id"] for r in data["results"]]
        assert len(seen) == len(set(seen)) == 450
        status, data = await get(http, f"{sb.url}/workspaces?page=0")
        assert status == 400 and data["errors"][0]["field"] == "page"


async def test_archived_projects_only_with_include_archived(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    status, _ = await call(
        http,
        "POST",
        f"{sandbox.origin}/__sandbox__/workspaces/4/edit",
        {"workspace": {"archived": True}},
    )
    assert status == 200
    _, data = await get(http, f"{sandbox.url}/workspaces?only=3,4")
    assert set(data["workspaces"]) == {"3"}
    _, data = await get(http, f"{sandbox.url}/workspaces?only=3,4&include_archived=true")
    assert set(data["workspaces"]) == {"3", "4"}
    assert data["workspaces"]["4"]["archived"] is True


async def test_include_custom_field_values_for_every_listed_workspace(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    for workspace, value in ((2, "a"), (3, "b")):
        async with http.put(
            f"{sandbox.url}/workspaces/{workspace}",
            json={"workspace": {"custom_fields": [{"custom_field_id": 7, "value": value}]}},
            headers=AUTH,
        ) as response:
            assert response.status == 200
    _, data = await get(http, f"{sandbox.url}/workspaces?only=2,3,4&include=custom_field_values")
    values = data["custom_field_values"]
    by_workspace = {
        ws: [values[i]["value"] for i in data["workspaces"][ws]["custom_field_value_ids"]]
        for ws in ("2", "3", "4")
    }
    assert by_workspace == {"2": ["a"], "3": ["b"], "4": []}
    assert {v["subject_id"] for v in values.values()} == {2, 3}


async def test_auth_rate_limit_and_faults_apply_to_the_index_route(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(rate_limit=2, retry_after=1) as sb:
        url = f"{sb.url}/workspaces?only=1"
        status, data = await get(http, url, headers={"Authorization": "Bearer wrong"})
        assert status == 401 and data["errors"][0]["type"] == "oauth"
        status, _ = await get(http, url)
        assert status == 200
        async with http.get(url, headers=AUTH) as response:
            assert response.status == 429 and response.headers["Retry-After"] == "1"
        assert sb.state.stats.count(Route.GET_WORKSPACES) == 3
        assert sb.state.stats.count(Route.GET_WORKSPACES, 429) == 1
    async with sandbox_factory() as sb:
        sb.set_faults(FaultConfig(error_rate=1.0, seed=1))
        status, data = await get(http, f"{sb.url}/workspaces?only=1")
        assert status in (500, 502, 503) and data["errors"][0]["type"] == "system"
        assert sb.state.stats.faults["error"] == 1


async def test_out_of_band_edits_and_deletions(
    sandbox: SandboxHandle, http: aiohttp.ClientSession
) -> None:
    inspect = f"{sandbox.origin}/__sandbox__/workspaces"
    before = sandbox.state.workspaces[6].updated_at
    status, data = await call(
        http,
        "POST",
        f"{inspect}/6/edit",
        {
            "workspace": {
                "price": 900,
                "status_key": 410,
                "custom_fields": [{"custom_field_id": 3, "value": "ui"}],
            }
        },
    )
    assert status == 200
    assert (data["price"], data["status_key"], data["custom_field_values"]) == (
        "900",
        410,
        {"3": "ui"},
    )
    workspace = sandbox.state.workspaces[6]
    assert workspace.updated_at > before and workspace.put_count == 0
    assert sandbox.state.stats.count() == 0  # not an API request
    status, data = await call(
        http, "POST", f"{inspect}/6/edit", {"workspace": {"due_date": "2026-02-31"}}
    )
    assert status == 422 and data["errors"][0]["field"] == "due_date"
    status, _ = await call(http, "POST", f"{inspect}/6/edit", {"title": "no wrapper"})
    assert status == 400
    status, _ = await call(http, "DELETE", f"{inspect}/6")
    assert status == 200 and 6 not in sandbox.state.workspaces
    status, _ = await call(http, "POST", f"{inspect}/6/edit", {"workspace": {"title": "x"}})
    assert status == 404
    _, data = await get(http, f"{sandbox.url}/workspaces?only=6,7")
    assert set(data["workspaces"]) == {"7"}


async def test_the_request_log_keeps_each_request_and_its_answer(
    sandbox_factory: SandboxFactory, http: aiohttp.ClientSession
) -> None:
    async with sandbox_factory(request_log=2) as sb:
        body = {"workspace": {"title": "A"}}
        async with http.put(f"{sb.url}/workspaces/1?include=x", json=body, headers=AUTH):
            pass
        await get(http, f"{sb.url}/workspaces?only=1,2")
        await get(http, f"{sb.url}/workspaces/1", headers={})
        status, data = await call(http, "GET", f"{sb.origin}/__sandbox__/requests")
        assert status == 200
        assert data["requests"] == [  # the latest two
            {"method": "GET", "target": "/workspaces?only=1,2", "body": None, "status": 200},
            {"method": "GET", "target": "/workspaces/1", "body": None, "status": 401},
        ]
        await call(http, "POST", f"{sb.origin}/__sandbox__/reset_stats")
        assert not sb.state.requests
    async with sandbox_factory(request_log=0) as sb:
        await get(http, f"{sb.url}/workspaces/1")
        assert not sb.state.requests
