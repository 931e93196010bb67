"""show, the correction loop through a real pipe, and prune, as an operator runs them."""

from __future__ import annotations

import json
import subprocess
import time

from .conftest import KANTATA_SYNC, TOKEN, Cli, SandboxProcess

EXIT_INPUT, EXIT_USAGE = 1, 2


def lines(*records: dict[str, object]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_explain_correct_and_prune(cli: Cli, sandbox_process: SandboxProcess) -> None:
    assert cli("db", "upgrade").returncode == 0
    enqueued = cli(
        "enqueue",
        "-f",
        "-",
        input=lines(
            {
                "workspace_id": 13,  # the sandbox forbids it: 403
                "kind": "status_change",
                "payload": {"to_status_key": 310},
                "source_ref": "crm-13",
            },
            {"workspace_id": 1, "kind": "workspace_update", "payload": {"title": "A"}},
            {"workspace_id": 1, "kind": "workspace_update", "payload": {"title": "B"}},
        ),
    )
    assert enqueued.returncode == 0, enqueued.stderr
    env = {"KANTATA_SYNC_API_BASE_URL": sandbox_process.url, "KANTATA_SYNC_TOKEN": TOKEN}
    assert cli("run", env=env).returncode == 0

    # show: the request that carried it, with Kantata's request ID, and the run that sent it.
    shown = cli("show", "--source-ref", "crm-13", "--format", "json")
    data = json.loads(shown.stdout)
    assert data["change"]["state"] == "failed" and data["why_not_sent"] is None
    [attempt] = data["attempts"]
    assert attempt["http_status"] == 403 and attempt["request_id"]
    assert attempt["endpoint"] == "POST /workspace_status_changes"
    [run] = data["runs"]
    assert (run["id"], run["command"], run["ended_because"]) == (
        attempt["run_id"],
        "run",
        "drained",
    )
    missing = cli("show", "999")
    assert missing.returncode == EXIT_INPUT
    assert missing.stderr.strip() == "kantata-sync: no change with ID 999"

    # The correction loop, through a pipe: the failed change, edited, replaces itself.
    loop = (
        f"{KANTATA_SYNC} report --format jsonl --state failed | sed s/310/320/ "
        f"| {KANTATA_SYNC} enqueue --supersede -f -"
    )
    corrected = subprocess.run(
        ["sh", "-c", loop], capture_output=True, text=True, env=cli.env, cwd=cli.cwd, timeout=60
    )
    assert corrected.returncode == 0, corrected.stderr
    assert "enqueued 1 change(s), 1 superseding earlier ones; 0 line(s) rejected" in (
        corrected.stdout
    )
    # The replaced change is history: a second pass finds nothing to send again.
    again = subprocess.run(
        ["sh", "-c", loop], capture_output=True, text=True, env=cli.env, cwd=cli.cwd, timeout=60
    )
    assert again.returncode == 0 and "enqueued 0 change(s), 0 superseding" in again.stdout
    data = json.loads(cli("show", "--source-ref", "crm-13", "--format", "json").stdout)
    assert (data["change"]["id"], data["supersedes"]) == (4, [1])
    assert data["change"]["payload"] == {"to_status_key": 320}
    assert data["why_not_sent"]["why"] == "due"

    bad = cli("prune", "--older-than", "30x")
    assert bad.returncode == EXIT_USAGE and "unknown unit 'x'" in bad.stderr
    cli("cancel", "--id", "4", "--reason", "not needed after all")
    time.sleep(1.1)
    pruned = cli("prune", "--older-than", "1s")
    assert pruned.returncode == 0, pruned.stderr
    assert "pruned 4 change(s), 2 attempt(s) and 1 run(s) older than 1s" in pruned.stdout
    assert TOKEN not in shown.stdout + pruned.stdout + corrected.stdout + corrected.stderr
