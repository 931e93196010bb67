"""Several worker processes on one PostgreSQL: one queue, one rate budget, no double sends."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path

import asyncpg
import pytest

from .conftest import TOKEN, Cli, SandboxProcess, start_sandbox, stop, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

WORKSPACES = 600  # 6,000 changes: ten seconds of the whole budget
PER_WORKSPACE = 10
BUDGET = 600
STATUS_CYCLE = (200, 310, 400, 600, 300)


def inspect(sandbox: SandboxProcess, path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{sandbox.origin}/__sandbox__/{path}", timeout=10) as response:
        data = json.loads(response.read())
    assert isinstance(data, dict)
    return data


def write_changes(path: Path) -> tuple[dict[int, list[int]], dict[int, str]]:
    """Updates and status changes alternate, so none coalesce: one request per change."""
    statuses: dict[int, list[int]] = {}
    titles: dict[int, str] = {}
    with path.open("w") as out:
        for step in range(PER_WORKSPACE):
            for w in range(1, WORKSPACES + 1):
                if step % 2:
                    key = STATUS_CYCLE[(w + step) % len(STATUS_CYCLE)]
                    statuses.setdefault(w, []).append(key)
                    record = {"kind": "status_change", "payload": {"to_status_key": key}}
                else:
                    titles[w] = f"w{w}-s{step}"
                    record = {"kind": "workspace_update", "payload": {"title": titles[w]}}
                out.write(json.dumps({"workspace_id": w, **record}) + "\n")
    return statuses, titles


def query(pg_url: str, sql: str) -> list[asyncpg.Record]:
    import asyncio

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(pg_url)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(go())


def worker_env(cli: Cli, pg_url: str, sandbox: SandboxProcess, **extra: str) -> dict[str, str]:
    return {
        "KANTATA_SYNC_DATABASE_URL": pg_url,
        "KANTATA_SYNC_API_BASE_URL": sandbox.url,
        "KANTATA_SYNC_TOKEN": TOKEN,
        "KANTATA_SYNC_RATE_LIMIT": str(BUDGET),
        "KANTATA_SYNC_CONCURRENCY": "16",
        "KANTATA_SYNC_BATCH_SIZE": "200",
        "KANTATA_SYNC_LOG_LEVEL": "warning",
        **extra,
    }


def check_history(sandbox: SandboxProcess, statuses: dict[int, list[int]]) -> None:
    history = inspect(sandbox, "history")["status_changes"]
    assert isinstance(history, list)
    by_workspace: dict[int, list[int]] = {}
    for change in history:
        by_workspace.setdefault(change["workspace_id"], []).append(change["to_status_key"])
    assert by_workspace == statuses


def test_four_workers_share_one_queue_and_one_budget(cli: Cli, pg_url: str) -> None:
    sandbox = start_sandbox("--workspaces", str(WORKSPACES), "--rate-limit", str(BUDGET))
    try:
        statuses, titles = write_changes(cli.cwd / "changes.jsonl")
        env = worker_env(cli, pg_url, sandbox)
        assert cli("db", "upgrade", env=env).returncode == 0
        assert cli("enqueue", "-f", "changes.jsonl", env=env).returncode == 0
        workers = [cli.popen("run", "--no-progress", env=env) for _ in range(4)]

        def all_four_listed() -> bool:
            shown = json.loads(cli("status", "--format", "json", env=env).stdout)
            return len(shown["workers"]) == 4

        wait_for(all_four_listed, timeout=60)
        for process in workers:
            _out, err = process.communicate(timeout=300)
            assert process.returncode == 0, err[-2000:]
        assert json.loads(cli("status", "--format", "json", env=env).stdout)["workers"] == []

        total = WORKSPACES * PER_WORKSPACE
        states = query(pg_url, "SELECT state, count(*) AS n FROM sync_changes GROUP BY state")
        assert {r["state"]: r["n"] for r in states} == {"succeeded": total}
        runs = query(pg_url, "SELECT claimed FROM sync_runs")
        assert len(runs) == 4 and all(r["claimed"] > 0 for r in runs)

        stats = inspect(sandbox, "stats")
        requests = stats["requests"]
        assert isinstance(requests, dict)
        assert requests["PUT /workspaces/{id}"] == {"200": total // 2}
        assert requests["POST /workspace_status_changes"] == {"200": total // 2}
        assert stats["total_429"] == 0
        assert isinstance(stats["max_accepted_per_second"], int)
        assert stats["max_accepted_per_second"] <= BUDGET
        check_history(sandbox, statuses)
        for w in (1, WORKSPACES // 2, WORKSPACES):
            assert inspect(sandbox, f"workspaces/{w}")["title"] == titles[w]
    finally:
        for process in locals().get("workers", []):
            if process.poll() is None:
                process.kill()
                process.communicate()
        stop(sandbox.process)


def test_a_killed_worker_s_changes_finish_on_the_others(cli: Cli, pg_url: str) -> None:
    sandbox = start_sandbox("--workspaces", str(WORKSPACES), "--latency-ms", "5")
    try:
        statuses, titles = write_changes(cli.cwd / "changes.jsonl")
        env = worker_env(
            cli,
            pg_url,
            sandbox,
            KANTATA_SYNC_LEASE_SECONDS="10",
            KANTATA_SYNC_RETRY_MAX_DELAY="12",
        )
        cli("db", "upgrade", env=env)
        cli("enqueue", "-f", "changes.jsonl", env=env)
        workers = [cli.popen("run", "--no-progress", env=env) for _ in range(4)]

        def victim_holds_changes() -> bool:
            rows = query(
                pg_url,
                "SELECT count(*) AS n FROM sync_changes WHERE state = 'succeeded'",
            )
            return rows[0]["n"] >= 1000

        wait_for(victim_holds_changes, timeout=120)
        held = query(
            pg_url,
            "SELECT lease_owner, count(*) AS n FROM sync_changes "
            "WHERE state = 'in_flight' GROUP BY lease_owner",
        )
        assert held, "no worker held changes when the victim was killed"
        workers[0].send_signal(signal.SIGKILL)
        errors = []
        for process in workers:
            try:
                errors.append(process.communicate(timeout=300)[1])
            except subprocess.TimeoutExpired:
                process.kill()
                raise
        assert workers[0].returncode == -signal.SIGKILL
        for process, err in zip(workers[1:], errors[1:], strict=True):
            assert process.returncode == 0, err[-2000:]

        total = WORKSPACES * PER_WORKSPACE
        states = query(pg_url, "SELECT state, count(*) AS n FROM sync_changes GROUP BY state")
        assert {r["state"]: r["n"] for r in states} == {"succeeded": total}
        stats = inspect(sandbox, "stats")
        requests = stats["requests"]
        assert isinstance(requests, dict)
        # Status changes are never recorded twice. A PUT the victim sent but had not yet
        # written back is sent again by a survivor (PUT is idempotent): at most what the
        # victim held, two claim batches.
        assert requests["POST /workspace_status_changes"].get("200") == total // 2
        puts = requests["PUT /workspaces/{id}"]["200"]
        assert total // 2 <= puts <= total // 2 + 2 * 200
        check_history(sandbox, statuses)
        for w in (1, WORKSPACES // 2, WORKSPACES):
            assert inspect(sandbox, f"workspaces/{w}")["title"] == titles[w]
    finally:
        for process in locals().get("workers", []):
            if process.poll() is None:
                process.kill()
                process.communicate()
        stop(sandbox.process)
