"""The CLI as an operator runs it: real processes, a real SQLite file, the sandbox over HTTP."""

from __future__ import annotations

import csv
import io
import json
import signal
import sqlite3
import urllib.request
from pathlib import Path

from .conftest import TOKEN, Cli, SandboxProcess, start_sandbox, stop, wait_for

EXIT_INPUT, EXIT_CONFIG, EXIT_DATABASE, EXIT_TOKEN = 1, 3, 4, 5


def inspect(sandbox: SandboxProcess, path: str) -> object:
    with urllib.request.urlopen(f"{sandbox.origin}/__sandbox__/{path}", timeout=5) as response:
        return json.loads(response.read())


def lines(*records: dict[str, object]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_enqueue_run_status_report_end_to_end(cli: Cli, sandbox_process: SandboxProcess) -> None:
    assert cli("db", "upgrade").returncode == 0
    (cli.cwd / "changes.jsonl").write_text(
        lines(
            {"workspace_id": 1, "kind": "workspace_update", "payload": {"title": "A"}},
            {"workspace_id": 1, "kind": "workspace_update", "payload": {"due_date": "2027-01-31"}},
            {
                "workspace_id": 1,
                "kind": "status_change",
                "payload": {"to_status_key": 310},
                "source_ref": "crm-1",
            },
            {"workspace_id": 13, "kind": "status_change", "payload": {"to_status_key": 310}},
        )
    )
    enqueued = cli("enqueue", "--file", "changes.jsonl")
    assert enqueued.returncode == 0, enqueued.stderr
    assert "enqueued 4 change(s); 0 line(s) rejected" in enqueued.stdout
    from_stdin = cli(
        "enqueue",
        "-f",
        "-",
        input=lines(
            {"workspace_id": 2, "kind": "status_change", "payload": {"to_status_key": 600}}
        ),
    )
    assert from_stdin.returncode == 0

    env = {"KANTATA_SYNC_API_BASE_URL": sandbox_process.url, "KANTATA_SYNC_TOKEN": TOKEN}
    textfile = cli.cwd / "kantata_sync.prom"
    run = cli("run", "--metrics-textfile", str(textfile), env=env)
    assert run.returncode == 0, run.stderr
    log = [json.loads(line) for line in run.stderr.splitlines()]
    summary = [e for e in log if e["event"] == "run.finished"]
    assert len(summary) == 1 and summary[0]["succeeded"] == 4 and summary[0]["failed"] == 1
    assert TOKEN not in run.stderr + run.stdout

    status = json.loads(cli("status", "--format", "json").stdout)
    assert status["states"]["succeeded"] == 4 and status["states"]["failed"] == 1
    assert status["oldest_pending_age_seconds"] is None
    # The run used the default shared budget (10/s), shown by fingerprint, never the token.
    [budget] = status["rate_budgets"]
    assert budget["token"].startswith("sha256:") and budget["budget_per_s"] == 9.8
    assert TOKEN not in json.dumps(status)

    report = json.loads(cli("report", "--format", "json").stdout)
    assert [r["state"] for r in report] == ["succeeded"] * 3 + ["failed", "succeeded"]
    assert [r["outcome"] for r in report[:3]] == ["merged", "applied", "applied"]
    assert report[3]["http_status"] == 403 and "permission" in report[3]["error_message"]
    html = cli("report", "--format", "html", env={"KANTATA_SYNC_TOKEN": TOKEN})
    assert html.returncode == 0, html.stderr
    page = html.stdout
    assert page.lstrip().lower().startswith("<!doctype html>") and "</html>" in page
    assert "<svg" in page and "<script" not in page.lower()  # charts drawn, no script
    for loads in ('src="http', "src='http", 'href="http', "href='http", "url(http"):
        assert loads not in page  # nothing loaded from elsewhere
    assert "permission" in page  # the failed change's message, escaped into the table
    assert page.count("<tr") >= len(report)  # a row per change, at least
    assert TOKEN not in page
    rows = list(
        csv.DictReader(io.StringIO(cli("report", "--format", "csv", "--state", "failed").stdout))
    )
    assert [r["workspace_id"] for r in rows] == ["13"]
    by_ref = json.loads(cli("report", "--format", "json", "--source-ref", "crm-1").stdout)
    assert [r["kind"] for r in by_ref] == ["status_change"]

    workspace = inspect(sandbox_process, "workspaces/1")
    assert isinstance(workspace, dict)
    assert (workspace["title"], workspace["due_date"], workspace["status_key"]) == (
        "A",
        "2027-01-31",
        310,
    )
    metrics = textfile.read_text()
    assert (
        'kantata_sync_http_requests_total{code="200",method="PUT",route="/workspaces/{id}"} 1.0'
    ) in metrics
    assert 'kantata_sync_outbox_finished_changes{state="failed"} 1.0' in metrics
    assert 'kantata_sync_queue_depth{state="pending"} 0.0' in metrics
    assert 'kantata_sync_queue_depth{state="failed"}' not in metrics  # a final state is no queue
    assert 'kantata_sync_build_info{version="' in metrics
    # Only kantata-sync's own series: node_exporter has process_* of its own.
    assert all(line.startswith(("#", "kantata_sync_")) for line in metrics.splitlines()), metrics
    assert "_created" not in metrics
    assert TOKEN not in metrics


def test_enqueue_reports_bad_lines_by_number_and_keeps_the_good_ones(cli: Cli) -> None:
    cli("db", "upgrade")
    result = cli(
        "enqueue",
        "-f",
        "-",
        input=lines(
            {
                "workspace_id": 1,
                "kind": "status_change",
                "payload": {"to_status_key": 310},
                "source_ref": "dup",
            },
            {"workspace_id": 1, "kind": "status_change", "payload": {"to_status_key": 31}},
        )
        + "{oops\n"
        + lines(
            {
                "workspace_id": 2,
                "kind": "workspace_update",
                "payload": {"title": "ok"},
                "source_ref": "dup",
            },
            {"workspace_id": 3, "kind": "workspace_update", "payload": {"title": "fine"}},
        ),
    )
    assert result.returncode == EXIT_INPUT
    assert "line 2: payload.to_status_key: must be a Kantata status key" in result.stderr
    assert "line 3: line: is not valid JSON" in result.stderr
    assert "line 4: source_ref: 'dup' repeats line 1" in result.stderr
    assert "enqueued 2 change(s); 3 line(s) rejected" in result.stdout
    again = cli(
        "enqueue",
        "-f",
        "-",
        input=lines(
            {
                "workspace_id": 1,
                "kind": "status_change",
                "payload": {"to_status_key": 310},
                "source_ref": "dup",
            }
        ),
    )
    assert again.returncode == EXIT_INPUT and "line 1: source_ref: already enqueued" in again.stderr
    status = json.loads(cli("status", "--format", "json").stdout)
    assert status["states"]["pending"] == 2


def test_run_refuses_an_unmigrated_database_in_one_line(cli: Cli) -> None:
    result = cli("run", env={"KANTATA_SYNC_TOKEN": TOKEN})
    assert result.returncode == EXIT_DATABASE
    assert result.stderr.count("\n") == 1
    assert "kantata-sync db upgrade" in result.stderr


def test_bad_configuration_names_the_key(cli: Cli, tmp_path: Path) -> None:
    cases = {
        "KANTATA_SYNC_RATE_LIMIT": ("-3", "rate_limit"),
        "KANTATA_SYNC_API_BASE_URL": ("http://api.example.com/api/v1", "https"),
        "KANTATA_SYNC_CONCURRENCY": ("lots", "concurrency"),
    }
    for variable, (value, expected) in cases.items():
        result = cli("config", "check", env={variable: value})
        assert result.returncode == EXIT_CONFIG, result
        assert expected in result.stderr and variable in result.stderr
    missing = cli("run", env={"KANTATA_SYNC_TOKEN_FILE": str(tmp_path / "nope")})
    assert missing.returncode == EXIT_CONFIG and "token_file" in missing.stderr
    secret = cli("config", "check", env={"KANTATA_SYNC_TOKEN": "s3cr3t-t0ken"})
    assert secret.returncode == 0 and "s3cr3t-t0ken" not in secret.stdout + secret.stderr


def test_unreachable_database_is_one_line_and_exit_4(cli: Cli) -> None:
    result = cli(
        "status",
        env={"KANTATA_SYNC_DATABASE_URL": "postgresql://nobody:pw@127.0.0.1:1/none"},
    )
    assert result.returncode == EXIT_DATABASE
    assert result.stderr.startswith("kantata-sync: database error:")
    assert "pw@" not in result.stderr


def test_rejected_token_stops_the_run_and_returns_changes_untouched(
    cli: Cli, sandbox_process: SandboxProcess
) -> None:
    cli("db", "upgrade")
    cli(
        "enqueue",
        "-f",
        "-",
        input=lines(
            *(
                {"workspace_id": w, "kind": "workspace_update", "payload": {"title": "x"}}
                for w in range(1, 21)
            )
        ),
    )
    result = cli(
        "run",
        env={
            "KANTATA_SYNC_API_BASE_URL": sandbox_process.url,
            "KANTATA_SYNC_TOKEN": "revoked-token-value",
        },
    )
    assert result.returncode == EXIT_TOKEN
    assert "token was rejected" in result.stderr.splitlines()[-1]
    assert "revoked-token-value" not in result.stderr + result.stdout
    database = sqlite3.connect(cli.cwd / "outbox.db")
    assert database.execute("SELECT DISTINCT state, attempts FROM sync_changes").fetchall() == [
        ("pending", 0)
    ]


def test_sigterm_drains_and_leaves_nothing_in_flight(cli: Cli) -> None:
    sandbox = start_sandbox("--latency-ms", "50")
    try:
        cli("db", "upgrade")
        cli(
            "enqueue",
            "-f",
            "-",
            input=lines(
                *(
                    {"workspace_id": w, "kind": "workspace_update", "payload": {"title": "x"}}
                    for w in range(1, 201)
                )
            ),
        )
        run = cli.popen(
            "run",
            env={
                "KANTATA_SYNC_API_BASE_URL": sandbox.url,
                "KANTATA_SYNC_TOKEN": TOKEN,
                "KANTATA_SYNC_RATE_LIMIT": "40",
            },
        )
        database = sqlite3.connect(cli.cwd / "outbox.db")

        def some_done() -> bool:
            row = database.execute(
                "SELECT count(*) FROM sync_changes WHERE state = 'succeeded'"
            ).fetchone()
            return bool(row and row[0] >= 5)

        wait_for(some_done, timeout=30)
        run.send_signal(signal.SIGTERM)
        _out, err = run.communicate(timeout=30)
        assert run.returncode == 0, err
        assert '"ended_because": "stopped"' in err
        states = dict(
            database.execute("SELECT state, count(*) FROM sync_changes GROUP BY state").fetchall()
        )
        assert "in_flight" not in states
        assert states["pending"] > 0 and states["succeeded"] >= 5
        applied = inspect(sandbox, "stats")
        assert isinstance(applied, dict)
        assert applied["requests"]["PUT /workspaces/{id}"]["200"] == states["succeeded"]
    finally:
        stop(sandbox.process)


def test_retry_and_cancel_with_dry_run(cli: Cli) -> None:
    cli("db", "upgrade")
    cli(
        "enqueue",
        "-f",
        "-",
        input=lines(
            *(
                {
                    "workspace_id": w,
                    "kind": "workspace_update",
                    "payload": {"title": "x"},
                    "source_ref": f"r{w}",
                }
                for w in range(1, 4)
            )
        ),
    )
    dry = cli("cancel", "--workspace", "2", "--dry-run")
    assert dry.returncode == 0 and "would cancel 1 change(s): 2" in dry.stdout
    assert (
        "cancelled 2 change(s): 2, 3"
        in cli("cancel", "--source-ref", "r2", "--source-ref", "r3").stdout
    )
    assert "retried 1 change(s): 3" in cli("retry", "--state", "cancelled", "--id", "3").stdout
    assert cli("retry").returncode == 2
    status = json.loads(cli("status", "--format", "json").stdout)
    assert (status["states"]["pending"], status["states"]["cancelled"]) == (2, 1)
