"""``kantata-sync serve`` as systemd runs it: a subprocess talking to a fake NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..notify_socket import NotifySocket
from .conftest import KANTATA_SYNC, Cli, SandboxProcess, start_sandbox, stop, wait_for

SECRET = "tok-5e1f0c2b-SERVE-SECRET"


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # AF_UNIX paths are limited to ~108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="ks-") as directory:
        notify = NotifySocket(os.path.join(directory, "notify"))
        try:
            yield notify
        finally:
            notify.close()


def serve(cli: Cli, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], Path]:
    """Start serve with its logs in a file (a pipe nobody reads would fill up and block it)."""
    log = cli.cwd / f"serve-{len(list(cli.cwd.glob('serve-*.log')))}.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [KANTATA_SYNC, "serve", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**cli.env, **env},
            cwd=cli.cwd,
        )
    return process, log


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def requests_total(text: str) -> dict[tuple[str, str], int]:
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kantata_sync_http_requests_total" and sample.value:
                endpoint = f"{sample.labels['method']} {sample.labels['route']}"
                counts[endpoint, sample.labels["code"]] = int(sample.value)
    return counts


def sandbox_requests(sandbox: SandboxProcess) -> dict[tuple[str, str], int]:
    with urllib.request.urlopen(f"{sandbox.origin}/__sandbox__/stats", timeout=5) as response:
        stats = json.loads(response.read())
    return {
        (route, "none" if status == "dropped" else status): n
        for route, by_status in stats["requests"].items()
        for status, n in by_status.items()
        if n
    }


def idle_since(notify: NotifySocket, prefix: str) -> bool:
    """Whether a STATUS=idle line came after the first message starting with ``prefix``."""
    messages = notify.poll()
    start = notify.index(prefix)
    return any(text.startswith("STATUS=idle") for text in messages[start:])


def changes(count: int, first: int = 1, title: str = "t") -> str:
    lines = []
    for w in range(first, first + count):
        lines.append(
            {"workspace_id": w, "kind": "status_change", "payload": {"to_status_key": 310}}
        )
        lines.append({"workspace_id": w, "kind": "workspace_update", "payload": {"title": title}})
    return "".join(json.dumps(line) + "\n" for line in lines)


def test_serve_under_systemd_notify_syncs_reports_and_stops_cleanly(
    cli: Cli, notify_socket: NotifySocket
) -> None:
    sandbox = start_sandbox(
        "--token",
        SECRET,
        "--latency-ms",
        "20",
        "--error-rate",
        "0.1",
        "--seed",
        "3",
        "--workspaces",
        "300",
    )
    try:
        assert cli("db", "upgrade").returncode == 0
        assert cli("enqueue", "-f", "-", input=changes(100)).returncode == 0
        database = sqlite3.connect(cli.cwd / "outbox.db")

        def count(state: str) -> int:
            row = database.execute(
                "SELECT count(*) FROM sync_changes WHERE state = ?", (state,)
            ).fetchone()
            return int(row[0])

        env = {
            "KANTATA_SYNC_API_BASE_URL": sandbox.url,
            "KANTATA_SYNC_TOKEN": SECRET,
            "KANTATA_SYNC_RATE_LIMIT": "60",
            "KANTATA_SYNC_CONCURRENCY": "4",
            "KANTATA_SYNC_MAX_ATTEMPTS": "10",
            "KANTATA_SYNC_LOG_LEVEL": "debug",
            "NOTIFY_SOCKET": notify_socket.path,
            "WATCHDOG_USEC": "500000",
        }
        process, log = serve(cli, env, "--http-port", "0", "--poll-interval", "0.2")
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert "listening on http://127.0.0.1:" in line, line + log.read_text()
            url = line.split()[-1]

            wait_for(lambda: notify_socket.seen("READY=1"), timeout=30)
            wait_for(lambda: notify_socket.seen("STATUS=syncing"), timeout=30)
            busy_scrape = fetch(f"{url}/metrics")
            assert busy_scrape[0] == 200
            assert (count("pending") + count("in_flight")) > 0, "the sync ended too soon"
            wait_for(lambda: count("pending") + count("in_flight") == 0, timeout=60)
            wait_for(lambda: idle_since(notify_socket, "STATUS=syncing"), timeout=30)
            time.sleep(1.0)  # idle: the watchdog keeps pinging
            after = fetch(f"{url}/metrics")
            assert after[0] == 200
            assert fetch(f"{url}/healthz")[0] == 200
            assert fetch(f"{url}/readyz") == (
                200,
                json.dumps({"ready": True, "reasons": [], "activity": "idle"}) + "\n",
            )
            seen = sandbox_requests(sandbox)
            assert requests_total(after[1]) == seen
            assert any(code != "200" for _, code in seen)  # the faults did fire
            for key, value in requests_total(busy_scrape[1]).items():
                assert value <= seen[key]

            # A second batch, slower; SIGTERM arrives in the middle of it.
            assert cli("enqueue", "-f", "-", input=changes(100, 101, "u")).returncode == 0
            wait_for(lambda: count("in_flight") > 0, timeout=30)
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, log.read_text()[-3000:]
        assert count("in_flight") == 0
        assert count("pending") > 0  # the rest went back, untouched, for the next worker
    finally:
        stop(sandbox.process)

    messages = notify_socket.poll()
    ready = notify_socket.index("READY=1")
    syncing = notify_socket.index("STATUS=syncing")
    idle_after = next(
        i for i in range(syncing, len(messages)) if messages[i].startswith("STATUS=idle")
    )
    stopping = notify_socket.index("STOPPING=1")
    assert ready < syncing < idle_after < stopping
    assert messages[stopping].startswith("STOPPING=1\nSTATUS=stopping")
    assert messages[-1] == "STATUS=stopped"
    busy_pings = messages[syncing:idle_after].count("WATCHDOG=1")
    idle_pings = messages[idle_after:stopping].count("WATCHDOG=1")
    assert busy_pings >= 2, messages[syncing:idle_after]
    assert idle_pings >= 2, messages[idle_after:stopping]
    assert "WATCHDOG=1" not in messages[:ready]

    lines = log.read_text().splitlines()
    assert SECRET not in log.read_text()
    events = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) and "event" in e and "ts" in e for e in events)
    attempts = [e for e in events if e["event"] == "http.attempt"]
    first_batch = [e for e in attempts if e["workspace_id"] <= 100]
    assert len(first_batch) == sum(seen.values())  # one line per request the sandbox counted
    for event in attempts:
        assert len(event["run_id"]) == 32
        assert event["change_id"] in event["change_ids"]
        assert isinstance(event["workspace_id"], int)
    names = [e["event"] for e in events]
    for name in ("serve.listening", "serve.ready", "run.finished", "serve.stopping"):
        assert name in names
    assert names[-1] == "serve.stopped"
    finished = [e for e in events if e["event"] == "run.finished"]
    assert [e["ended_because"] for e in finished] == ["drained", "stopped"]


def test_serve_exits_with_the_documented_codes_before_it_is_ready(
    cli: Cli, notify_socket: NotifySocket
) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.path, "KANTATA_SYNC_API_BASE_URL": "http://127.0.0.1:9"}
    no_token = cli("serve", "--no-http", env=env)
    assert no_token.returncode == 3, no_token.stderr
    assert "token" in no_token.stderr
    not_migrated = cli("serve", "--no-http", env={**env, "KANTATA_SYNC_TOKEN": SECRET})
    assert not_migrated.returncode == 4, not_migrated.stderr
    assert "kantata-sync db upgrade" in not_migrated.stderr
    bad_socket = cli(
        "serve",
        "--no-http",
        env={**env, "NOTIFY_SOCKET": "relative/path", "KANTATA_SYNC_TOKEN": SECRET},
    )
    assert bad_socket.returncode == 3 and "NOTIFY_SOCKET" in bad_socket.stderr
    assert cli("db", "upgrade").returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy_port = cli("serve", "--http-port", port, env={**env, "KANTATA_SYNC_TOKEN": SECRET})
    assert busy_port.returncode == 3, busy_port.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in busy_port.stderr
    assert not notify_socket.seen("READY=1")
    for result in (no_token, not_migrated, bad_socket, busy_port):
        assert SECRET not in result.stdout + result.stderr


def test_serve_stays_up_unready_after_a_401_and_retries_on_sighup(cli: Cli) -> None:
    sandbox = start_sandbox("--token", SECRET)
    try:
        assert cli("db", "upgrade").returncode == 0
        assert cli("enqueue", "-f", "-", input=changes(3)).returncode == 0
        env: dict[str, Any] = {
            "KANTATA_SYNC_API_BASE_URL": sandbox.url,
            "KANTATA_SYNC_TOKEN": "tok-revoked-or-wrong",
        }
        process, log = serve(cli, env, "--http-port", "0", "--poll-interval", "0.1")
        try:
            assert process.stdout is not None
            url = process.stdout.readline().split()[-1]
            wait_for(lambda: fetch(f"{url}/readyz")[0] == 503, timeout=30)
            reasons = json.loads(fetch(f"{url}/readyz")[1])["reasons"]
            assert len(reasons) == 1 and reasons[0].startswith("token: rejected (401)"), reasons
            assert fetch(f"{url}/healthz")[0] == 200
            rejected = sum(sandbox_requests(sandbox).values())
            time.sleep(1.0)  # ten polls
            assert sum(sandbox_requests(sandbox).values()) == rejected
            process.send_signal(signal.SIGHUP)  # retry now: the same token, the same answer
            wait_for(lambda: sum(sandbox_requests(sandbox).values()) > rejected, timeout=30)
            assert process.poll() is None
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, log.read_text()[-3000:]
        events = [json.loads(line) for line in log.read_text().splitlines()]
        names = [e["event"] for e in events]
        assert names.count("serve.token_rejected") == 2
        assert "serve.retry_requested" in names
        assert set(sandbox_requests(sandbox)) == {
            (route, "401") for route, _ in sandbox_requests(sandbox)
        }
    finally:
        stop(sandbox.process)
