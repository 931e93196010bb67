"""How ``status`` and ``report`` print: rich tables on a terminal, JSON or CSV for scripts."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from .coordination import WorkerInfo

REPORT_COLUMNS = (
    "id",
    "source_ref",
    "workspace_id",
    "kind",
    "state",
    "outcome",
    "attempts",
    "http_status",
    "error_type",
    "error_message",
    "error_field",
    "merged_into_id",
    "created_at",
    "updated_at",
)
TABLE_HIDES = frozenset({"created_at", "updated_at", "merged_into_id"})


def console() -> Any:
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def plain(value: Any) -> Any:
    """A value as JSON and CSV carry it."""
    return value.isoformat() if isinstance(value, datetime) else value


def status_data(
    counts: dict[str, int],
    breakdown: list[tuple[str, str | None, int]],
    oldest_age: float | None,
    live: list[WorkerInfo],
    dead: int,
    budgets: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What ``status`` shows, as one JSON-ready object."""
    return {
        "rate_budgets": [
            {
                "token": b["token_key"],
                "budget_per_s": round(b["budget"], 3),
                "rate_per_s": round(b["rate"], 3),
                "rate_limited_total": b["throttled"],
            }
            for b in budgets or []
        ],
        "states": counts,
        "outcomes": [
            {"state": state, "outcome": outcome, "count": count}
            for state, outcome, count in breakdown
        ],
        "oldest_pending_age_seconds": round(oldest_age, 1) if oldest_age is not None else None,
        "workers": [
            {
                "name": w.name,
                "host": w.host,
                "pid": w.pid,
                "command": w.command,
                "started_at": w.started_at.isoformat(),
                "heartbeat_at": w.heartbeat_at.isoformat(),
            }
            for w in live
        ],
        "dead_workers": dead,
    }


def print_status(data: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="sync_changes")
    table.add_column("state")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    for row in data["outcomes"]:
        table.add_row(row["state"], row["outcome"] or "", str(row["count"]))
    out = console()
    out.print(table)
    age = data["oldest_pending_age_seconds"]
    out.print(f"oldest pending change: {f'{age:.0f} s old' if age is not None else 'none'}")
    workers = ", ".join(f"{w['name']} ({w['command']} on {w['host']})" for w in data["workers"])
    out.print(f"live workers: {workers or 'none'}")
    for b in data["rate_budgets"]:
        out.print(
            f"rate budget {b['token']}: {b['rate_per_s']:g}/s of {b['budget_per_s']:g}/s, "
            f"{b['rate_limited_total']} answers of 429 so far"
        )


async def write_report(rows: AsyncIterator[dict[str, Any]], fmt: str) -> None:
    """Stream the report's rows to stdout as a table, JSON or CSV."""
    out = sys.stdout
    if fmt == "csv":
        writer: csv.DictWriter[str] = csv.DictWriter(out, REPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        async for row in rows:
            writer.writerow({k: plain(row[k]) for k in REPORT_COLUMNS})
        return
    if fmt == "json":
        out.write("[")
        first = True
        async for row in rows:
            out.write("\n  " if first else ",\n  ")
            out.write(json.dumps({k: plain(row[k]) for k in REPORT_COLUMNS}))
            first = False
        out.write("\n]\n" if not first else "]\n")
        return
    from rich.table import Table

    table = Table()
    shown = [k for k in REPORT_COLUMNS if k not in TABLE_HIDES]
    for column in shown:
        table.add_column(column, overflow="fold")
    async for row in rows:
        table.add_row(*("" if row[k] is None else str(row[k]) for k in shown))
    console().print(table)


def id_list(ids: list[int], shown: int = 50) -> str:
    text = ", ".join(str(i) for i in ids[:shown])
    return text + (f", ... ({len(ids) - shown} more)" if len(ids) > shown else "")
