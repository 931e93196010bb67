"""KantataClient against a deliberately odd server on a real socket (tests/hostile.py).

Every odd answer ends as an ApiResponse or a classified TransportError, never as an exception
from a parser; big answers are cut off at the cap with memory bounded; the token never comes
back in anything the client hands on.
"""

from __future__ import annotations

import json
import resource
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from tests.hostile import MIB, HostileServer, hostile_server
from tests.integration.pipeline_helpers import TOKEN as PIPELINE_TOKEN
from tests.integration.pipeline_helpers import all_rows, dispatcher_for, update
from worker.client import KantataClient, primary_objects, status_key_of, workspace_snapshot
from worker.exceptions import ProtocolError, TransportError, TransportKind
from worker.models import sync_attempts, sync_changes
from worker.outcomes import MAX_MESSAGE_CHARS, ApiResponse, Verdict, classify
from worker.store import Store

TOKEN = "tok/S3cr3t+hostile-0123456789=="
"""Has a solidus, which JSON encoders may escape as ``\\/``; the server echoes both forms."""
CAP = 4 * MIB
MEMORY_BOUND = 64 * MIB
"""Peak allocation growth allowed around one request (the body cap is 4 MiB)."""
T = TypeVar("T")


@pytest.fixture
async def server() -> AsyncIterator[HostileServer]:
    async with hostile_server() as s:
        yield s


@pytest.fixture
async def client(server: HostileServer) -> AsyncIterator[KantataClient]:
    async with KantataClient(server.url, TOKEN, timeout=60.0, max_body_bytes=CAP) as c:
        yield c


async def peak_growth(
    label: str, call: Callable[[], Awaitable[T]]
) -> tuple[T | BaseException, int]:
    """Run ``call``; its result (or exception) and the peak Python allocation growth during it."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            outcome: T | BaseException = await call()
        except Exception as exc:
            outcome = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    growth = peak - before
    print(
        f"\n[memory] {label}: tracemalloc peak growth {growth / MIB:.1f} MiB; "
        f"ru_maxrss {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB"
    )
    return outcome, growth


def assert_no_token(*values: Any) -> None:
    for value in values:
        text = value if isinstance(value, str) else json.dumps(value, default=repr)
        assert TOKEN not in text
        assert TOKEN.replace("/", "\\/") not in text


# --------------------------------------------------------------------------- odd JSON


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"[" * 100_000, id="100000-open-lists"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="100000-closed-lists"),
        pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, id="100000-objects"),
        pytest.param(b'{"workspaces": {"12": ' + b"[" * 5000 + b"]" * 5000 + b"}}", id="inner"),
    ],
)
@pytest.mark.parametrize("status", [200, 422, 503])
async def test_deeply_nested_json_is_no_body(
    server: HostileServer, client: KantataClient, raw: bytes, status: int
) -> None:
    server.reply(status, raw)
    answer = await client.get_workspace(12)
    assert isinstance(answer, ApiResponse)
    assert (answer.status, answer.body) == (status, None)
    assert status_key_of(answer.body, 12) is None
    verdict = classify(answer, status_change=True)
    expected = {200: Verdict.SUCCESS, 422: Verdict.PERMANENT, 503: Verdict.RETRY}[status]
    assert verdict.verdict is expected
    if status != 200:
        assert verdict.error_message == f"HTTP {status}"


async def test_infinite_status_key_in_a_read_back(
    server: HostileServer, client: KantataClient
) -> None:
    server.reply(
        200,
        b'{"count": 1, "results": [{"key": "workspaces", "id": "12"}], "workspaces": '
        b'{"12": {"id": "12", "status": {"key": 1e999, "color": "green"}, "updated_at": NaN}}}',
    )
    answer = await client.get_workspace(12)
    assert answer.status == 200 and answer.body is not None
    assert status_key_of(answer.body, 12) is None
    assert workspace_snapshot(answer.body, 12) == {"status": {"color": "green"}}
    assert primary_objects(answer.body)[0]["id"] == "12"


async def test_deeply_nested_result_id_is_a_protocol_error(
    server: HostileServer, client: KantataClient
) -> None:
    ident = b"[" * 1020 + b'"12"' + b"]" * 1020  # orjson parses it; repr() would not
    server.reply(
        200, b'{"results": [{"key": "workspaces", "id": ' + ident + b'}], "workspaces": {}}'
    )
    answer = await client.update_workspace(12, {"title": "x"})
    with pytest.raises(ProtocolError, match="lacks"):
        primary_objects(answer.body)


# --------------------------------------------------------------------------- size caps


@pytest.mark.parametrize("declare_length", [False, True], ids=["chunked", "content-length"])
async def test_a_400_mb_answer_is_cut_off_at_the_cap(
    server: HostileServer, client: KantataClient, declare_length: bool
) -> None:
    server.stream(400 * MIB, declare_length=declare_length)
    outcome, growth = await peak_growth(
        f"400 MB body ({'Content-Length' if declare_length else 'chunked'})",
        lambda: client.update_workspace(12, {"title": "x"}),
    )
    assert isinstance(outcome, TransportError)
    assert outcome.kind == TransportKind.TOO_LARGE == "too_large"
    assert str(outcome) == f"PUT /workspaces/12: response body over {CAP} bytes"
    assert growth < MEMORY_BOUND
    [sent] = server.sent
    assert not sent.finished
    assert sent.bytes < 100 * MIB, "the client read on instead of hanging up"
    verdict = classify(outcome, status_change=False)
    assert (verdict.verdict, verdict.error_type) == (Verdict.RETRY, "too_large")
    # The connection was dropped, not reused half-read: the next request gets its own answer.
    server.reply(200, b'{"count": 0, "results": []}')
    assert (await client.get_workspace(12)).body == {"count": 0, "results": []}


async def test_an_answer_at_the_cap_is_read_whole(
    server: HostileServer, client: KantataClient
) -> None:
    server.stream(CAP)
    answer = await client.get_workspace(12)
    assert answer.body is not None and len(answer.body["x"]) == CAP - 9
    server.stream(CAP + 1)
    with pytest.raises(TransportError) as info:
        await client.get_workspace(12)
    assert info.value.kind == "too_large"


@pytest.mark.parametrize("declare_length", [False, True], ids=["chunked", "content-length"])
async def test_a_gzip_bomb_is_cut_off_at_the_cap(
    server: HostileServer, client: KantataClient, declare_length: bool
) -> None:
    # ~1 KB on the wire per MiB inflated: 64 GiB is ~66 MB, more than socket buffers hold.
    server.gzip_bomb(64 * 1024 * MIB, declare_length=declare_length)
    outcome, growth = await peak_growth(
        f"gzip bomb, 64 GiB inflated ({'Content-Length' if declare_length else 'chunked'})",
        lambda: client.change_status(12, 310),
    )
    assert isinstance(outcome, TransportError), outcome
    assert outcome.kind == "too_large"
    assert str(outcome) == f"POST /workspace_status_changes: response body over {CAP} bytes"
    assert growth < MEMORY_BOUND
    [sent] = server.sent
    assert not sent.finished
    assert sent.bytes < 40 * MIB, "the client read on instead of hanging up"
    verdict = classify(outcome, status_change=True)
    assert (verdict.verdict, verdict.error_type, verdict.ambiguous) == (
        Verdict.RETRY,
        "too_large",
        True,
    )


async def test_a_small_gzip_answer_still_inflates(
    server: HostileServer, client: KantataClient
) -> None:
    server.gzip_bomb(2 * MIB)
    answer = await client.get_workspace(12)
    assert answer.status == 200 and answer.body is None  # 2 MiB of zeros: not JSON, no body


# --------------------------------------------------------------------------- error text


async def test_a_3_mb_error_message_is_capped(server: HostileServer, client: KantataClient) -> None:
    message = "m" * 3_145_728
    server.reply(422, json.dumps({"errors": [{"type": "validation", "message": message}]}).encode())
    outcome, growth = await peak_growth(
        "3 MB error message", lambda: client.update_workspace(12, {"title": "x"})
    )
    assert isinstance(outcome, ApiResponse)
    verdict = classify(outcome, status_change=False)
    assert (verdict.verdict, verdict.http_status, verdict.error_type) == (
        Verdict.PERMANENT,
        422,
        "validation",
    )
    assert verdict.error_message is not None
    assert len(verdict.error_message) == MAX_MESSAGE_CHARS
    assert verdict.error_message == "m" * 1967 + "… (truncated, 3145728 characters)"
    assert growth < MEMORY_BOUND


# --------------------------------------------------------------------------- the token


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(401, Verdict.TOKEN_REJECTED), (422, Verdict.PERMANENT), (500, Verdict.RETRY)],
)
async def test_an_echoed_token_never_comes_back(
    server: HostileServer, client: KantataClient, status: int, verdict: Verdict
) -> None:
    server.echo_authorization(status)
    answer = await client.update_workspace(12, {"title": "x"})
    [(_, _, headers)] = server.requests
    assert headers["Authorization"] == f"Bearer {TOKEN}"  # the echo really had it to give back
    classified = classify(answer, status_change=False)
    assert classified.verdict is verdict
    assert classified.error_type == "oauth"
    assert classified.error_message is not None
    assert classified.error_message.startswith("bad header Authorization: Bearer [REDACTED]")
    if verdict is not Verdict.TOKEN_REJECTED:  # a 401 keeps no field
        assert classified.error_field == "[REDACTED]"
    assert answer.request_id == "req-[REDACTED]"
    assert answer.body is not None and answer.body["echo"] == {"[REDACTED]": "[REDACTED]"}
    assert_no_token(
        answer.body,
        answer.request_id,
        repr(answer),
        classified.error_message,
        classified.error_field,
        repr(classified),
    )


# --------------------------------------------------------------------------- Retry-After

FAR_FUTURE = "Fri, 31 Dec 9999 23:59:59 GMT"


@pytest.mark.parametrize(
    ("header", "check"),
    [
        pytest.param("7", lambda s: s == 7.0, id="seconds"),
        pytest.param("7200", lambda s: s == 7200.0, id="above-3600-uncapped"),
        pytest.param(
            "in-an-hour", lambda s: s is not None and 3000 < s <= 3600, id="http-date-in-an-hour"
        ),
        pytest.param(FAR_FUTURE, lambda s: s is not None and s > 2.4e11, id="http-date-far"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", lambda s: s == 0.0, id="http-date-past"),
        pytest.param("soon, maybe", lambda s: s is None, id="garbage"),
        pytest.param("-5", lambda s: s is None, id="negative"),
        pytest.param("9" * 400, lambda s: s is None, id="infinite"),
    ],
)
async def test_retry_after_forms(
    server: HostileServer,
    client: KantataClient,
    header: str,
    check: Callable[[float | None], bool],
) -> None:
    if header == "in-an-hour":
        header = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    server.reply(
        429,
        b'{"errors": [{"type": "system", "message": "slow down"}]}',
        {"Retry-After": header},
    )
    answer = await client.update_workspace(12, {"title": "x"})
    assert check(answer.retry_after), answer.retry_after
    verdict = classify(answer, status_change=False)
    assert (verdict.verdict, verdict.error_type, verdict.retry_after) == (
        Verdict.RETRY,
        "rate_limited",
        answer.retry_after,
    )


# --------------------------------------------------------------------------- through a run


async def stored_text(store: Store) -> str:
    """Every column of sync_changes and sync_attempts, as one string to search."""
    async with store.engine.connect() as conn:
        rows = [
            *(await conn.execute(sa.select(sync_changes))).all(),
            *(await conn.execute(sa.select(sync_attempts))).all(),
        ]
    return "\n".join(repr(tuple(row)) for row in rows)


async def run_once(store: Store, server: HostileServer, **settings: Any) -> None:
    peer = SimpleNamespace(url=server.url)  # dispatcher_for reads only the URL of its peer
    async with dispatcher_for(store, peer, **settings) as dispatcher:  # type: ignore[arg-type]
        await dispatcher.run()


async def test_a_run_retries_too_large_answers_then_fails_the_change(
    sqlite_store: Store, server: HostileServer
) -> None:
    server.stream(400 * MIB)
    [change_id] = await sqlite_store.enqueue([update(12, title="x")])
    await run_once(sqlite_store, server, max_attempts=3)
    row = (await all_rows(sqlite_store))[change_id]
    assert (row["state"], row["attempts"], row["error_type"]) == ("failed", 3, "too_large")
    assert row["error_message"] == (
        f"gave up after 3 attempts: PUT /workspaces/12: response body over {4 * MIB} bytes"
    )
    assert len(server.sent) == 3 and not any(sent.finished for sent in server.sent)


async def test_a_run_stores_no_echoed_token_and_no_endless_message(
    sqlite_store: Store, server: HostileServer
) -> None:
    server.echo_authorization(422)
    [echoed] = await sqlite_store.enqueue([update(12, title="x")])
    await run_once(sqlite_store, server)
    message = "m" * 3_145_728
    server.reply(422, json.dumps({"errors": [{"type": "validation", "message": message}]}).encode())
    [endless] = await sqlite_store.enqueue([update(13, title="x")])
    await run_once(sqlite_store, server)
    rows = await all_rows(sqlite_store)
    assert (rows[echoed]["state"], rows[echoed]["error_type"]) == ("failed", "oauth")
    assert rows[echoed]["error_message"].startswith("bad header Authorization: Bearer [REDACTED]")
    assert rows[echoed]["error_field"] == "[REDACTED]"
    assert (rows[endless]["state"], rows[endless]["error_type"]) == ("failed", "validation")
    assert rows[endless]["error_message"] == "m" * 1967 + "… (truncated, 3145728 characters)"
    text = await stored_text(sqlite_store)
    assert "req-[REDACTED]" in text  # the attempt log kept the masked request ID
    assert PIPELINE_TOKEN not in text
    assert "m" * 2000 not in text
