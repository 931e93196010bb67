"""Issue 11 on SQLite: two ``run`` processes share one file; one is frozen after its claim.

The frozen worker is stopped outside any transaction (SQLite has no server that could end a
frozen holder's transaction: a process frozen while it holds the file's write lock blocks every
writer for the busy timeout, as the README says). The survivor takes the changes over once the
lease has expired and finishes; the thawed worker then sends nothing stale and writes nothing
over the survivor's results.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

from .conftest import KANTATA_SYNC, TOKEN, Cli, SandboxProcess, start_sandbox, stop, wait_for

WORKSPACES = 30
ROUNDS = 4
LEASE = 4
STATUSES = (200, 310, 400, 600)


def _inspect(sandbox: SandboxProcess, path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{sandbox.origin}/__sandbox__/{path}", timeout=10) as answer:
        data = json.loads(answer.read())
    assert isinstance(data, dict)
    return data


def _writes(sandbox: SandboxProcess) -> int:
    """PUTs and status-change POSTs the sandbox has answered, whatever the answer."""
    requests = _inspect(sandbox, "stats")["requests"]
    assert isinstance(requests, dict)
    return sum(
        sum(by_status.values())
        for route, by_status in requests.items()
        if route in ("PUT /workspaces/{id}", "POST /workspace_status_changes")
    )


def _workload(path: Path) -> tuple[dict[int, str], dict[int, list[int]]]:
    titles: dict[int, str] = {}
    statuses: dict[int, list[int]] = {}
    with path.open("w") as out:
        for r in range(ROUNDS):
            for w in range(1, WORKSPACES + 1):
                titles[w] = f"w{w}-r{r}"
                key = STATUSES[(w + r) % len(STATUSES)]
                statuses.setdefault(w, []).append(key)
                for kind, payload in (
                    ("workspace_update", {"title": titles[w]}),
                    ("status_change", {"to_status_key": key}),
                ):
                    out.write(json.dumps({"workspace_id": w, "kind": kind, "payload": payload}))
                    out.write("\n")
    return titles, statuses


def _start(cli: Cli, name: str, sandbox: SandboxProcess, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **cli.env,
        "KANTATA_SYNC_API_BASE_URL": sandbox.url,
        "KANTATA_SYNC_TOKEN": TOKEN,
        "KANTATA_SYNC_WORKER_NAME": name,
        "KANTATA_SYNC_LEASE_SECONDS": str(LEASE),
        "KANTATA_SYNC_RATE_LIMIT": "40",
        "KANTATA_SYNC_CONCURRENCY": "4",
        "KANTATA_SYNC_RETRY_MAX_DELAY": "10",
        "KANTATA_SYNC_LOG_LEVEL": "debug",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [KANTATA_SYNC, "run", "--no-progress"], env=env, cwd=cli.cwd, stdout=out, stderr=out
        )


def _write_lock_free(path: Path) -> bool:
    probe = sqlite3.connect(path, timeout=0.3, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


def test_a_frozen_sqlite_worker_sends_nothing_stale_when_thawed(cli: Cli) -> None:
    sandbox = start_sandbox("--workspaces", str(WORKSPACES), "--latency-ms", "20")
    database = cli.cwd / "outbox.db"
    workload = cli.cwd / "changes.jsonl"
    titles, statuses = _workload(workload)
    victim = survivor = None
    try:
        assert cli("db", "upgrade").returncode == 0
        assert cli("enqueue", "-f", str(workload)).returncode == 0
        victim = _start(cli, "victim", sandbox, cli.cwd / "victim.log")
        watch = sqlite3.connect(database, timeout=5)

        def claimed() -> bool:
            row = watch.execute(
                "SELECT count(*) FROM sync_changes WHERE lease_owner = 'victim'"
            ).fetchone()
            return bool(row and row[0])

        wait_for(claimed, timeout=30)
        # Freeze it outside a transaction: if it holds the write lock, let it go on a moment.
        for _ in range(50):
            os.kill(victim.pid, signal.SIGSTOP)
            if _write_lock_free(database):
                break
            os.kill(victim.pid, signal.SIGCONT)
            time.sleep(0.05)
        else:
            raise AssertionError("could not freeze the victim outside a write transaction")
        frozen_at = time.monotonic()
        survivor = _start(cli, "survivor", sandbox, cli.cwd / "survivor.log")
        assert survivor.wait(timeout=120) == 0, (cli.cwd / "survivor.log").read_text()[-3000:]
        took = time.monotonic() - frozen_at
        print(f"the survivor finished {took:.1f} s after the freeze (lease {LEASE} s)")
        before_thaw = _writes(sandbox)
        os.kill(victim.pid, signal.SIGCONT)
        code = victim.wait(timeout=60)
        log = (cli.cwd / "victim.log").read_text()
        assert code == 0 and "Traceback" not in log, log[-3000:]
        assert _writes(sandbox) == before_thaw  # nothing stale reached Kantata after the thaw
        events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert any(e["event"] == "lease.lost" for e in events), log[-3000:]
        states = dict(
            watch.execute("SELECT state, count(*) FROM sync_changes GROUP BY state").fetchall()
        )
        assert states == {"succeeded": WORKSPACES * ROUNDS * 2}
        for w in range(1, WORKSPACES + 1):
            workspace = _inspect(sandbox, f"workspaces/{w}")
            assert workspace["title"] == titles[w], w
            recorded = _inspect(sandbox, f"workspaces/{w}/status_changes")["status_changes"]
            assert isinstance(recorded, list)
            asked = [k for i, k in enumerate(statuses[w]) if i == 0 or k != statuses[w][i - 1]]
            assert [c["to_status_key"] for c in recorded] == asked, w
    finally:
        for process in (victim, survivor):
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
                process.wait()
        stop(sandbox.process)
