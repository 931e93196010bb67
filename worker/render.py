"""How ``status``, ``report``, ``show`` and ``runs`` print: rich tables, or JSON, CSV, JSON Lines.

``report --format jsonl`` writes what ``enqueue`` reads back: the producer columns alone, the
payload as an object, so that ``report --format jsonl --state failed``, edited, goes back in
with ``enqueue --supersede -f -``.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from .coordination import WorkerInfo
from .explain import Explanation
from .history import ChangeHistory

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
    "completed_at",
    "payload",
    "last_request_id",
    "superseded_by",
    "operator_note",
)
TABLE_HIDES = frozenset(
    {
        "created_at",
        "updated_at",
        "merged_into_id",
        "completed_at",
        "payload",
        "superseded_by",
        "operator_note",
    }
)
PRODUCER_COLUMNS = ("workspace_id", "kind", "payload", "source_ref")


def console() -> Any:
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def plain(value: Any) -> Any:
    """A value as JSON and CSV carry it."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def payload_value(text: Any) -> Any:
    """A stored payload as JSON carries it: the object it holds, or the text if it holds none."""
    text = plain(text)
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A report row for ``--format json``."""
    return {k: payload_value(row[k]) if k == "payload" else plain(row[k]) for k in REPORT_COLUMNS}


def enqueue_line(row: dict[str, Any]) -> str:
    """A report row as one line ``enqueue`` reads: the producer columns only."""
    record = {
        k: payload_value(row[k]) if k == "payload" else plain(row[k])
        for k in ("workspace_id", "kind", "payload")
    }
    if row.get("source_ref") is not None:
        record["source_ref"] = plain(row["source_ref"])
    return json.dumps(record, ensure_ascii=False)


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
        "rate_budgets": [budget_data(b) for b in budgets or []],
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


def budget_data(row: dict[str, Any]) -> dict[str, Any]:
    """One ``sync_rate_limits`` row as ``status`` shows it (learned budgets say what is known)."""
    data: dict[str, Any] = {
        "token": row["token_key"],
        "mode": "auto" if row.get("auto") else "fixed",
        "budget_per_s": round(row["budget"], 3),
        "rate_per_s": round(row["rate"], 3),
        "rate_limited_total": row["throttled"],
    }
    if row.get("auto"):
        sent = int(row.get("sent") or 0)
        data.update(
            learned_per_s=round(row["good"], 3) if row.get("good") else None,
            lowest_refused_per_s=round(row["bad"], 3) if row.get("bad") is not None else None,
            requests_total=sent,
            throttled_fraction=round(row["throttled"] / sent, 5) if sent else None,
        )
    return data


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
        if b["mode"] == "auto":
            learned = b["learned_per_s"]
            refused = b["lowest_refused_per_s"]
            fraction = b["throttled_fraction"]
            out.print(
                f"learned rate budget {b['token']}: sending at {b['rate_per_s']:g}/s; "
                f"known good {f'{learned:g}/s' if learned else 'not yet'}, "
                f"429 at {f'{refused:g}/s' if refused else 'not yet seen'} "
                f"(ceiling {b['budget_per_s']:g}/s); {b['rate_limited_total']} answers of 429"
                + (f" ({fraction:.2%} of requests)" if fraction is not None else "")
            )
            continue
        out.print(
            f"rate budget {b['token']}: {b['rate_per_s']:g}/s of {b['budget_per_s']:g}/s, "
            f"{b['rate_limited_total']} answers of 429 so far"
        )


async def write_report(rows: AsyncIterator[dict[str, Any]], fmt: str) -> None:
    """Stream the report's rows to stdout as a table, JSON, JSON Lines or CSV."""
    out = sys.stdout
    if fmt == "csv":
        writer: csv.DictWriter[str] = csv.DictWriter(out, REPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        async for row in rows:
            writer.writerow({k: plain(row[k]) for k in REPORT_COLUMNS})
        return
    if fmt == "jsonl":
        async for row in rows:
            out.write(enqueue_line(row) + "\n")
        return
    if fmt == "json":
        out.write("[")
        first = True
        async for row in rows:
            out.write("\n  " if first else ",\n  ")
            out.write(json.dumps(json_row(row)))
            first = False
        out.write("\n]\n" if not first else "]\n")
        return
    from rich.table import Table

    table = Table()
    shown = [k for k in REPORT_COLUMNS if k not in TABLE_HIDES]
    for column in shown:
        table.add_column(column, overflow="fold")
    async for row in rows:
        table.add_row(*(_cell(row[k]) for k in shown))
    console().print(table)


def id_list(ids: list[int], shown: int = 50) -> str:
    text = ", ".join(str(i) for i in ids[:shown])
    return text + (f", ... ({len(ids) - shown} more)" if len(ids) > shown else "")


# -- show and runs ---------------------------------------------------------------------------


def show_data(history: ChangeHistory, why: Explanation | None) -> dict[str, Any]:
    """What ``show`` shows, as one JSON-ready object."""
    change = {key: plain(value) for key, value in history.change.items()}
    change["payload"] = payload_value(change["payload"])
    if change.get("result") is not None:
        change["result"] = payload_value(change["result"])
    note = change.get("operator_note")
    return {
        "change": change,
        "why_not_sent": None
        if why is None
        else {
            "why": str(why.why),
            "message": why.message,
            "until": plain(why.until),
            "change_id": why.change_id,
            "worker": why.worker,
        },
        "operator_notes": note.splitlines() if isinstance(note, str) else [],
        "supersedes": history.predecessors,
        "superseded_by": change.get("superseded_by"),
        "merged_into_id": change.get("merged_into_id"),
        "carried": history.carried,
        "attempts": [
            {
                "attempted_at": plain(a["attempted_at"]),
                "run_id": a["run_id"],
                "endpoint": a["endpoint"],
                "http_status": a["http_status"],
                "duration_ms": a["duration_ms"],
                "error_type": a["error_type"],
                "error_message": a["error_message"],
                "request_id": a["request_id"],
                "change_ids": sorted(int(i) for i in str(a["change_ids"]).split(",") if i),
            }
            for a in history.attempts
        ],
        "runs": [runs_row(run) for run in history.runs],
    }


def runs_row(run: dict[str, Any]) -> dict[str, Any]:
    return {key: plain(value) for key, value in run.items()}


def _cell(value: Any) -> Any:
    """A table cell shown as it is: brackets in an error message are not rich markup."""
    from rich.text import Text

    return Text("" if value is None else str(plain(value)))


def print_show(data: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    change = data["change"]
    out = console()
    ref = f" ({change['source_ref']})" if change.get("source_ref") else ""
    out.print(Text(f"change {change['id']}{ref}", style="bold"))
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column(overflow="fold")
    outcome = f" / {change['outcome']}" if change.get("outcome") else ""
    rows: list[tuple[str, Any]] = [
        ("workspace", change["workspace_id"]),
        ("kind", change["kind"]),
        ("state", f"{change['state']}{outcome}"),
        ("payload", json.dumps(change["payload"], ensure_ascii=False)),
        ("attempts", change["attempts"]),
        ("created", change["created_at"]),
        ("updated", change.get("updated_at")),
        ("completed", change.get("completed_at")),
        ("next attempt", change.get("next_attempt_at")),
        (
            "lease",
            change.get("lease_owner")
            and f"{change['lease_owner']} until {change.get('lease_expires_at')}",
        ),
    ]
    if change.get("http_status") is not None or change.get("error_type"):
        error = " ".join(str(change[k]) for k in ("http_status", "error_type") if change.get(k))
        field = f" (field {change['error_field']})" if change.get("error_field") else ""
        rows.append(("last answer", f"{error}: {change.get('error_message') or ''}{field}"))
    if change.get("result") is not None:
        rows.append(("result", json.dumps(change["result"], ensure_ascii=False)))
    if data["why_not_sent"] is not None:
        rows.append(("why not sent", data["why_not_sent"]["message"]))
    if data["supersedes"]:
        rows.append(("supersedes", ", ".join(str(i) for i in data["supersedes"])))
    rows.append(("superseded by", data["superseded_by"]))
    rows.append(("merged into", data["merged_into_id"]))
    if data["carried"]:
        rows.append(("carried", id_list(data["carried"])))
    for label, value in rows:
        if value is not None and value != "":
            facts.add_row(label, _cell(value))
    for note in data["operator_notes"]:
        facts.add_row("operator", _cell(note))
    out.print(facts)
    if not data["attempts"]:
        out.print("attempts: none (no request has carried it)")
        return

    attempts = Table(title=f"attempts ({len(data['attempts'])})", title_justify="left")
    for column in ("time", "run", "endpoint", "status", "ms", "error", "request id", "with"):
        attempts.add_column(column, overflow="fold")
    for a in data["attempts"]:
        error = " ".join(str(a[k]) for k in ("error_type", "error_message") if a[k])
        others = [i for i in a["change_ids"] if i != change["id"]]
        attempts.add_row(
            _cell(a["attempted_at"]),
            _cell(a["run_id"]),
            _cell(a["endpoint"]),
            _cell(a["http_status"]),
            _cell(f"{a['duration_ms']:.0f}" if a["duration_ms"] is not None else ""),
            _cell(error),
            _cell(a["request_id"]),
            _cell(id_list(others, 10)),
        )
    out.print(attempts)
    if data["runs"]:
        out.print(runs_table(data["runs"], title="runs that carried it"))


RUN_TABLE = (
    ("id", "id"),
    ("worker", "worker"),
    ("command", "command"),
    ("started", "started_at"),
    ("finished", "finished_at"),
    ("ended", "ended_because"),
    ("claimed", "claimed"),
    ("ok", "succeeded"),
    ("failed", "failed"),
    ("invalid", "invalid"),
    ("retried", "retried"),
    ("requests", "requests"),
    ("seconds", "duration_s"),
)


def runs_table(runs: list[dict[str, Any]], title: str | None = None) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for header, _ in RUN_TABLE:
        numeric = header in {"claimed", "ok", "failed", "invalid", "retried", "requests", "seconds"}
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")
    for run in runs:
        table.add_row(*(_cell(run[key]) for _, key in RUN_TABLE))
    return table


def print_runs(runs: list[dict[str, Any]]) -> None:
    console().print(runs_table(runs))
