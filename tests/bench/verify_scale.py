"""verify over 100,000 synced workspaces: peak RSS, read requests, and time at a 10/s budget.

Not a test: run it by hand (it prints its figures)::

    .venv/bin/python tests/bench/verify_scale.py [--workspaces 100000] [--edits 70]
        [--database-url postgresql://postgres@127.0.0.1:5432/bench] [--budget 0]

The outbox is filled directly with SQL, in bulk: per workspace one succeeded update (title, dates,
price, access level: the values the sandbox seeds) and one succeeded status change. A sandbox
process serves the same workspaces; ``--edits`` of them are then edited out of band, so that
verify has drift to report. ``kantata-sync verify --format json`` runs as a subprocess, its peak
RSS taken from ``wait4``. With ``--budget 0`` (the default) the reads are not paced, and the time
at Kantata's 10/s is computed from the request count (each request waits for its slot, spaced
at 10 * 0.98 a second); ``--budget 10`` measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent / "kantata-sync"
TOKEN = "sandbox-token"
RSS_GOAL_MB = 200.0
HEADROOM = 0.98
CHUNK = 10_000


async def fill(url: str, workspaces: int) -> float:
    """Migrate and insert two succeeded changes per workspace; returns the seconds it took."""
    import sqlalchemy as sa

    from worker import db as dbmod
    from worker.config import Settings
    from worker.models import sync_changes

    engine = dbmod.create_engine(Settings(database_url=url).database_url)
    started = time.perf_counter()
    try:
        await dbmod.upgrade(engine)
        now = datetime.now(UTC)
        update = {
            "due_date": "2026-12-18",
            "start_date": "2026-01-05",
            "price": 0,
            "access_level": "invitation",
        }
        for start in range(1, workspaces + 1, CHUNK):
            rows = []
            for n in range(start, min(start + CHUNK, workspaces + 1)):
                payload = json.dumps({"title": f"Project {n}", **update})
                for kind, body in (
                    ("workspace_update", payload),
                    ("status_change", '{"to_status_key": 100}'),
                ):
                    rows.append(
                        {
                            "workspace_id": n,
                            "kind": kind,
                            "payload": body,
                            "state": "succeeded",
                            "outcome": "applied",
                            "attempts": 1,
                            "completed_at": now,
                            "updated_at": now,
                        }
                    )
            async with engine.begin() as conn:
                await conn.execute(sa.insert(sync_changes), rows)
        if engine.dialect.name == "postgresql":
            async with engine.begin() as conn:
                await conn.execute(sa.text("ANALYZE sync_changes"))
    finally:
        await engine.dispose()
    return time.perf_counter() - started


def start_sandbox(workspaces: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [str(BIN), "sandbox", "--port", "0", "--inspect", "--workspaces", str(workspaces)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        raise SystemExit(f"the sandbox did not start: {line!r}")
    return process, line.split()[-1]


def edit(origin: str, workspace: int, n: int) -> None:
    body = json.dumps({"workspace": {"title": f"Edited in the UI {n}"}}).encode()
    request = urllib.request.Request(
        f"{origin}/__sandbox__/workspaces/{workspace}/edit",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def run_verify(url: str, database_url: str, budget: float, out: Path) -> tuple[int, float, float]:
    """``kantata-sync verify``: exit code, wall seconds, peak RSS in MB (from wait4)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "KANTATA_SYNC_DATABASE_URL": database_url,
        "KANTATA_SYNC_API_BASE_URL": url,
        "KANTATA_SYNC_TOKEN": TOKEN,
        "KANTATA_SYNC_RATE_LIMIT": str(budget),
        "KANTATA_SYNC_LOG_LEVEL": "warning",
    }
    started = time.perf_counter()
    with out.open("w") as sink:
        process = subprocess.Popen(
            [str(BIN), "verify", "--format", "json"], stdout=sink, stderr=subprocess.PIPE, env=env
        )
        _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.stderr is not None:
        sys.stderr.write(process.stderr.read().decode(errors="replace"))
        process.stderr.close()
    return process.returncode, elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=100_000)
    parser.add_argument("--edits", type=int, default=70)
    parser.add_argument("--budget", type=float, default=0.0, help="rate_limit for verify")
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="verify-bench-") as tmp:
        database_url = args.database_url or f"sqlite:///{tmp}/outbox.db"
        filled = asyncio.run(fill(database_url, args.workspaces))
        print(f"outbox: {2 * args.workspaces:,} succeeded changes inserted in {filled:.1f} s")
        sandbox, url = start_sandbox(args.workspaces)
        try:
            origin = url.removesuffix("/api/v1")
            edited = random.Random(1).sample(range(1, args.workspaces + 1), args.edits)
            for n, workspace in enumerate(edited):
                edit(origin, workspace, n)
            out = Path(tmp) / "verify.json"
            code, elapsed, rss = run_verify(url, database_url, args.budget, out)
            report = json.loads(out.read_text())
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    summary = report["summary"]
    reported = {f["workspace_id"] for f in report["findings"]}
    requests = summary["read_requests"]
    expected = math.ceil(args.workspaces / 200)
    at_budget = requests / (10 * HEADROOM)
    print(f"verify exit code: {code} (1: drift found)")
    print(f"workspaces verified: {summary['workspaces']:,}", end="; ")
    print(f"fields checked: {summary['checked_fields']:,}")
    print(f"drift: {summary['drifted_fields']} field(s)", end=" ")
    print(f"in {summary['drifted_workspaces']} workspace(s);", end=" ")
    print(f"exactly the {args.edits} edited: {reported == set(edited)}")
    print(f"read requests: {requests} (⌈{args.workspaces:,}/200⌉ = {expected})")
    print(f"wall time: {elapsed:.1f} s at rate_limit={args.budget:g}")
    print(f"time at a 10/s budget: {at_budget:.0f} s ({requests} requests at {10 * HEADROOM:g}/s)")
    print(f"peak RSS of verify: {rss:.0f} MB (goal ≤ {RSS_GOAL_MB:.0f} MB)")


if __name__ == "__main__":
    main()
