"""The client's bulk read and request builders: the URL it builds, the answer it parses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aioresponses import aioresponses
from yarl import URL

from worker.client import (
    KantataClient,
    list_request,
    read_back_request,
    status_change_request,
    update_request,
    workspace_page,
)
from worker.exceptions import ProtocolError

from .test_client import Mocked

BASE = "https://api.example.test/api/v1"
TOKEN = "tok-S3cr3t-0123456789abcdef"


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with Mocked() as m:
        yield m


@pytest.fixture
async def client() -> AsyncIterator[KantataClient]:
    async with KantataClient(BASE, TOKEN, timeout=5.0) as c:
        yield c


@pytest.mark.parametrize(
    ("kwargs", "target"),
    [
        (
            {"include_custom_fields": False, "include_archived": True},
            "/workspaces?only=3,1,2&per_page=200&include_archived=true",
        ),
        (
            {"include_custom_fields": True, "include_archived": True, "page": 2},
            "/workspaces?only=3,1,2&per_page=200&page=2&include_archived=true"
            "&include=custom_field_values",
        ),
        (
            {"include_custom_fields": False, "include_archived": False},
            "/workspaces?only=3,1,2&per_page=200",
        ),
    ],
)
async def test_list_workspaces_sends_the_documented_query(
    mocked: aioresponses, client: KantataClient, kwargs: dict[str, Any], target: str
) -> None:
    mocked.get(BASE + target, status=200, payload={"count": 0, "results": [], "meta": {}})
    answer = await client.list_workspaces([3, 1, 2], **kwargs)
    assert answer.status == 200
    [(method, url)] = list(mocked.requests)  # aioresponses sorts the query
    expected = URL(BASE + target)
    assert (method, url.path, dict(url.query)) == ("GET", expected.path, dict(expected.query))
    assert list_request([3, 1, 2], **kwargs).target == target
    [call] = mocked.requests[(method, url)]
    assert call.kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("ids", [[], list(range(1, 202))])
async def test_list_workspaces_takes_1_to_200_ids(client: KantataClient, ids: list[int]) -> None:
    with pytest.raises(ValueError, match="between 1 and 200"):
        await client.list_workspaces(ids)


async def test_the_writes_go_where_their_request_specs_say(
    mocked: aioresponses, client: KantataClient
) -> None:
    # ``plan`` prints the specs; the client must send exactly these (same target, same body).
    specs = [
        (update_request(42, {"title": "A"}), client.update_workspace(42, {"title": "A"})),
        (status_change_request(42, 310), client.change_status(42, 310)),
        (read_back_request(42), client.get_workspace(42)),
    ]
    for spec, _ in specs:
        mocked.add(BASE + spec.target, spec.method, status=200, payload={"results": []})
    for spec, call in specs:
        await call
        [sent] = mocked.requests[(spec.method, URL(BASE + spec.target))]
        data = sent.kwargs.get("data")
        body = None if data is None else json.loads(data._value)
        assert body == spec.body


def listed(
    *workspaces: dict[str, Any], values: dict[str, Any] | None = None, **meta: int
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "count": len(workspaces),
        "results": [{"key": "workspaces", "id": w["id"]} for w in workspaces],
        "workspaces": {w["id"]: w for w in workspaces},
        "meta": {
            "count": len(workspaces),
            "page_count": 1,
            "page_number": 1,
            "page_size": 200,
            **meta,
        },
    }
    if values is not None:
        body["custom_field_values"] = values
    return body


def test_workspace_page_maps_workspaces_and_their_custom_field_values() -> None:
    body = listed(
        {"id": "5", "title": "A", "custom_field_value_ids": ["11", "12"]},
        {"id": "6", "title": "B", "custom_field_value_ids": []},
        {"id": "7", "title": "C"},
        values={
            "11": {"id": "11", "custom_field_id": "7", "value": "x", "type": "string"},
            "12": {"id": "12", "custom_field_id": "9", "value": [998, "USD"], "type": "currency"},
            "13": {"id": "13", "custom_field_id": "7", "value": "other workspace's"},
        },
        page_count=3,
        page_number=2,
    )
    page = workspace_page(body)
    assert set(page.workspaces) == {5, 6, 7}
    assert page.workspaces[5]["title"] == "A"
    assert {k: v["value"] for k, v in page.custom_field_values[5].items()} == {
        7: "x",
        9: [998, "USD"],
    }
    assert page.custom_field_values[6] == {}
    assert 7 not in page.custom_field_values  # no ids: the include was not honoured
    assert (page.page_number, page.page_count, page.more) == (2, 3, True)


def test_an_empty_page_and_a_page_without_meta() -> None:
    empty = workspace_page({"count": 0, "results": [], "meta": {"page_count": 0, "page_number": 1}})
    assert (empty.workspaces, empty.more) == ({}, False)
    bare = workspace_page(
        {"results": [{"key": "workspaces", "id": "1"}], "workspaces": {"1": {"id": "1"}}}
    )
    assert (set(bare.workspaces), bare.page_number, bare.more) == ({1}, 1, False)


@pytest.mark.parametrize(
    "body",
    [
        None,
        {"count": 1},
        {"results": [{"key": "workspaces", "id": "5"}], "workspaces": {}},
        {"results": [{"key": "workspaces", "id": "x"}], "workspaces": {"x": {"id": "x"}}},
    ],
)
def test_a_body_that_is_not_the_envelope_is_a_protocol_error(body: Any) -> None:
    with pytest.raises(ProtocolError):
        workspace_page(body)
