"""`rate_limit = "auto"` as a user runs it: a limit nobody told the worker, learned and kept."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path

from tests.acceptance.conftest import TOKEN, Cli, start_sandbox, stop

LIMIT = 30
"""The sandbox's hidden limit: a strict one-second window, no headers, no Retry-After."""


def changes(first: int, count: int) -> str:
    return "".join(
        json.dumps(
            {"workspace_id": i, "kind": "workspace_update", "payload": {"title": f"Learned {i}"}}
        )
        + "\n"
        for i in range(first, first + count)
    )


def attempts(db: Path, run_id: str) -> list[tuple[float, int | None]]:
    """(seconds since the run's first request, HTTP status) of each attempt of a run."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT attempted_at, http_status FROM sync_attempts WHERE run_id = ?"
            " ORDER BY attempted_at",
            (run_id,),
        ).fetchall()
    times = [datetime.fromisoformat(at).timestamp() for at, _ in rows]
    return [(t - times[0], status) for t, (_, status) in zip(times, rows, strict=True)]


def finished(stderr: str) -> dict[str, object]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return next(line for line in lines if line["event"] == "run.finished")


def test_learns_a_hidden_limit_and_the_next_run_starts_from_it(cli: Cli) -> None:
    sandbox = start_sandbox("--workspaces", "320", "--rate-limit", str(LIMIT))
    try:
        env = {
            "KANTATA_SYNC_API_BASE_URL": sandbox.url,
            "KANTATA_SYNC_TOKEN": TOKEN,
            "KANTATA_SYNC_RATE_LIMIT": "auto",
            "KANTATA_SYNC_RATE_LIMIT_MIN": "5",  # a shorter climb from the floor
            "KANTATA_SYNC_LOG_FORMAT": "json",
            "KANTATA_SYNC_RETRY_MAX_DELAY": "0.5",
        }
        assert cli("db", "upgrade", env=env).returncode == 0
        assert cli("enqueue", "--file", "-", input=changes(1, 220), env=env).returncode == 0
        first = cli("run", "--no-progress", "--metrics-textfile", "run.prom", env=env)
        assert first.returncode == 0, first.stderr[-2000:]
        summary = finished(first.stderr)
        assert summary["succeeded"] == 220
        learned = [
            json.loads(line)
            for line in first.stderr.splitlines()
            if '"rate.learned"' in line and line.startswith("{")
        ]
        assert learned, "no rate.learned line"
        assert TOKEN not in first.stderr

        status = json.loads(cli("status", "--format", "json", env=env).stdout)
        (budget,) = status["rate_budgets"]
        assert budget["mode"] == "auto" and budget["token"].endswith("/write")
        assert 0.5 * LIMIT <= budget["learned_per_s"] <= LIMIT
        assert budget["throttled_fraction"] <= 0.05
        assert "learned rate budget" in cli("status", env=env).stdout
        metrics = (cli.cwd / "run.prom").read_text()
        assert 'kantata_sync_rate_limit_learned_per_second{endpoint_class="write"}' in metrics
        assert 'kantata_sync_rate_limit_throttled_ratio{endpoint_class="write"}' in metrics

        # A second run, as the next timer firing: it starts at the learned rate, not at the
        # floor of 5/s (which would send about 12 requests in its first two seconds).
        assert cli("enqueue", "--file", "-", input=changes(221, 90), env=env).returncode == 0
        second = cli("run", "--no-progress", env=env)
        assert second.returncode == 0, second.stderr[-2000:]
        run_id = str(finished(second.stderr)["run_id"])
        sent = attempts(cli.cwd / "outbox.db", run_id)
        early = [status for at, status in sent if at < 2.0]
        assert len(early) >= 0.5 * LIMIT * 2, f"{len(early)} requests in the first 2 s"
        assert early.count(429) <= 3
    finally:
        stop(sandbox.process)
