"""``plan``'s pure half: the requests each step sends, and the claims a run would make."""

from __future__ import annotations

import json
from typing import Any

import pytest

from worker.changes import Change, ClaimedRow, Kind
from worker.client import RequestSpec
from worker.planner import PutStep, StatusStep
from worker.preview import ClaimModel, preview, requests_of

UPDATE, STATUS = "workspace_update", "status_change"


def row(
    ident: int,
    workspace: object,
    payload: Any,
    kind: object = UPDATE,
    *,
    attempts: int = 0,
    http_status: int | None = None,
) -> ClaimedRow:
    raw = payload if isinstance(payload, str) else json.dumps(payload)
    return ClaimedRow(ident, workspace, kind, raw, None, attempts, 0, http_status)


def change(ident: int, payload: dict[str, Any], kind: Kind, ambiguous: bool = False) -> Change:
    return Change(ident, 4, kind, payload, 0, 0, ambiguous)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            PutStep(4, {"title": "A"}, (change(1, {"title": "A"}, Kind.WORKSPACE_UPDATE),)),
            [
                (
                    RequestSpec(
                        "PUT /workspaces/{id}",
                        "PUT",
                        "/workspaces/4",
                        {"workspace": {"title": "A"}},
                    ),
                    False,
                )
            ],
        ),
        (
            StatusStep(4, 310, change(2, {"to_status_key": 310}, Kind.STATUS_CHANGE)),
            [
                (
                    RequestSpec(
                        "POST /workspace_status_changes",
                        "POST",
                        "/workspace_status_changes?include=workspace",
                        {"workspace_status_change": {"workspace_id": 4, "to_status_key": 310}},
                    ),
                    False,
                )
            ],
        ),
    ],
)
def test_requests_of(step: PutStep | StatusStep, expected: list[tuple[RequestSpec, bool]]) -> None:
    assert requests_of(step) == expected


def test_an_ambiguous_status_change_is_read_back_and_then_posted_only_if_needed() -> None:
    step = StatusStep(4, 310, change(2, {"to_status_key": 310}, Kind.STATUS_CHANGE, True))
    [(read_back, first), (post, second)] = requests_of(step)
    assert (read_back.method, read_back.target, read_back.body, first) == (
        "GET",
        "/workspaces/4",
        None,
        False,
    )
    assert (post.method, second) == ("POST", True)


def shape(result: Any) -> list[tuple[int, int, int, str, str, tuple[int, ...]]]:
    return [
        (r.workspace_id, r.step, r.claim, r.spec.method, r.spec.target, r.change_ids)
        for r in result.requests
    ]


def test_updates_coalesce_and_a_status_change_is_a_barrier() -> None:
    rows = [
        row(1, 4, {"title": "A"}),
        row(2, 5, {"due_date": "2026-12-01"}),
        row(3, 4, {"custom_fields": [{"custom_field_id": 7, "value": "a"}]}),
        row(4, 4, {"to_status_key": 310}, STATUS),
        row(5, 4, {"custom_fields": [{"custom_field_id": 7, "value": "b"}]}),
        row(6, 4, {"title": "B"}),
    ]
    result = preview(rows, batch_size=500)
    assert shape(result) == [
        (4, 1, 1, "PUT", "/workspaces/4", (1, 3)),
        (4, 2, 1, "POST", "/workspace_status_changes?include=workspace", (4,)),
        (4, 3, 1, "PUT", "/workspaces/4", (5, 6)),
        (5, 1, 1, "PUT", "/workspaces/5", (2,)),
    ]
    merged = result.requests[0].spec.body
    assert merged == {
        "workspace": {"title": "A", "custom_fields": [{"custom_field_id": 7, "value": "a"}]}
    }
    assert result.summary() == "6 changes → 4 requests (0.667 requests/change) in 1 claim(s)"


def test_a_second_status_change_waits_for_a_later_claim() -> None:
    rows = [
        row(1, 4, {"to_status_key": 310}, STATUS),
        row(2, 4, {"title": "A"}),
        row(3, 4, {"to_status_key": 600}, STATUS),
        row(4, 4, {"title": "B"}),
        row(5, 4, {"title": "C"}),
    ]
    result = preview(rows, batch_size=500)
    assert [(r.step, r.claim, r.change_ids) for r in result.requests] == [
        (1, 1, (1,)),
        (2, 1, (2,)),
        (3, 2, (3,)),
        (4, 2, (4, 5)),
    ]
    assert (result.changes, result.claims) == (5, 2)


def test_bad_rows_would_become_invalid_with_their_reason_and_send_nothing() -> None:
    rows = [
        row(1, 4, {"title": "A"}),
        row(2, 4, {"due_date": "2026-02-31"}),
        row(3, "x", {"title": "A"}),
        row(4, 5, "{not json"),
        row(5, 6, {"to_status_key": 310}, "renumber"),
    ]
    result = preview(rows, batch_size=500)
    assert [(i.change_id, i.reason) for i in result.invalid] == [
        (2, "payload.due_date: is not a real calendar date"),
        (3, "workspace_id: must be an integer"),
        (4, "payload: is not valid JSON (Expecting property name enclosed in double quotes at 1)"),
        (5, "kind: unknown kind 'renumber'; expected status_change or workspace_update"),
    ]
    assert shape(result) == [(4, 1, 1, "PUT", "/workspaces/4", (1,))]
    assert result.summary().endswith("; 4 invalid")


def test_a_status_change_whose_attempt_may_have_landed_is_read_back_first() -> None:
    rows = [
        row(1, 4, {"to_status_key": 310}, STATUS, attempts=1, http_status=503),
        row(2, 5, {"to_status_key": 310}, STATUS, attempts=1, http_status=None),
        row(3, 6, {"to_status_key": 310}, STATUS, attempts=1, http_status=429),
    ]
    result = preview(rows, batch_size=500)
    # The claim's two ambiguous ones are read together, listed with the first of them.
    assert [
        (r.workspace_id, r.spec.method, r.spec.target, r.change_ids, r.conditional)
        for r in result.requests
    ] == [
        (4, "GET", "/workspaces?only=4,5&per_page=200&include_archived=true", (1, 2), False),
        (4, "POST", "/workspace_status_changes?include=workspace", (1,), True),
        (5, "POST", "/workspace_status_changes?include=workspace", (2,), True),
        (6, "POST", "/workspace_status_changes?include=workspace", (3,), False),
    ]
    assert result.sent == 2
    assert "2 requests (+2 conditional)" in result.summary()


def test_an_ambiguous_status_change_after_a_put_is_read_back_by_itself() -> None:
    # Only a plan that starts with the ambiguous change is proved in bulk: here an update of
    # the same workspace comes first (its earlier change failed for good, say).
    rows = [
        row(1, 4, {"title": "A"}),
        row(2, 4, {"to_status_key": 310}, STATUS, attempts=1, http_status=503),
    ]
    result = preview(rows, batch_size=500)
    assert [(r.spec.method, r.spec.target, r.conditional) for r in result.requests] == [
        ("PUT", "/workspaces/4", False),
        ("GET", "/workspaces/4", False),
        ("POST", "/workspace_status_changes?include=workspace", True),
    ]


def test_bulk_read_backs_take_200_workspaces_a_request() -> None:
    rows = [
        row(n, n, {"to_status_key": 310}, STATUS, attempts=2, http_status=502)
        for n in range(1, 452)
    ]
    result = preview(rows, batch_size=1000)
    reads = [r for r in result.requests if r.spec.method == "GET"]
    assert [(r.workspace_id, len(r.change_ids)) for r in reads] == [(1, 200), (201, 200), (401, 51)]
    assert all(r.spec.target.startswith("/workspaces?only=") for r in reads)
    assert (result.sent, len(result.requests)) == (3, 3 + 451)


def test_claims_take_batch_size_changes_and_the_first_workspaces_whole() -> None:
    # Three workspaces, ten updates each, interleaved in the queue; batches of 20 keep the
    # first 20 // 10 = 2 workspaces of a claim whole, and the third comes in the next claim.
    rows = [row(n, 4 + n % 3, {"title": f"T{n}"}) for n in range(1, 31)]
    result = preview(rows, batch_size=20)
    assert [(r.workspace_id, r.claim, len(r.change_ids)) for r in result.requests] == [
        (5, 1, 10),
        (6, 1, 10),
        (4, 2, 10),
    ]
    # A workspace with more due changes than a claim takes is sent in several PUTs.
    many = preview([row(n, 4, {"title": f"T{n}"}) for n in range(1, 6)], batch_size=2)
    assert [r.change_ids for r in many.requests] == [(1, 2), (3, 4), (5,)]


def test_limit_plans_only_the_first_changes() -> None:
    rows = [row(n, 4 + n % 2, {"title": f"T{n}"}) for n in range(1, 11)]
    result = preview(rows, batch_size=500, limit=3)
    assert result.changes == 3
    assert sum(len(r.change_ids) for r in result.requests) == 3


def test_the_claim_model_frees_busy_workspaces_only_when_nothing_else_is_claimable() -> None:
    model = ClaimModel([row(1, 4, {}), row(2, 4, {}), row(3, 5, {}), row(4, 6, {})])
    assert [r.id for r in model.claim(1)] == [1]
    assert [r.id for r in model.claim(1)] == [3]
    model.hand_back([row(3, 5, {})])
    assert [r.id for r in model.claim(5)] == [4]
    assert model.claim(5) == []
    model.settle()
    assert [r.id for r in model.claim(5)] == [2, 3]
    assert not model
