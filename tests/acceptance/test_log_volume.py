"""What a run writes to its log at the default level: little when all goes well, every
problem when it does not, and always its summary."""

from __future__ import annotations

import json

from .conftest import TOKEN, Cli, start_sandbox, stop

CHANGES = 400


def _enqueue(cli: Cli, forbidden: int = 0) -> None:
    lines = [
        json.dumps({"workspace_id": w, "kind": "workspace_update", "payload": {"title": f"t{w}"}})
        for w in range(1, CHANGES + 1)
    ]
    assert cli("db", "upgrade").returncode == 0
    enqueued = cli("enqueue", "-f", "-", input="\n".join(lines) + "\n")
    assert enqueued.returncode == 0, enqueued.stderr


def _run(cli: Cli, url: str, **env: str) -> tuple[list[dict[str, object]], int]:
    ran = cli(
        "run",
        env={
            "KANTATA_SYNC_API_BASE_URL": url,
            "KANTATA_SYNC_TOKEN": TOKEN,
            "KANTATA_SYNC_RATE_LIMIT": "0",
            **env,
        },
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    return [json.loads(line) for line in ran.stderr.splitlines()], len(ran.stderr.encode())


def test_a_clean_run_logs_little_and_its_summary(cli: Cli) -> None:
    sandbox = start_sandbox("--workspaces", str(CHANGES))
    try:
        _enqueue(cli)
        events, size = _run(cli, sandbox.url)
    finally:
        stop(sandbox.process)
    per_change = size / CHANGES
    print(f"clean run at the default level: {size} bytes, {per_change:.1f} bytes per change")
    assert per_change <= 40
    assert {e["level"] for e in events} == {"info"}
    [summary] = [e for e in events if e["event"] == "run.finished"]
    assert summary["succeeded"] == CHANGES


def test_problems_are_warnings_and_errors_and_the_summary_is_always_written(cli: Cli) -> None:
    sandbox = start_sandbox(
        "--workspaces", str(CHANGES), "--forbidden", "7,8,9", "--error-rate", "0.05",
        "--seed", "3",
    )  # fmt: skip
    try:
        _enqueue(cli)
        events, size = _run(
            cli,
            sandbox.url,
            KANTATA_SYNC_LOG_LEVEL="warning",
            KANTATA_SYNC_RETRY_BASE_DELAY="0.01",
            KANTATA_SYNC_RETRY_MAX_DELAY="0.05",
            KANTATA_SYNC_MAX_ATTEMPTS="10",
            KANTATA_SYNC_BREAKER_THRESHOLD="0",
        )
    finally:
        stop(sandbox.process)
    print(f"faulty run at level warning: {size} bytes, {size / CHANGES:.1f} bytes per change")
    by_level: dict[str, list[dict[str, object]]] = {}
    for event in events:
        by_level.setdefault(str(event["level"]), []).append(event)
    forbidden = [e for e in by_level["error"] if e["event"] == "http.attempt"]
    assert sorted(e["workspace_id"] for e in forbidden) == [7, 8, 9]  # type: ignore[type-var]
    retried = [e for e in by_level["warning"] if e["event"] == "http.attempt"]
    assert retried and all(int(e["status"]) >= 500 for e in retried)  # type: ignore[call-overload]
    # The summary is the run's record: written although the level is warning.
    [summary] = [e for e in events if e["event"] == "run.finished"]
    assert summary["level"] == "info" and summary["failed"] == 3
    assert "debug" not in by_level
