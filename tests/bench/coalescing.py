"""4. Coalescing: ten field updates per workspace become (ideally) one PUT.

Each workspace gets ten ``workspace_update``s, each setting the title, the due date and one of
three custom fields. Two layouts: *grouped* (a workspace's ten rows are consecutive) and
*interleaved* (update 1 of every workspace, then update 2 of every workspace, ...: producers
writing over time). Requests per change come from the sandbox's counters; the final state of
every workspace is read back from the sandbox and compared with the last intended values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from databases import Row, database
from processes import run_worker, sandbox, worker_env
from reporting import BenchError, Context, Finding, Outcome, Table, log, median

UPDATES = 10
TARGET = 0.1
LAYOUTS = ("grouped", "interleaved")


def _payload(workspace_id: int, k: int) -> dict[str, object]:
    return {
        "title": f"coalesce {workspace_id} v{k}",
        "due_date": f"2026-12-{k + 1:02d}",
        "custom_fields": [{"custom_field_id": 1 + k % 3, "value": f"w{workspace_id}-v{k}"}],
    }


def rows(workspaces: int, layout: str) -> Iterator[Row]:
    order = (
        ((w, k) for w in range(1, workspaces + 1) for k in range(UPDATES))
        if layout == "grouped"
        else ((w, k) for k in range(UPDATES) for w in range(1, workspaces + 1))
    )
    for w, k in order:
        yield w, "workspace_update", json.dumps(_payload(w, k))


def expected(workspace_id: int) -> dict[str, object]:
    """The last intended values: replay the updates in order."""
    state: dict[str, object] = {}
    custom: dict[str, str] = {}
    for k in range(UPDATES):
        payload = _payload(workspace_id, k)
        state["title"], state["due_date"] = payload["title"], payload["due_date"]
        for item in payload["custom_fields"]:  # type: ignore[attr-defined]
            custom[str(item["custom_field_id"])] = item["value"]
    state["custom_field_values"] = custom
    return state


def measure(ctx: Context) -> Outcome:
    workspaces = 200 if ctx.quick else 1000
    n = workspaces * UPDATES
    outcome = Outcome()
    detail = Table(
        f"Coalescing: {UPDATES} updates per workspace, {workspaces:,} workspaces ({n:,} changes), "
        "batch 500",
        ["layout", "run", "requests", "requests/change", "outcomes", "final state", "seconds"],
    )
    for layout in LAYOUTS:
        per_change: list[float] = []
        all_equal = True
        for repeat in range(ctx.repeats):
            log(f"coalescing: {layout} run {repeat + 1}/{ctx.repeats}")
            with sandbox(workspaces) as sb, database("sqlite", ctx.tmp) as db:
                db.seed(rows(workspaces, layout))
                result = run_worker(
                    worker_env(db.url, sb.url, concurrency=ctx.concurrency), ctx.tmp
                )
                stats = sb.stats()
                counts = db.outcome_counts()
                wrong = [w for w in range(1, workspaces + 1) if not _matches(sb.workspace(w), w)]
            if counts.get("succeeded/applied", 0) + counts.get("succeeded/merged", 0) != n:
                raise BenchError(f"coalescing run left {counts}")
            ratio = stats["total"] / n
            per_change.append(ratio)
            all_equal = all_equal and not wrong
            detail.add(
                layout,
                repeat + 1,
                stats["total"],
                f"{ratio:.3f}",
                ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                "equal" if not wrong else f"{len(wrong)} workspaces differ (e.g. {wrong[:3]})",
                f"{result.wall:.1f}",
            )
        outcome.findings.append(
            Finding(
                f"4. Coalescing, {layout}: requests per change; final state",
                f"{median(per_change):.3f}; final state " + ("equal" if all_equal else "DIFFERS"),
                f"<= {TARGET}; equal",
                median(per_change) <= TARGET and all_equal,
            )
        )
    detail.notes.append(
        "final state: title, due_date and every custom field value of each workspace, read "
        f"from the sandbox, against the last of the {UPDATES} intended values"
    )
    outcome.tables.append(detail)
    return outcome


def _matches(actual: dict[str, object], workspace_id: int) -> bool:
    want = expected(workspace_id)
    return all(actual.get(key) == value for key, value in want.items())
