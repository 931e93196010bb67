"""Proving status changes in bulk (pure): which plans need a proof, and what a read proves.

A status change whose last attempt got no answer or a 5xx may have landed, so it is never sent
again blindly (:attr:`~worker.changes.Change.ambiguous`). When a claim brings such changes as
the first step of their workspace's plan, the run reads all those workspaces at once with the
index route (``GET /workspaces?only=…``, up to :data:`~worker.endpoints.MAX_PER_PAGE` a
request) instead of one ``GET /workspaces/{id}`` each, and decides per change:

- the status is the target: the change succeeds as ``already_applied``, nothing is sent;
- another status: the change is no longer ambiguous and is sent without a read-back;
- nothing readable (the read failed, or the workspace was not in the answer): it stays
  ambiguous, and the step reads it back by itself before sending, as before.

``plan`` and ``run`` both choose the proved plans here, so that they agree request for request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from .changes import AttemptRecord
from .endpoints import MAX_PER_PAGE
from .planner import StatusStep, WorkspacePlan

T = TypeVar("T")


class Proof(StrEnum):
    """What the bulk read says about one ambiguous status change."""

    IN_PLACE = "in_place"
    """The workspace holds the target status: the change is already applied."""
    NOT_IN_PLACE = "not_in_place"
    """Another status: the change did not land, and is sent without a read-back."""
    UNKNOWN = "unknown"
    """Nothing readable: the step reads the workspace back itself before sending."""


def needs_proof(workspace_plan: WorkspacePlan) -> bool:
    """Whether the plan starts with an ambiguous status change (read in bulk first)."""
    steps = workspace_plan.steps
    return bool(steps) and isinstance(steps[0], StatusStep) and steps[0].change.ambiguous


def split_for_proof(
    plans: Sequence[WorkspacePlan],
) -> tuple[list[WorkspacePlan], list[WorkspacePlan]]:
    """The plans that can run at once, and those to prove in bulk first (order kept)."""
    ready: list[WorkspacePlan] = []
    proving: list[WorkspacePlan] = []
    for workspace_plan in plans:
        (proving if needs_proof(workspace_plan) else ready).append(workspace_plan)
    return ready, proving


def chunked(items: Sequence[T], size: int = MAX_PER_PAGE) -> list[list[T]]:
    """``items`` in consecutive chunks of at most ``size`` (one index read each)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, not {size}")
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def proof_of(to_status_key: int, current: int | None) -> Proof:
    """What a read that found status ``current`` proves (None: nothing readable)."""
    if current is None:
        return Proof.UNKNOWN
    return Proof.IN_PLACE if current == to_status_key else Proof.NOT_IN_PLACE


def after_proof(workspace_plan: WorkspacePlan, proof: Proof) -> WorkspacePlan | None:
    """The plan left to run once its first step is proved (None: nothing left).

    In place: the status change is done (its result is written by the caller), the rest of
    the plan runs. Not in place: the change is sent as an ordinary one, without a read-back.
    Unknown: unchanged; the step reads the workspace back itself.
    """
    first = workspace_plan.steps[0]
    if not isinstance(first, StatusStep) or proof is Proof.UNKNOWN:
        return workspace_plan
    rest = workspace_plan.steps[1:]
    if proof is Proof.IN_PLACE:
        return replace(workspace_plan, steps=rest) if rest else None
    sure = replace(first, change=replace(first.change, ambiguous=False))
    return replace(workspace_plan, steps=(sure, *rest))


def bulk_attempts(
    run_id: str,
    proved: Sequence[StatusStep],
    endpoint: str,
    http_status: int | None,
    duration_ms: float,
    *,
    error_type: str | None,
    error_message: str | None,
    request_id: str | None,
    attempted_at: datetime,
) -> list[AttemptRecord]:
    """One attempt record per workspace read: each change's history shows the one request."""
    return [
        AttemptRecord(
            run_id,
            step.change_ids,
            step.workspace_id,
            endpoint,
            http_status,
            duration_ms,
            error_type,
            error_message,
            request_id,
            attempted_at,
        )
        for step in proved
    ]
