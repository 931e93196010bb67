"""plan → run → verify → repair, through the CLI against a sandbox process, as an operator would.

500 workspaces are synced (coalesced updates, custom fields merged across requests, dates, money,
statuses by POST and by PUT, archived projects); the sandbox's request log must equal the plan.
Then 7 workspaces are edited in "Kantata's UI": verify must report exactly those 7 fields, in
3 read requests, and ``--repair`` followed by ``run`` must leave no drift.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from collections import defaultdict
from typing import Any

from .conftest import TOKEN, Cli, SandboxProcess, start_sandbox, stop

EXIT_DRIFT, EXIT_TOKEN, EXIT_UNREADABLE = 1, 5, 6
WORKSPACES = 500


def control(sandbox: SandboxProcess, path: str, body: Any = None, method: str = "GET") -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{sandbox.origin}/__sandbox__/{path}",
        data=data,
        method=method if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def changes() -> str:
    lines: list[dict[str, Any]] = []
    for n in range(1, WORKSPACES + 1):
        ws = {"workspace_id": n, "kind": "workspace_update"}
        lines += [
            {
                **ws,
                "payload": {
                    "title": f"Old {n}",
                    "price": 1000 + n,
                    "custom_fields": [{"custom_field_id": 7, "value": "a"}],
                },
            },
            {**ws, "payload": {"title": f"Project {n}!", "due_date": "2027-06-30"}},
            {"workspace_id": n, "kind": "status_change", "payload": {"to_status_key": 310}},
            {
                **ws,
                "payload": {
                    "custom_fields": [{"custom_field_id": 8, "value": "[998, USD]"}],
                    "start_date": "2027-01-04",
                },
            },
        ]
        if n % 5 == 0:
            lines.append({**ws, "payload": {"status_key": 410, "expenses_in_burn_rate": True}})
        if n % 50 == 0:
            lines.append({**ws, "payload": {"archived": True}})
    return "".join(json.dumps(line) + "\n" for line in lines)


def per_workspace(requests: list[tuple[str, str, Any]]) -> dict[int, list[tuple[str, str, Any]]]:
    grouped: dict[int, list[tuple[str, str, Any]]] = defaultdict(list)
    for method, target, body in requests:
        if target.startswith("/workspace_status_changes"):
            workspace = body["workspace_status_change"]["workspace_id"]
        else:
            workspace = int(target.split("/")[2])
        grouped[workspace].append((method, target, body))
    return dict(grouped)


EDITS: list[tuple[int, dict[str, Any], str]] = [
    (3, {"title": "Renamed in the UI"}, "title"),
    (41, {"custom_fields": [{"custom_field_id": 7, "value": "ui"}]}, "custom_fields.7"),
    (77, {"custom_fields": [{"custom_field_id": 8, "value": "[999, USD]"}]}, "custom_fields.8"),
    (120, {"price": 1}, "price"),
    (250, {"due_date": "2027-07-01"}, "due_date"),
    (333, {"status_key": 600}, "status"),
    (450, {"archived": False}, "archived"),
]


def test_plan_run_verify_repair(cli: Cli) -> None:
    sandbox = start_sandbox("--workspaces", str(WORKSPACES))
    try:
        # One claim holds the whole queue: where a workspace's changes straddle two claims,
        # which claim takes which part can depend on the run's timing (see `plan --help`).
        cli.env["KANTATA_SYNC_BATCH_SIZE"] = "5000"
        api = {"KANTATA_SYNC_API_BASE_URL": sandbox.url, "KANTATA_SYNC_TOKEN": TOKEN}
        fast = {**api, "KANTATA_SYNC_RATE_LIMIT": "0", "KANTATA_SYNC_LOG_LEVEL": "warning"}
        budget = {**api, "KANTATA_SYNC_RATE_LIMIT": "50"}
        assert cli("db", "upgrade").returncode == 0
        assert cli("enqueue", "-f", "-", input=changes()).returncode == 0

        planned = cli("plan", "--format", "json")
        assert planned.returncode == 0, planned.stderr
        plan = json.loads(planned.stdout)
        summary = plan["summary"]
        assert summary["changes"] == 2110 and summary["invalid"] == 0
        # Per workspace: PUT (two updates merged), POST, then in a second claim the PUT of the
        # later updates (one sets status_key: a second status change waits for its turn).
        assert summary["requests"] == 1500 and summary["claims"] == 2
        assert (
            cli("plan", "--format", "jsonl", "--limit", "4").stdout.count('"type": "request"') == 3
        )

        run = cli("run", env=fast)
        assert run.returncode == 0, run.stderr
        log = control(sandbox, "requests")["requests"]
        assert {entry["status"] for entry in log} == {200}
        sent = per_workspace([(e["method"], e["target"], e["body"]) for e in log])
        expected = per_workspace([(r["method"], r["path"], r["body"]) for r in plan["requests"]])
        assert sent == expected

        # In step: no drift, one read per 200 workspaces.
        control(sandbox, "reset_stats", {})
        clean = cli("verify", "--format", "json", env=budget)
        assert clean.returncode == 0, clean.stderr
        assert json.loads(clean.stdout)["findings"] == []

        for workspace, fields, _ in EDITS:
            control(sandbox, f"workspaces/{workspace}/edit", {"workspace": fields})
        control(sandbox, "reset_stats", {})
        drift = cli("verify", "--format", "json", env=budget)
        assert drift.returncode == EXIT_DRIFT, drift.stderr
        report = json.loads(drift.stdout)
        assert {(f["workspace_id"], f["field"]) for f in report["findings"]} == {
            (w, field) for w, _, field in EDITS
        }
        assert {f["finding"] for f in report["findings"]} == {"drifted"}
        assert report["summary"]["read_requests"] == 3
        stats = control(sandbox, "stats")
        assert stats["requests"]["GET /workspaces"] == {"200": 3}
        assert "7 field(s) drifted in 7 workspace(s)" in drift.stderr

        repaired = cli("verify", "--repair", "--format", "csv", env=budget)
        assert repaired.returncode == EXIT_DRIFT
        rows = list(csv.DictReader(io.StringIO(repaired.stdout)))
        assert {(int(r["workspace_id"]), r["field"]) for r in rows} == {(w, f) for w, _, f in EDITS}
        assert "enqueued 7 repair change(s) for 7 workspace(s)" in repaired.stderr
        refs = json.loads(cli("report", "--format", "json", "--state", "pending").stdout)
        assert len(refs) == 7 and all(r["source_ref"].startswith("verify:") for r in refs)

        assert cli("run", env=fast).returncode == 0
        after = cli("verify", env=budget)
        assert after.returncode == 0, after.stdout + after.stderr
        assert "no drift" in after.stdout
        assert TOKEN not in drift.stdout + drift.stderr + repaired.stdout + repaired.stderr
    finally:
        stop(sandbox.process)


def test_unreadable_and_rejected_token_exit_codes(cli: Cli) -> None:
    sandbox = start_sandbox("--workspaces", "5", "--request-log", "0")
    try:
        api = {"KANTATA_SYNC_API_BASE_URL": sandbox.url, "KANTATA_SYNC_TOKEN": TOKEN}
        assert cli("db", "upgrade").returncode == 0
        line = {"workspace_id": 2, "kind": "workspace_update", "payload": {"title": "Project 2"}}
        assert cli("enqueue", "-f", "-", input=json.dumps(line) + "\n").returncode == 0
        assert cli("run", env={**api, "KANTATA_SYNC_RATE_LIMIT": "0"}).returncode == 0

        control(sandbox, "faults", {"error_rate": 1.0, "seed": 1})
        env = {**api, "KANTATA_SYNC_MAX_ATTEMPTS": "2", "KANTATA_SYNC_RATE_LIMIT": "0"}
        unreadable = cli("verify", "--format", "csv", env=env)
        assert unreadable.returncode == EXIT_UNREADABLE, unreadable.stderr
        [row] = csv.DictReader(io.StringIO(unreadable.stdout))
        assert (row["workspace_id"], row["finding"], row["field"]) == ("2", "unreadable", "")
        assert "could not be read after retries" in unreadable.stderr

        assert control(sandbox, "requests") == {"requests": []}  # --request-log 0
        control(sandbox, "faults", {})
        rejected = cli("verify", env={**env, "KANTATA_SYNC_TOKEN": "not-the-token"})
        assert rejected.returncode == EXIT_TOKEN
        assert "token was rejected" in rejected.stderr
    finally:
        stop(sandbox.process)
