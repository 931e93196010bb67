"""Run the CLI as a user does: the installed console script, as a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
KANTATA_SYNC = str(BIN / "kantata-sync")
TOKEN = "sandbox-token"


def sigint_as_at_a_terminal() -> None:
    """``preexec_fn`` for a CLI child that a test may Ctrl-C: SIGINT at its default, as a
    terminal's foreground job has it.

    A child inherits an ignored SIGINT from whatever started the suite with it ignored (a
    non-interactive shell's background job, ``nohup``), and CPython then rightly installs no
    KeyboardInterrupt handler: the CLI would sit out the test's SIGINT as such a job should.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Cli:
    env: dict[str, str]
    cwd: Path

    def __call__(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KANTATA_SYNC, *args],
            input=input,
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            timeout=120,
            check=False,
        )

    def popen(
        self, *args: str, env: dict[str, str] | None = None, stdin: int | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [KANTATA_SYNC, *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            preexec_fn=sigint_as_at_a_terminal,
        )


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    env = {
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "KANTATA_SYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'outbox.db'}",
        "KANTATA_SYNC_RETRY_BASE_DELAY": "0.05",
        "KANTATA_SYNC_RETRY_MAX_DELAY": "0.2",
        "KANTATA_SYNC_GRACE_PERIOD": "5",
    }
    return Cli(env, tmp_path)


@dataclass
class SandboxProcess:
    url: str
    origin: str
    process: subprocess.Popen[str]


def start_sandbox(*args: str) -> SandboxProcess:
    process = subprocess.Popen(
        [KANTATA_SYNC, "sandbox", "--port", "0", "--inspect", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_at_a_terminal,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "listening on" in line, line + (process.stderr.read() if process.stderr else "")
    url = line.split()[-1]
    return SandboxProcess(url, url.removesuffix("/api/v1"), process)


def stop(process: subprocess.Popen[str]) -> int:
    """SIGTERM, wait, and close the pipes; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
    return process.returncode


@pytest.fixture
def sandbox_process() -> Iterator[SandboxProcess]:
    handle = start_sandbox("--forbidden", "13", "--workspaces", "200")
    try:
        yield handle
    finally:
        stop(handle.process)


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (skips, or fails under REQUIRE_POSTGRES)."""
    import asyncio

    from tests.conftest import fresh_pg_database

    manager = fresh_pg_database()
    loop = asyncio.new_event_loop()
    try:
        url = loop.run_until_complete(manager.__aenter__())
    except BaseException:
        loop.close()
        raise
    try:
        yield url.replace("postgresql+asyncpg://", "postgresql://", 1)
    finally:
        loop.run_until_complete(manager.__aexit__(None, None, None))
        loop.close()
