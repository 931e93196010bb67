"""``python -m worker.sandbox`` as a real process: announce the URL, serve, stop cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import sigint_as_at_a_terminal

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "Kantata OX sandbox listening on http://127.0.0.1:"


@pytest.fixture
def sandbox_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.sandbox", "--port", "0", "--inspect", "--workspaces", "3"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_at_a_terminal,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith(PREFIX) and line.endswith("/api/v1\n"), line
        yield process, line.split()[-1]
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def request(
    method: str, url: str, body: object = None, token: str | None = "sandbox-token"
) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serves_and_stops_cleanly(
    sandbox_process: tuple[subprocess.Popen[str], str], signum: signal.Signals
) -> None:
    process, url = sandbox_process
    status, body = request("PUT", f"{url}/workspaces/2", {"workspace": {"title": "From CLI"}})
    assert status == 200
    assert body["results"] == [{"key": "workspaces", "id": "2"}]
    status, body = request("GET", f"{url}/workspaces/2")
    assert (status, body["workspaces"]["2"]["title"]) == (200, "From CLI")  # type: ignore[index]
    assert request("GET", f"{url}/workspaces/4")[0] == 404
    assert request("GET", f"{url}/workspaces/2", token=None)[0] == 401
    origin = url.removesuffix("/api/v1")
    status, stats = request("GET", f"{origin}/__sandbox__/stats", token=None)
    assert status == 200 and stats["total"] == 4

    process.send_signal(signum)
    out, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert out == ""


def test_port_in_use_fails_with_a_message(
    sandbox_process: tuple[subprocess.Popen[str], str],
) -> None:
    _, url = sandbox_process
    port = url.split(":")[2].split("/")[0]
    result = subprocess.run(
        [sys.executable, "-m", "worker.sandbox", "--port", port],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert port in result.stderr
