"""Proving ambiguous status changes in bulk: the pure decisions (worker/proofs.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.changes import AttemptRecord, Change, Kind
from worker.planner import PutStep, StatusStep, WorkspacePlan
from worker.proofs import (
    Proof,
    after_proof,
    bulk_attempts,
    chunked,
    needs_proof,
    proof_of,
    split_for_proof,
)


def status_step(ident: int, workspace: int = 4, *, ambiguous: bool = True) -> StatusStep:
    change = Change(ident, workspace, Kind.STATUS_CHANGE, {"to_status_key": 310}, 1, 7, ambiguous)
    return StatusStep(workspace, 310, change)


def put_step(ident: int, workspace: int = 4) -> PutStep:
    change = Change(ident, workspace, Kind.WORKSPACE_UPDATE, {"title": "T"}, 0, 7)
    return PutStep(workspace, {"title": "T"}, (change,))


@pytest.mark.parametrize(
    ("target", "current", "expected"),
    [
        (310, 310, Proof.IN_PLACE),
        (310, 320, Proof.NOT_IN_PLACE),
        (310, 100, Proof.NOT_IN_PLACE),
        (600, 600, Proof.IN_PLACE),
        (310, None, Proof.UNKNOWN),  # absent from the answer, the read failed, no usable key
    ],
)
def test_proof_of(target: int, current: int | None, expected: Proof) -> None:
    assert proof_of(target, current) is expected


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ((status_step(1),), True),
        ((status_step(1), put_step(2)), True),
        ((status_step(1, ambiguous=False),), False),
        ((put_step(1), status_step(2)), False),  # proved by its own read-back, after the PUT
        ((put_step(1),), False),
        ((), False),
    ],
)
def test_only_a_plan_that_starts_with_an_ambiguous_status_change_needs_proof(
    steps: tuple[StatusStep | PutStep, ...], expected: bool
) -> None:
    assert needs_proof(WorkspacePlan(4, steps)) is expected


def test_split_for_proof_keeps_the_order_of_each_side() -> None:
    plans = [
        WorkspacePlan(1, (status_step(1, 1),)),
        WorkspacePlan(2, (put_step(2, 2),)),
        WorkspacePlan(3, (status_step(3, 3),)),
        WorkspacePlan(5, (status_step(5, 5, ambiguous=False),)),
    ]
    ready, proving = split_for_proof(plans)
    assert [p.workspace_id for p in ready] == [2, 5]
    assert [p.workspace_id for p in proving] == [1, 3]


@pytest.mark.parametrize(
    ("count", "size", "lengths"),
    [
        (0, 200, []),
        (1, 200, [1]),
        (200, 200, [200]),
        (201, 200, [200, 1]),
        (450, 200, [200, 200, 50]),
    ],
)
def test_chunked(count: int, size: int, lengths: list[int]) -> None:
    chunks = chunked(list(range(count)), size)
    assert [len(c) for c in chunks] == lengths
    assert [i for c in chunks for i in c] == list(range(count))


def test_chunked_refuses_an_empty_chunk_size() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        chunked([1], 0)


@pytest.mark.parametrize(
    ("steps", "proof", "expected"),
    [
        # In place: the status change is done; what follows it still runs.
        ((status_step(1),), Proof.IN_PLACE, None),
        ((status_step(1), put_step(2)), Proof.IN_PLACE, (put_step(2),)),
        # Not in place: sent as an ordinary status change, with no read-back of its own.
        ((status_step(1),), Proof.NOT_IN_PLACE, (status_step(1, ambiguous=False),)),
        (
            (status_step(1), put_step(2)),
            Proof.NOT_IN_PLACE,
            (status_step(1, ambiguous=False), put_step(2)),
        ),
        # Unknown: unchanged, still ambiguous (the step reads it back itself).
        ((status_step(1), put_step(2)), Proof.UNKNOWN, (status_step(1), put_step(2))),
        # Nothing to prove: unchanged whatever was read.
        ((put_step(1),), Proof.IN_PLACE, (put_step(1),)),
    ],
)
def test_after_proof(
    steps: tuple[StatusStep | PutStep, ...],
    proof: Proof,
    expected: tuple[StatusStep | PutStep, ...] | None,
) -> None:
    left = after_proof(WorkspacePlan(4, steps), proof)
    assert (left.steps if left is not None else None) == expected


def test_one_bulk_read_is_one_attempt_row_per_workspace_with_the_same_request() -> None:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    rows = bulk_attempts(
        "run-1",
        [status_step(11, 4), status_step(12, 5)],
        "GET /workspaces",
        503,
        12.5,
        error_type="server_error",
        error_message="HTTP 503",
        request_id="req-9",
        attempted_at=at,
    )
    assert rows == [
        AttemptRecord(
            "run-1", (11,), 4, "GET /workspaces", 503, 12.5, "server_error", "HTTP 503", "req-9", at
        ),
        AttemptRecord(
            "run-1", (12,), 5, "GET /workspaces", 503, 12.5, "server_error", "HTTP 503", "req-9", at
        ),
    ]
