"""verify's bulk reads: the budget before each request, retries and backoff, what gives up."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, cast

import pytest

from worker.client import KantataClient
from worker.config import Settings
from worker.desired import DesiredState, Wanted
from worker.drift import Finding
from worker.exceptions import TokenRejected, TransportError, TransportKind
from worker.outcomes import ApiResponse
from worker.verify import ReadBack, VerifyStats, WorkspaceReader, judge

Answer = ApiResponse | TransportError


def page(*ids: int, page_number: int = 1, page_count: int = 1) -> ApiResponse:
    return ApiResponse(
        200,
        {
            "count": len(ids),
            "results": [{"key": "workspaces", "id": str(i)} for i in ids],
            "workspaces": {str(i): {"id": str(i), "title": f"P{i}"} for i in ids},
            "meta": {"page_number": page_number, "page_count": page_count},
        },
    )


def error(status: int, retry_after: float | None = None) -> ApiResponse:
    body = {"errors": [{"type": "system", "message": f"HTTP {status} here"}]}
    return ApiResponse(status, body, retry_after=retry_after)


class FakeClient:
    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.calls: list[tuple[tuple[int, ...], bool, int]] = []

    async def list_workspaces(
        self,
        ids: Sequence[int],
        *,
        include_custom_fields: bool = False,
        include_archived: bool = True,
        page: int = 1,
    ) -> ApiResponse:
        assert include_archived
        self.calls.append((tuple(ids), include_custom_fields, page))
        answer = self.answers.pop(0)
        if isinstance(answer, TransportError):
            raise answer
        return answer


class FakeLimiter:
    budget = 10.0
    throttled = 0
    rate = 10.0

    def __init__(self) -> None:
        self.acquired = 0
        self.pauses: list[float | None] = []

    async def acquire(self) -> float:
        self.acquired += 1
        return 0.0

    async def settle(self) -> None:
        return None

    def on_throttled(self, retry_after: float | None) -> None:
        self.pauses.append(retry_after)


def reader(
    answers: list[Answer], **settings: Any
) -> tuple[WorkspaceReader, FakeClient, FakeLimiter, list[float]]:
    client = FakeClient(answers)
    limiter = FakeLimiter()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    values = {"max_attempts": 4, "retry_base_delay": 1.0, "retry_max_delay": 8.0, **settings}
    built = WorkspaceReader(
        cast(KantataClient, client),
        limiter,
        Settings.model_validate(values),
        VerifyStats(),
        rng=random.Random(3),
        sleep=sleep,
    )
    return built, client, limiter, slept


async def test_each_read_waits_for_the_budget_and_retries_5xx_429_and_timeouts() -> None:
    timeout = TransportError(TransportKind.TIMEOUT, "GET /workspaces: no answer in time")
    answers: list[Answer] = [error(503), error(429, retry_after=2.0), timeout, page(1, 2)]
    built, client, limiter, slept = reader(answers)
    read = await built.read([1, 2, 3], custom_fields=True)
    assert read.unreadable is None
    assert set(read.workspaces) == {1, 2}
    assert limiter.acquired == len(client.calls) == 4
    assert all(call == ((1, 2, 3), True, 1) for call in client.calls)
    assert limiter.pauses == [2.0]  # the 429 paused the shared budget
    assert len(slept) == 3 and slept[1] >= 2.0  # Retry-After honoured
    assert all(0 <= s <= 8.0 for s in slept)
    stats = built.stats
    assert (stats.read_requests, stats.retries, stats.rate_limited) == (4, 3, 1)


async def test_a_read_that_keeps_failing_is_unreadable_after_max_attempts() -> None:
    built, client, _, slept = reader([error(503)] * 4)
    read = await built.read([1, 2], custom_fields=False)
    assert read.unreadable == "gave up after 4 attempts: HTTP 503 here"
    assert len(client.calls) == 4 and len(slept) == 3


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (error(404), "HTTP 404: HTTP 404 here"),
        (error(403), "HTTP 403: HTTP 403 here"),
        (error(429, retry_after=3600.0), "Kantata asked to wait 3600 s: HTTP 429 here"),
    ],
)
async def test_answers_not_worth_retrying_make_the_chunk_unreadable_at_once(
    answer: ApiResponse, reason: str
) -> None:
    built, client, _, slept = reader([answer, page(1)])
    read = await built.read([1], custom_fields=False)
    assert read.unreadable == reason
    assert len(client.calls) == 1 and slept == []


async def test_an_answer_that_is_not_the_envelope_is_retried() -> None:
    built, client, _, _ = reader([ApiResponse(200, {"oops": 1}), page(1)])
    read = await built.read([1], custom_fields=False)
    assert read.unreadable is None and set(read.workspaces) == {1}
    assert len(client.calls) == 2


async def test_a_401_ends_the_verification() -> None:
    built, _, _, _ = reader([ApiResponse(401, {"errors": [{"type": "oauth", "message": "no"}]})])
    with pytest.raises(TokenRejected):
        await built.read([1], custom_fields=False)


async def test_every_page_is_read_when_kantata_pages_the_answer() -> None:
    answers: list[Answer] = [page(1, 2, page_count=2), page(3, page_number=2, page_count=2)]
    built, client, _, _ = reader(answers)
    read = await built.read([1, 2, 3], custom_fields=False)
    assert set(read.workspaces) == {1, 2, 3}
    assert [call[2] for call in client.calls] == [1, 2]
    # A page that stays failed leaves the chunk unreadable, even with some workspaces read.
    built, _, _, _ = reader([page(1, page_count=2), *[error(502)] * 4])
    assert (await built.read([1, 2], custom_fields=False)).unreadable is not None


def test_judge_never_calls_an_unreadable_workspace_drifted() -> None:
    states = [DesiredState(n, {"title": Wanted("T", n, None)}) for n in (1, 2, 3)]
    stats = VerifyStats()
    unreadable = ReadBack({}, {}, False, unreadable="gave up after 5 attempts: HTTP 503")
    rows = judge(states, unreadable, stats)
    assert [(r.workspace_id, r.finding) for r in rows] == [
        (n, Finding.UNREADABLE) for n in (1, 2, 3)
    ]
    assert (stats.unreadable, stats.drifted_fields, stats.missing) == (3, 0, 0)

    stats = VerifyStats()
    read = ReadBack({1: {"id": "1", "title": "T"}, 2: {"id": "2", "title": "U"}}, {}, False)
    rows = judge(states, read, stats)
    assert [(r.workspace_id, r.finding, r.field) for r in rows] == [
        (2, Finding.DRIFTED, "title"),
        (3, Finding.MISSING, None),
    ]
    assert (stats.workspaces, stats.drifted_fields, stats.missing, stats.checked_fields) == (
        3,
        1,
        1,
        2,
    )
