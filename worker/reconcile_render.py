"""How ``plan`` and ``verify`` print: a rich table on a terminal, JSON, JSON Lines or CSV."""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Callable
from typing import IO, Any

from .changes import JSONObject
from .drift import Drift, as_row
from .preview import PlannedRequest, Preview, Rejected
from .render import console

DRIFT_COLUMNS = (
    "workspace_id",
    "finding",
    "field",
    "desired",
    "actual",
    "change_id",
    "completed_at",
    "detail",
)


def request_json(request: PlannedRequest) -> JSONObject:
    """One planned request as ``plan`` prints it."""
    return {
        "workspace_id": request.workspace_id,
        "step": request.step,
        "claim": request.claim,
        "method": request.spec.method,
        "path": request.spec.target,
        "body": request.spec.body,
        "change_ids": list(request.change_ids),
        "conditional": request.conditional,
    }


def rejected_json(item: Rejected) -> JSONObject:
    workspace = item.workspace_id
    return {
        "change_id": item.change_id,
        "workspace_id": workspace if isinstance(workspace, int | str | None) else repr(workspace),
        "reason": item.reason,
    }


def summary_json(result: Preview) -> JSONObject:
    return {
        "changes": result.changes,
        "requests": result.sent,
        "conditional_requests": len(result.requests) - result.sent,
        "requests_per_change": round(result.sent / result.changes, 4) if result.changes else 0,
        "invalid": len(result.invalid),
        "claims": result.claims,
        "text": result.summary(),
    }


def write_plan(result: Preview, fmt: str, out: IO[str]) -> None:
    """The plan in ``fmt``: ``table``, ``json`` or ``jsonl``."""
    if fmt == "json":
        data = {
            "summary": summary_json(result),
            "requests": [request_json(r) for r in result.requests],
            "invalid": [rejected_json(i) for i in result.invalid],
        }
        out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return
    if fmt == "jsonl":
        for request in result.requests:
            out.write(json.dumps({"type": "request", **request_json(request)}) + "\n")
        for item in result.invalid:
            out.write(json.dumps({"type": "invalid", **rejected_json(item)}) + "\n")
        out.write(json.dumps({"type": "summary", **summary_json(result)}) + "\n")
        return
    from rich.table import Table

    screen = console()
    table = Table(title="requests the next run would send")
    for column in ("workspace", "#", "claim", "method", "path", "changes", "body"):
        table.add_column(column, overflow="fold")
    for request in result.requests:
        body = "" if request.spec.body is None else json.dumps(request.spec.body)
        method = request.spec.method + (" (if needed)" if request.conditional else "")
        table.add_row(
            str(request.workspace_id),
            str(request.step),
            str(request.claim),
            method,
            request.spec.target,
            ", ".join(map(str, request.change_ids)),
            body,
        )
    screen.print(table)
    if result.invalid:
        invalid = Table(title="changes that would become invalid")
        for column in ("change", "workspace", "reason"):
            invalid.add_column(column, overflow="fold")
        for item in result.invalid:
            row = rejected_json(item)
            invalid.add_row(str(row["change_id"]), str(row["workspace_id"]), row["reason"])
        screen.print(invalid)
    screen.print(result.summary())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


async def write_drift(
    rows: AsyncIterator[Drift],
    fmt: str,
    out: IO[str],
    finish: Callable[[], JSONObject],
) -> None:
    """Stream verify's findings in ``fmt`` (``table``, ``json``, ``csv``).

    ``finish`` is called once every finding is through (repairs happen there); JSON ends with
    what it returns, as ``summary``.
    """
    if fmt == "csv":
        writer = csv.DictWriter(out, DRIFT_COLUMNS)
        writer.writeheader()
        async for item in rows:
            writer.writerow({k: _cell(v) for k, v in as_row(item).items()})
        finish()
        return
    if fmt == "json":
        out.write('{"findings": [')
        first = True
        async for item in rows:
            out.write("\n  " if first else ",\n  ")
            out.write(json.dumps(as_row(item), ensure_ascii=False))
            first = False
        out.write("\n" if not first else "")
        out.write(f'], "summary": {json.dumps(finish(), indent=2)}}}\n')
        return
    from rich.table import Table

    table = Table(title="where Kantata differs from the outbox")
    for column in DRIFT_COLUMNS:
        table.add_column(column, overflow="fold")
    shown = 0
    async for item in rows:
        table.add_row(*(_cell(v) for v in as_row(item).values()))
        shown += 1
    finish()
    screen = console()
    if shown:
        screen.print(table)
    else:
        screen.print("no drift: Kantata holds what the outbox says it should")
