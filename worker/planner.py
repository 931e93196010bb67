"""Pure planning: claimed changes become the requests to send, per workspace, in order.

Consecutive ``workspace_update``s of one workspace merge into one PUT (later fields win,
``custom_fields`` merge by ``custom_field_id``, ``invoice_preference`` and ``external_link`` merge
by key). A ``status_change`` is a barrier: never merged, never reordered. Two updates that each
apply a project template or carry external references of different services are not merged,
because Kantata treats those as actions rather than field values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .changes import Change, JSONObject, Kind

MERGED_BY_KEY = frozenset({"invoice_preference", "external_link"})


@dataclass(frozen=True, slots=True)
class PutStep:
    """One ``PUT /workspaces/{id}`` carrying the merged fields of ``changes`` (ascending)."""

    workspace_id: int
    fields: JSONObject
    changes: tuple[Change, ...]

    @property
    def change_ids(self) -> tuple[int, ...]:
        return tuple(change.id for change in self.changes)

    @property
    def sets_status(self) -> bool:
        """A PUT may carry ``status_key``: then it changes the status like a status change."""
        return "status_key" in self.fields


@dataclass(frozen=True, slots=True)
class StatusStep:
    """One ``POST /workspace_status_changes`` for a single change."""

    workspace_id: int
    to_status_key: int
    change: Change

    @property
    def changes(self) -> tuple[Change, ...]:
        return (self.change,)

    @property
    def change_ids(self) -> tuple[int, ...]:
        return (self.change.id,)

    @property
    def sets_status(self) -> bool:
        return True


Step = PutStep | StatusStep


@dataclass(frozen=True, slots=True)
class WorkspacePlan:
    """The steps for one workspace; they must run one after another."""

    workspace_id: int
    steps: tuple[Step, ...]


def plan(changes: Iterable[Change]) -> list[WorkspacePlan]:
    """Group changes by workspace (in order of first appearance) and coalesce within each."""
    by_workspace: dict[int, list[Change]] = {}
    for change in sorted(changes, key=lambda c: c.id):
        by_workspace.setdefault(change.workspace_id, []).append(change)
    return [
        WorkspacePlan(workspace_id, tuple(coalesce(items)))
        for workspace_id, items in by_workspace.items()
    ]


def one_status_change(workspace_plan: WorkspacePlan) -> tuple[WorkspacePlan, tuple[Step, ...]]:
    """Split a plan before its second status change: the plan to run now, and the rest.

    A status change may be sent only once the workspace's previous one is written back.
    After a crash the changes whose results were not written are sent again, in order; a
    repeated status change is caught by its same-status answer and read back, but re-sending
    an earlier status change after a later one had landed would apply it a second time. So a
    run takes at most one status change of a workspace at a time, and the rest goes back to
    the queue, to be claimed once that one's result is durable.
    """
    seen = False
    for index, step in enumerate(workspace_plan.steps):
        if step.sets_status:
            if seen:
                head = WorkspacePlan(workspace_plan.workspace_id, workspace_plan.steps[:index])
                return head, workspace_plan.steps[index:]
            seen = True
    return workspace_plan, ()


def coalesce(changes: list[Change]) -> list[Step]:
    """Turn one workspace's changes (ascending IDs) into steps."""
    steps: list[Step] = []
    run: list[Change] = []
    fields: JSONObject = {}
    for change in changes:
        if change.kind is Kind.STATUS_CHANGE:
            if run:
                steps.append(PutStep(change.workspace_id, fields, tuple(run)))
                run, fields = [], {}
            steps.append(StatusStep(change.workspace_id, change.payload["to_status_key"], change))
            continue
        if run and not can_merge(fields, change.payload):
            steps.append(PutStep(change.workspace_id, fields, tuple(run)))
            run, fields = [], {}
        fields = merge_fields(fields, change.payload)
        run.append(change)
    if run:
        steps.append(PutStep(run[0].workspace_id, fields, tuple(run)))
    return steps


def can_merge(earlier: JSONObject, later: JSONObject) -> bool:
    """Whether sending ``later`` merged into ``earlier`` has the same effect as sending both."""
    if "project_tracker_template_id" in earlier and "project_tracker_template_id" in later:
        return False
    ref_a, ref_b = earlier.get("external_reference"), later.get("external_reference")
    return not (ref_a and ref_b and ref_a.get("service_name") != ref_b.get("service_name"))


def merge_fields(earlier: JSONObject, later: JSONObject) -> JSONObject:
    """Later fields win; custom fields merge by ID; some nested objects merge by key."""
    merged = dict(earlier)
    for name, value in later.items():
        if name == "custom_fields" and "custom_fields" in merged:
            merged[name] = _merge_custom_fields(merged[name], value)
        elif name in MERGED_BY_KEY and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    return merged


def _merge_custom_fields(
    earlier: list[dict[str, Any]], later: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    by_id = {item["custom_field_id"]: item for item in earlier}
    for item in later:
        by_id[item["custom_field_id"]] = item
    return list(by_id.values())
