"""The sandbox and the worker as subprocesses, started as an operator does: the installed
``kantata-sync`` console script, configured through ``KANTATA_SYNC_*`` variables. Child CPU time
and peak RSS come from ``os.wait4``; the sandbox is inspected through its ``/__sandbox__/`` routes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reporting import BenchError, median

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KANTATA_SYNC = str(BIN / "kantata-sync")
TOKEN = "sandbox-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- the sandbox -----------------------------------------------------------------------------


@dataclass
class Served:
    """A server child (see :func:`serving`) and a JSON call to it, proxies bypassed."""

    url: str
    origin: str
    process: subprocess.Popen[str]

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(
            self.origin + path, method=method, data=b"" if method == "POST" else None
        )
        with _OPENER.open(request, timeout=30) as response:
            return json.loads(response.read())


@dataclass
class Sandbox(Served):
    """A running ``kantata-sync sandbox --inspect`` subprocess."""

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/__sandbox__/stats")
        return result

    def reset_stats(self) -> None:
        self._call("POST", "/__sandbox__/reset_stats")

    def workspace(self, workspace_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/__sandbox__/workspaces/{workspace_id}")
        return result

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.process.pid)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@contextlib.contextmanager
def serving(
    argv: Sequence[str], what: str, cwd: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Start a server that prints ``listening on URL`` first; its URL and process, stopped
    (SIGTERM, then SIGKILL after 10 s) and its pipes closed afterwards."""
    process = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on" not in line:
            err = process.stderr.read() if process.stderr else ""
            raise BenchError(f"{what} did not start: {line}{err}")
        yield line.split()[-1], process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def sandbox(
    workspaces: int,
    rate_limit: int = 0,
    latency_ms: float = 0,
    extra_args: Sequence[str] = (),
) -> Iterator[Sandbox]:
    """Start the sandbox (faults off) with ``workspaces`` seeded, an optional strict limit, an
    optional fixed latency per answer and any further options (``--rate-limit-schedule``)."""
    argv = [
        KANTATA_SYNC,
        "sandbox",
        "--port",
        "0",
        "--inspect",
        "--workspaces",
        str(workspaces),
        "--rate-limit",
        str(rate_limit),
        *(["--latency-ms", f"{latency_ms:g}"] if latency_ms else []),
        *extra_args,
    ]
    with serving(argv, "sandbox", cwd=ROOT) as (url, process):
        yield Sandbox(url, url.removesuffix("/api/v1"), process)


# --- the worker ------------------------------------------------------------------------------


def base_env(database_url: str, api_url: str = "http://127.0.0.1:9/api/v1") -> dict[str, str]:
    """The environment of a ``kantata-sync`` child: no inherited KANTATA_SYNC_* settings."""
    # A user's install has its bytecode compiled; without it, every child would compile the
    # package again at start-up (a second of CPU on a slow machine).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KANTATA_SYNC_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        KANTATA_SYNC_DATABASE_URL=database_url,
        KANTATA_SYNC_API_BASE_URL=api_url,
        KANTATA_SYNC_TOKEN=TOKEN,
        KANTATA_SYNC_LOG_LEVEL="warning",
        KANTATA_SYNC_LOG_FORMAT="json",
    )
    return env


def worker_env(
    database_url: str,
    api_url: str,
    *,
    rate_limit: float = 0,
    concurrency: int = 16,
    batch_size: int = 500,
    name: str | None = None,
) -> dict[str, str]:
    env = base_env(database_url, api_url)
    env.update(
        KANTATA_SYNC_RATE_LIMIT=f"{rate_limit:g}",
        KANTATA_SYNC_CONCURRENCY=str(concurrency),
        KANTATA_SYNC_BATCH_SIZE=str(batch_size),
        KANTATA_SYNC_GRACE_PERIOD="10",
    )
    if name:
        env["KANTATA_SYNC_WORKER_NAME"] = name
    return env


@dataclass(frozen=True)
class ProcessResult:
    """How a child went: exit code, wall time, CPU seconds, peak RSS and its stderr."""

    returncode: int
    wall: float
    cpu: float
    maxrss_mb: float
    stderr: str


class WorkerProcess:
    """``kantata-sync run --no-progress`` as a child; :meth:`wait` reaps it with ``wait4``."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self._err_path = tmp / f"worker-{uuid.uuid4().hex[:8]}.err"
        self._err = self._err_path.open("w+")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [KANTATA_SYNC, "run", "--no-progress"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            cwd=tmp,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM: stop claiming, finish in-flight requests, write back, release.

        ``os.kill``, not ``Popen.send_signal``: that polls first, and would reap a child that
        already exited, leaving :meth:`wait` nothing to collect (ECHILD) instead of its exit
        code and stderr. An exited child is a zombie until ``wait4``: the signal is harmless.
        """
        if self.process.returncode is None:
            os.kill(self.pid, signal.SIGTERM)

    def wait(self, timeout: float = 600) -> ProcessResult:
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.process.kill()
                pid, status, usage = os.wait4(self.pid, 0)
                break
            time.sleep(0.01)
        wall = time.monotonic() - self.started
        code = os.waitstatus_to_exitcode(status)
        self.process.returncode = code
        self._err.seek(0)
        stderr = self._err.read()
        self._err.close()
        self._err_path.unlink(missing_ok=True)
        return ProcessResult(
            code, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stderr
        )


def run_worker(env: dict[str, str], tmp: Path, timeout: float = 600) -> ProcessResult:
    """Run one worker until it drains the queue; fail loudly on a non-zero exit."""
    result = WorkerProcess(env, tmp).wait(timeout)
    check_exit(result)
    return result


def check_exit(result: ProcessResult) -> None:
    if result.returncode != 0:
        raise BenchError(f"kantata-sync run exited {result.returncode}: {result.stderr[-2000:]}")


def check_exits(results: Sequence[ProcessResult]) -> None:
    for result in results:
        check_exit(result)


def stop_workers(procs: Sequence[WorkerProcess]) -> list[ProcessResult]:
    """SIGTERM every worker, then reap them all (their exits are the caller's to check)."""
    for proc in procs:
        proc.stop()
    return [proc.wait(60) for proc in procs]


def run_workers(
    envs: Sequence[dict[str, str]], tmp: Path, timeout: float = 600
) -> list[ProcessResult]:
    """Start every worker at once and wait for all of them."""
    workers = [WorkerProcess(env, tmp) for env in envs]
    results = [w.wait(timeout) for w in workers]
    check_exits(results)
    return results


LIBRARIES = {
    "sqlite": "import aiohttp, sqlalchemy.ext.asyncio, aiosqlite",
    "postgresql": "import aiohttp, sqlalchemy.ext.asyncio, asyncpg",
}
"""What any worker of this design imports before it does anything: its HTTP client, its SQL
toolkit's asyncio extension and the backend's driver."""


def import_floor_cpu(backend: str, runs: int = 3) -> float:
    """CPU seconds (median of ``runs`` children) of an interpreter that only imports
    :data:`LIBRARIES` for ``backend``: a floor under any worker's start-up, kantata-sync's own
    modules and settings aside."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times = []
    for _ in range(runs):
        child = subprocess.Popen([sys.executable, "-c", LIBRARIES[backend]], env=env)
        _pid, status, usage = os.wait4(child.pid, 0)
        child.returncode = code = os.waitstatus_to_exitcode(status)  # reaped: Popen must know
        if code:
            raise BenchError(f"importing the libraries exited {code}")
        times.append(usage.ru_utime + usage.ru_stime)
    return median(times)


def startup_cpu(db_url: str, api_url: str, tmp: Path, runs: int = 3) -> float:
    """CPU seconds of a ``run`` with nothing to do: interpreter start, imports, schema check."""
    return median(run_worker(worker_env(db_url, api_url), tmp).cpu for _ in range(runs))
