"""A worker killed with SIGKILL loses nothing; the token never leaks anywhere."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
import urllib.request

from .conftest import TOKEN, Cli, SandboxProcess, start_sandbox, stop, wait_for


def inspect(sandbox: SandboxProcess, path: str) -> object:
    with urllib.request.urlopen(f"{sandbox.origin}/__sandbox__/{path}", timeout=5) as response:
        return json.loads(response.read())


def test_sigkill_mid_run_then_a_second_run_recovers_everything_once(cli: Cli) -> None:
    rng = random.Random(9)
    intended: dict[int, list[int]] = {}
    titles: dict[int, str] = {}
    lines = []
    for w in range(1, 101):
        current = 100
        for step in range(3):
            if rng.random() < 0.5:
                current = rng.choice([k for k in (200, 310, 400, 600) if k != current])
                intended.setdefault(w, []).append(current)
                change = {"kind": "status_change", "payload": {"to_status_key": current}}
            else:
                titles[w] = f"w{w}-{step}"
                change = {"kind": "workspace_update", "payload": {"title": titles[w]}}
            lines.append(json.dumps({"workspace_id": w, **change}))
    sandbox = start_sandbox("--latency-ms", "40")
    try:
        cli("db", "upgrade")
        assert cli("enqueue", "-f", "-", input="\n".join(lines) + "\n").returncode == 0
        env = {
            "KANTATA_SYNC_API_BASE_URL": sandbox.url,
            "KANTATA_SYNC_TOKEN": TOKEN,
            "KANTATA_SYNC_LEASE_SECONDS": "3",
            "KANTATA_SYNC_RATE_LIMIT": "100",
        }
        database = sqlite3.connect(cli.cwd / "outbox.db")

        def count(state: str) -> int:
            row = database.execute(
                "SELECT count(*) FROM sync_changes WHERE state = ?", (state,)
            ).fetchone()
            return int(row[0]) if row else 0

        first = cli.popen("run", env=env)
        wait_for(lambda: count("succeeded") >= 20, timeout=30)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        assert first.returncode == -signal.SIGKILL
        assert count("in_flight") > 0  # the dead worker's claims, leased but never finished
        early = cli("run", env=env)  # before the leases expire, nothing can be taken over
        assert early.returncode == 0 and count("in_flight") > 0
        time.sleep(3.5)

        second = cli("run", env=env)
        assert second.returncode == 0, second.stderr[-2000:]
        assert count("succeeded") == len(lines), second.stderr[-3000:]
        for w in range(1, 101):
            history = inspect(sandbox, f"workspaces/{w}/status_changes")
            assert isinstance(history, dict)
            recorded = [c["to_status_key"] for c in history["status_changes"]]
            assert recorded == intended.get(w, []), w
            if w in titles:
                workspace = inspect(sandbox, f"workspaces/{w}")
                assert isinstance(workspace, dict) and workspace["title"] == titles[w]
    finally:
        stop(sandbox.process)


def test_the_token_appears_in_no_log_error_report_metric_or_row(cli: Cli) -> None:
    token = "tok-9f3c1e7d-SECRET"
    wrong = "tok-wrong-0a1b2c-SECRET"
    sandbox = start_sandbox(
        "--token",
        token,
        "--error-rate",
        "0.2",
        "--drop-rate",
        "0.05",
        "--seed",
        "4",
        "--forbidden",
        "3",
    )
    outputs: list[str] = []
    try:
        cli("db", "upgrade")
        records = [
            {"workspace_id": w, "kind": "status_change", "payload": {"to_status_key": 310}}
            for w in range(1, 31)
        ] + [{"workspace_id": 1, "kind": "workspace_update", "payload": {"title": ""}}]
        outputs.append(
            cli("enqueue", "-f", "-", input="".join(json.dumps(r) + "\n" for r in records)).stderr
        )
        base = {"KANTATA_SYNC_API_BASE_URL": sandbox.url, "KANTATA_SYNC_LOG_LEVEL": "debug"}
        rejected = cli("run", env={**base, "KANTATA_SYNC_TOKEN": wrong})
        assert rejected.returncode == 5
        textfile = cli.cwd / "metrics.prom"
        (cli.cwd / "token").write_text(token + "\n")
        ran = cli(
            "run",
            "--metrics-textfile",
            str(textfile),
            env={**base, "KANTATA_SYNC_TOKEN_FILE": str(cli.cwd / "token")},
        )
        assert ran.returncode == 0
        checked = cli("config", "check", env={"KANTATA_SYNC_TOKEN": token})
        outputs += [
            rejected.stdout,
            rejected.stderr,
            ran.stdout,
            ran.stderr,
            checked.stdout,
            checked.stderr,
            textfile.read_text(),
        ]
        for fmt in ("table", "json", "csv"):
            report = cli("report", "--format", fmt)
            outputs += [report.stdout, report.stderr]
        outputs.append(cli("status", "--format", "json").stdout)
        outputs.append((cli.cwd / "outbox.db").read_bytes().decode("latin-1"))
        outputs.append(json.dumps(inspect(sandbox, "stats")))
    finally:
        stop(sandbox.process)
    assert '"event": "http.attempt"' in ran.stderr
    assert "gave up" in "".join(outputs) or "succeeded" in "".join(outputs)
    for text in outputs:
        assert token not in text
        assert wrong not in text
