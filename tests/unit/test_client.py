"""KantataClient against aioresponses: requests sent, answers mapped, failures translated."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp.payload import BytesPayload
from aioresponses import aioresponses
from yarl import URL

from worker import __version__
from worker.client import KantataClient, primary_objects, status_key_of, workspace_snapshot
from worker.exceptions import ConfigError, ProtocolError, TransportError
from worker.outcomes import ApiResponse

BASE = "https://api.example.test/api/v1"
TOKEN = "tok-S3cr3t-0123456789abcdef"
SLASHED = "tok/S3cr3t+0123456789=="
"""A token with a solidus, which some JSON encoders escape as ``\\/``."""
SLASHED_JSON = "echo " + SLASHED.replace("/", "\\/") + " echo"
UNICODE_JSON = "echo " + "".join(f"\\u{ord(c):04x}" for c in SLASHED) + " echo"
WS_URL = f"{BASE}/workspaces/42"
STATUS_URL = f"{BASE}/workspace_status_changes?include=workspace"


class _Response(aiohttp.ClientResponse):
    """aioresponses 0.7.9 predates aiohttp 3.14's required ``stream_writer`` argument."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class Mocked(aioresponses):
    def add(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _Response)
        super().add(*args, **kwargs)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with Mocked() as m:
        yield m


@pytest.fixture
async def client() -> AsyncIterator[KantataClient]:
    async with KantataClient(BASE + "/", TOKEN, timeout=5.0) as c:
        yield c


def only_call(m: aioresponses, method: str, url: str) -> dict[str, Any]:
    assert list(m.requests) == [(method, URL(url))]
    [call] = m.requests[(method, URL(url))]
    return call.kwargs


def sent_json(kwargs: dict[str, Any]) -> bytes:
    """The body a request carried; it must be declared as JSON."""
    payload = kwargs["data"]
    assert isinstance(payload, BytesPayload)
    assert payload.content_type == "application/json"
    return payload.decode().encode("utf-8")


def assert_common_headers(kwargs: dict[str, Any]) -> None:
    headers = kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["User-Agent"].startswith(f"kantata-sync/{__version__}")
    assert headers["Accept"] == "application/json"
    assert kwargs["allow_redirects"] is False
    assert kwargs["timeout"].total == 5.0


# --------------------------------------------------------------------------- requests


async def test_update_workspace_request(mocked: aioresponses, client: KantataClient) -> None:
    mocked.put(WS_URL, status=200, payload={"count": 1})
    fields = {"title": "T", "custom_fields": [{"custom_field_id": 7, "value": "x"}]}
    answer = await client.update_workspace(42, fields)
    kwargs = only_call(mocked, "PUT", WS_URL)
    assert json.loads(sent_json(kwargs)) == {"workspace": fields}
    assert kwargs.get("params") is None
    assert_common_headers(kwargs)
    assert answer.status == 200


async def test_change_status_request(mocked: aioresponses, client: KantataClient) -> None:
    mocked.post(STATUS_URL, status=200, payload={"count": 1})
    await client.change_status(42, 310)
    kwargs = only_call(mocked, "POST", STATUS_URL)
    assert json.loads(sent_json(kwargs)) == {
        "workspace_status_change": {"workspace_id": 42, "to_status_key": 310}
    }
    assert_common_headers(kwargs)


async def test_get_workspace_request(mocked: aioresponses, client: KantataClient) -> None:
    mocked.get(WS_URL, status=200, payload={"count": 1})
    await client.get_workspace(42)
    kwargs = only_call(mocked, "GET", WS_URL)
    assert kwargs["data"] is None
    assert "Content-Type" not in kwargs["headers"]
    assert_common_headers(kwargs)


@pytest.mark.parametrize(
    ("fields", "sent"),
    [
        pytest.param(
            {"title": "Ünïcode ✓"},
            b'{"workspace":{"title":"\xc3\x9cn\xc3\xafcode \xe2\x9c\x93"}}',
            id="utf-8",
        ),
        pytest.param(
            {"title": "\ud800"}, b'{"workspace": {"title": "\\ud800"}}', id="lone-surrogate"
        ),
    ],
)
async def test_request_bodies_are_json_whatever_the_text(
    mocked: aioresponses, client: KantataClient, fields: dict[str, Any], sent: bytes
) -> None:
    mocked.put(WS_URL, status=200, payload={"count": 1})
    await client.update_workspace(42, fields)
    kwargs = only_call(mocked, "PUT", WS_URL)
    assert sent_json(kwargs) == sent
    assert json.loads(sent) == {"workspace": fields}


async def test_outside_context_manager_refuses() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await KantataClient(BASE, TOKEN, timeout=1).get_workspace(1)


async def test_given_session_is_used_and_not_closed(mocked: aioresponses) -> None:
    mocked.get(WS_URL, status=200, payload={})
    async with aiohttp.ClientSession() as session:
        async with KantataClient(BASE, TOKEN, timeout=1, session=session) as c:
            assert (await c.get_workspace(42)).status == 200
        assert not session.closed


async def test_own_session_closed_on_exit() -> None:
    client = KantataClient(BASE, TOKEN, timeout=1)
    async with client:
        pass
    with pytest.raises(RuntimeError):
        await client.get_workspace(1)


# --------------------------------------------------------------------------- answers

ANSWERS = [
    # status, body kwargs, headers, expected body, request_id, retry_after
    pytest.param(
        200,
        {"payload": {"count": 1, "results": []}},
        {"X-Request-Id": "req-1"},
        {"count": 1, "results": []},
        "req-1",
        None,
        id="200",
    ),
    pytest.param(204, {"body": b""}, {}, None, None, None, id="204-empty"),
    pytest.param(
        302,
        {"body": b""},
        {"Location": "https://elsewhere/"},
        None,
        None,
        None,
        id="302-not-followed",
    ),
    pytest.param(
        400,
        {"payload": {"errors": [{"type": "validation", "message": "bad"}]}},
        {},
        {"errors": [{"type": "validation", "message": "bad"}]},
        None,
        None,
        id="400",
    ),
    pytest.param(
        401,
        {"payload": {"errors": [{"type": "oauth", "message": "no"}]}},
        {},
        {"errors": [{"type": "oauth", "message": "no"}]},
        None,
        None,
        id="401",
    ),
    pytest.param(403, {"payload": {}}, {}, {}, None, None, id="403"),
    pytest.param(404, {"body": b"Not Found"}, {}, None, None, None, id="404-text"),
    pytest.param(
        422,
        {"payload": {"errors": []}},
        {"X-Request-Id": "abc"},
        {"errors": []},
        "abc",
        None,
        id="422",
    ),
    pytest.param(429, {"body": b""}, {"Retry-After": "7"}, None, None, 7.0, id="429-retry-after"),
    pytest.param(
        429,
        {"body": b""},
        {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
        None,
        None,
        0.0,
        id="429-retry-after-past-date-is-0",
    ),
    pytest.param(500, {"body": b"<html>oops</html>"}, {}, None, None, None, id="500-html"),
    pytest.param(
        503,
        {"payload": {"errors": [{"type": "system", "message": "down"}]}},
        {"Retry-After": "2.5", "X-Request-Id": "r9"},
        {"errors": [{"type": "system", "message": "down"}]},
        "r9",
        2.5,
        id="503",
    ),
    pytest.param(200, {"body": b"[1, 2]"}, {}, None, None, None, id="json-array-is-none"),
    pytest.param(200, {"body": b"\xff\xfe\x00"}, {}, None, None, None, id="binary-garbage"),
    pytest.param(200, {"body": b'{"a":'}, {}, None, None, None, id="truncated-json"),
    pytest.param(
        422,
        {"body": b'{"errors": [{"message": "bad \\ud800"}]}'},
        {},
        {"errors": [{"message": "bad \ud800"}]},
        None,
        None,
        id="lone-surrogate-escape",
    ),
]


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected", "request_id", "retry_after"), ANSWERS
)
async def test_answers(
    mocked: aioresponses,
    client: KantataClient,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
    expected: Any,
    request_id: str | None,
    retry_after: float | None,
) -> None:
    mocked.put(WS_URL, status=status, headers=headers, **body)
    answer = await client.update_workspace(42, {"title": "x"})
    assert isinstance(answer, ApiResponse)
    assert (answer.status, answer.body, answer.request_id, answer.retry_after) == (
        status,
        expected,
        request_id,
        retry_after,
    )
    assert answer.duration_ms >= 0


async def test_status_change_answer(mocked: aioresponses, client: KantataClient) -> None:
    body = {
        "count": 1,
        "results": [{"key": "workspace_status_changes", "id": "5"}],
        "workspace_status_changes": {"5": {"id": "5", "workspace_id": "42"}},
        "workspaces": {"42": {"id": "42", "status": {"key": 310}, "updated_at": "t"}},
    }
    mocked.post(STATUS_URL, status=200, payload=body)
    answer = await client.change_status(42, 310)
    assert answer.body == body
    assert status_key_of(answer.body, 42) == 310


# --------------------------------------------------------------------------- no answer

FAILURES = [
    pytest.param(TimeoutError(), "timeout", id="timeout"),  # asyncio.TimeoutError in 3.11
    pytest.param(aiohttp.ServerTimeoutError("read timeout"), "timeout", id="server-timeout"),
    pytest.param(aiohttp.ClientConnectionError("refused"), "connection", id="connection"),
    pytest.param(aiohttp.ServerDisconnectedError(), "connection", id="disconnected"),
    pytest.param(aiohttp.ClientOSError(104, "Connection reset by peer"), "connection", id="reset"),
    pytest.param(aiohttp.ClientPayloadError("cut"), "connection", id="payload-cut"),
    pytest.param(aiohttp.ClientError("other"), "connection", id="other-client-error"),
]


@pytest.mark.parametrize(("exc", "kind"), FAILURES)
@pytest.mark.parametrize("call", ["update", "status", "get"])
async def test_no_answer(
    mocked: aioresponses, client: KantataClient, exc: BaseException, kind: str, call: str
) -> None:
    if call == "update":
        mocked.put(WS_URL, exception=exc)
        awaitable = client.update_workspace(42, {"title": "x"})
        prefix = "PUT /workspaces/42"
    elif call == "status":
        mocked.post(STATUS_URL, exception=exc)
        awaitable = client.change_status(42, 310)
        prefix = "POST /workspace_status_changes"
    else:
        mocked.get(WS_URL, exception=exc)
        awaitable = client.get_workspace(42)
        prefix = "GET /workspaces/42"
    with pytest.raises(TransportError) as info:
        await awaitable
    assert info.value.kind == kind
    assert str(info.value).startswith(prefix)
    assert info.value.__cause__ is exc
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)
    assert "\n" not in str(info.value)


async def test_connection_error_message_is_bounded(
    mocked: aioresponses, client: KantataClient
) -> None:
    mocked.get(WS_URL, exception=aiohttp.ClientConnectionError("x\n" * 1000))
    with pytest.raises(TransportError) as info:
        await client.get_workspace(42)
    assert len(str(info.value)) < 300
    assert "\n" not in str(info.value)


async def test_token_not_in_repr(client: KantataClient) -> None:
    assert TOKEN not in repr(client)
    assert TOKEN not in str(client)
    assert BASE in repr(client)


async def test_token_not_in_unmatched_request_error(client: KantataClient) -> None:
    # Nothing registered: aioresponses raises a connection error naming the request.
    with Mocked(), pytest.raises(TransportError) as info:
        await client.get_workspace(42)
    assert info.value.kind == "connection"
    assert TOKEN not in str(info.value)


# --------------------------------------------------------------------------- envelope

ENVELOPE = {
    "count": 2,
    "results": [{"key": "workspaces", "id": "10"}, {"key": "users", "id": 7}],
    "workspaces": {"10": {"id": "10", "title": "A"}, "11": {"id": "11"}},
    "users": {"7": {"id": "7", "name": "U"}},
    "meta": {"count": 2},
}


def test_primary_objects_in_results_order() -> None:
    assert primary_objects(ENVELOPE) == [
        {"id": "10", "title": "A"},
        {"id": "7", "name": "U"},
    ]


def test_primary_objects_empty_results() -> None:
    assert primary_objects({"count": 0, "results": []}) == []


BROKEN = [
    pytest.param(None, "no results array", id="none"),
    pytest.param({}, "no results array", id="missing-results"),
    pytest.param({"results": {"key": "workspaces"}}, "no results array", id="results-object"),
    pytest.param({"results": ["workspaces/10"]}, "not an object", id="entry-string"),
    pytest.param({"results": [{"key": "workspaces", "id": "10"}]}, "lacks", id="table-missing"),
    pytest.param(
        {"results": [{"key": "workspaces", "id": "10"}], "workspaces": {"11": {}}},
        "lacks",
        id="id-missing",
    ),
    pytest.param(
        {"results": [{"key": "workspaces", "id": "10"}], "workspaces": []}, "lacks", id="table-list"
    ),
    pytest.param({"results": [{"id": "10"}], "workspaces": {"10": {}}}, "lacks", id="no-key"),
    pytest.param({"results": [{"key": 5, "id": "10"}]}, "lacks", id="key-not-str"),
]


@pytest.mark.parametrize(("body", "fragment"), BROKEN)
def test_primary_objects_broken(body: Any, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        primary_objects(body)


SNAPSHOTS = [
    pytest.param(
        {
            "workspaces": {
                "42": {
                    "status": {"key": 310, "message": "Active"},
                    "updated_at": "2026-01-01T00:00:00Z",
                    "title": "x",
                }
            }
        },
        {"status": {"key": 310, "message": "Active"}, "updated_at": "2026-01-01T00:00:00Z"},
        310,
        id="full",
    ),
    pytest.param({"workspaces": {"42": {"title": "x"}}}, {}, None, id="no-status"),
    pytest.param({"workspaces": {"42": {"status": "310"}}}, {}, None, id="status-not-object"),
    pytest.param(
        {"workspaces": {"42": {"status": {"key": "610"}}}},
        {"status": {"key": "610"}},
        610,
        id="string-key",
    ),
    pytest.param(
        {"workspaces": {"42": {"status": {"key": "abc"}}}},
        {"status": {"key": "abc"}},
        None,
        id="garbage-key",
    ),
    pytest.param({"workspaces": {"42": {"status": {}}}}, {"status": {}}, None, id="no-key"),
    pytest.param({"workspaces": {"42": {"updated_at": None}}}, {}, None, id="null-updated-at"),
    pytest.param({"workspaces": {"43": {"status": {"key": 1}}}}, None, None, id="other-workspace"),
    pytest.param({"workspaces": []}, None, None, id="workspaces-list"),
    pytest.param({"workspaces": {"42": "x"}}, None, None, id="workspace-not-object"),
    pytest.param({}, None, None, id="no-workspaces"),
    pytest.param(None, None, None, id="none"),
    pytest.param(
        {"workspaces": {"42": {"status": {"key": float("inf")}}}},
        {"status": {}},
        None,
        id="infinite-key-1e999",
    ),
    pytest.param(
        {"workspaces": {"42": {"status": {"key": float("nan")}}}}, {"status": {}}, None, id="nan"
    ),
    pytest.param(
        {"workspaces": {"42": {"status": {"key": 310.0}}}}, {"status": {"key": 310.0}}, 310, id="f"
    ),
    pytest.param(
        {"workspaces": {"42": {"status": {"key": 310.5}}}},
        {"status": {"key": 310.5}},
        None,
        id="fractional-key",
    ),
    pytest.param(
        {"workspaces": {"42": {"status": {"key": True}}}}, {"status": {"key": True}}, None, id="b"
    ),
    pytest.param(
        {"workspaces": {"42": {"status": {"key": "9" * 5000}}}},
        {"status": {"key": "9" * 1970 + "… (truncated, 5000 characters)"}},
        None,
        id="endless-string-key",
    ),
    pytest.param(
        {"workspaces": {"42": {"status": {"key": 310, "deep": [[[["x"]]]], "o": {"a": 1}}}}},
        {"status": {"key": 310}},
        310,
        id="nested-members-dropped",
    ),
    pytest.param(
        {"workspaces": {"42": {"status": {"key": 310}, "updated_at": {"a": [1]}}}},
        {"status": {"key": 310}},
        310,
        id="nested-updated-at-dropped",
    ),
]


@pytest.mark.parametrize(("body", "snapshot", "key"), SNAPSHOTS)
def test_workspace_snapshot_and_status_key(body: Any, snapshot: Any, key: int | None) -> None:
    assert workspace_snapshot(body, 42) == snapshot
    assert status_key_of(body, 42) == key


def test_primary_objects_with_a_deeply_nested_id() -> None:
    ident: Any = "10"
    for _ in range(1020):  # what orjson still parses; repr() of it would recurse too deep
        ident = [ident]
    body = {"results": [{"key": "workspaces", "id": ident}], "workspaces": {"10": {}}}
    with pytest.raises(ProtocolError, match="lacks"):
        primary_objects(body)


def test_primary_objects_with_an_endless_key() -> None:
    body = {"results": [{"key": "k" * 100_000, "id": "1"}]}
    with pytest.raises(ProtocolError) as info:
        primary_objects(body)
    assert len(str(info.value)) < 300


# --------------------------------------------------------------------------- odd bodies

ODD_BODIES = [
    pytest.param(b"[" * 100_000, id="100000-levels-of-list"),
    pytest.param(b'{"a":' * 100_000, id="100000-levels-of-object"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="100000-levels-closed"),
    pytest.param(b'{"a": 1e999, "c": ' + b"[" * 5000 + b"]" * 5000 + b"}", id="5000-levels-inside"),
    pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
    pytest.param(b'{"n": ' + b"9" * 5000 + b"}", id="int-past-python-digit-limit"),
]


@pytest.mark.parametrize("raw", ODD_BODIES)
def test_odd_bodies_are_no_body(raw: bytes) -> None:
    # Over a real socket: tests/integration/test_hostile_server.py.
    assert KantataClient(BASE, TOKEN, timeout=5.0)._parse(raw) is None


def test_non_finite_numbers_parse_and_are_never_a_status_key() -> None:
    raw = b'{"workspaces": {"42": {"status": {"key": NaN, "color": "x"}}}, "n": -1e999}'
    body = KantataClient(BASE, TOKEN, timeout=5.0)._parse(raw)
    assert body is not None and body["n"] == -math.inf
    assert status_key_of(body, 42) is None
    assert workspace_snapshot(body, 42) == {"status": {"color": "x"}}


async def test_infinite_status_key_reads_back_as_none(
    mocked: aioresponses, client: KantataClient
) -> None:
    raw = b'{"workspaces": {"42": {"status": {"key": 1e999}, "updated_at": 1e999}}}'
    mocked.get(WS_URL, status=200, body=raw)
    answer = await client.get_workspace(42)
    assert answer.body is not None
    assert status_key_of(answer.body, 42) is None
    assert workspace_snapshot(answer.body, 42) == {"status": {}}


# --------------------------------------------------------------------------- the token


@pytest.mark.parametrize(
    "token",
    ["tok\r\nX-Evil: 1", "tok en-0123456789", "tok\x00-0123456789", "", "\r\n", "tök-0123456789"],
)
def test_a_token_no_header_can_carry_is_refused(token: str) -> None:
    with pytest.raises(ConfigError, match=r"^token: ") as info:
        KantataClient(BASE, token, timeout=5.0)
    assert token.strip() == "" or token not in str(info.value)


async def test_surrounding_whitespace_of_the_token_is_not_sent(mocked: aioresponses) -> None:
    mocked.get(WS_URL, status=200, payload={})
    async with KantataClient(BASE, f" {TOKEN}\r\n", timeout=5.0) as c:
        await c.get_workspace(42)
    assert only_call(mocked, "GET", WS_URL)["headers"]["Authorization"] == f"Bearer {TOKEN}"


ECHOES = [
    # raw body, what the error message reads once masked
    pytest.param(
        f'{{"errors": [{{"message": "bad Authorization: Bearer {SLASHED}"}}]}}'.encode(),
        "bad Authorization: Bearer [REDACTED]",
        id="raw",
    ),
    pytest.param(
        f'{{"errors": [{{"message": "{SLASHED_JSON}"}}]}}'.encode(),
        "echo [REDACTED] echo",
        id="solidus-escaped",
    ),
    pytest.param(
        f'{{"errors": [{{"message": "{UNICODE_JSON}"}}]}}'.encode(),
        "echo [REDACTED] echo",
        id="unicode-escaped",
    ),
    pytest.param(
        f'{{"errors": [{{"message": "x", "{TOKEN}": ["{TOKEN}"]}}], "t": "{TOKEN}"}}'.encode(),
        "x",
        id="in-keys-and-lists",
    ),
]


@pytest.mark.parametrize(("raw", "message"), ECHOES)
async def test_an_echoed_token_is_masked(mocked: aioresponses, raw: bytes, message: str) -> None:
    mocked.put(WS_URL, status=422, body=raw, headers={"X-Request-Id": f"r-{SLASHED}"})
    async with KantataClient(BASE, SLASHED, timeout=5.0) as c:
        answer = await c.update_workspace(42, {"title": "x"})
    assert answer.body is not None
    assert answer.body["errors"][0]["message"] == message
    assert answer.request_id == "r-[REDACTED]"
    assert SLASHED not in json.dumps(answer.body) and SLASHED not in repr(answer)


def test_a_short_token_is_not_masked_everywhere() -> None:
    client = KantataClient(BASE, "abc", timeout=5.0)
    assert client._parse(b'{"message": "abcabc"}') == {"message": "abcabc"}
