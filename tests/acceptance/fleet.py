"""Helpers for multi-worker fault tests: workloads, worker processes, the sandbox and the checks.

Shared by ``test_stalls.py`` and ``test_db_faults.py``. Workers are ``kantata-sync run``
subprocesses with their output in files (a frozen or chatty worker never blocks on a full
pipe). The sandbox is read through its ``/__sandbox__/`` routes, the database with asyncpg.

The three checks every scenario ends with:

- every change is terminal (nothing ``pending`` or ``in_flight``) and succeeded;
- each workspace's status history in Kantata is exactly the asked sequence (a status change
  to the status the workspace already has is answered "already has specified status" and
  recorded by nobody, so consecutive repeats collapse): no record twice, none out of order;
- each workspace's final title, custom field and status are the last ones asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from .conftest import KANTATA_SYNC, TOKEN, SandboxProcess

INITIAL_STATUS = 100
STATUS_CYCLE = (200, 310, 400, 600, 300, 510)
CUSTOM_FIELD = 7


# --------------------------------------------------------------------------- the workload


@dataclass
class Workload:
    """What producers asked for, per workspace, in order."""

    path: Path
    workspaces: int
    total: int
    statuses: dict[int, list[int]] = field(default_factory=dict)
    titles: dict[int, str] = field(default_factory=dict)
    custom: dict[int, str] = field(default_factory=dict)

    def expected_history(self, workspace_id: int) -> list[int]:
        """The status records Kantata should hold: the asked keys, repeats collapsed."""
        current, records = INITIAL_STATUS, []
        for key in self.statuses.get(workspace_id, []):
            if key != current:
                records.append(key)
                current = key
        return records

    def final_status(self, workspace_id: int) -> int:
        asked = self.statuses.get(workspace_id)
        return asked[-1] if asked else INITIAL_STATUS


def write_workload(path: Path, workspaces: int, rounds: int) -> Workload:
    """Per workspace and round: a title update (some with a custom field, some followed by a
    second update that merges with it), then a status change. A few workspaces ask for the
    status they already have once (answered as already applied, recorded by nobody).

    Rounds are written one after another across all workspaces, so IDs interleave the
    workspaces as a busy producer's would.
    """
    work = Workload(path, workspaces, 0)
    with path.open("w") as out:

        def emit(workspace_id: int, kind: str, payload: dict[str, Any]) -> None:
            out.write(json.dumps({"workspace_id": workspace_id, "kind": kind, "payload": payload}))
            out.write("\n")
            work.total += 1

        for step in range(rounds):
            for w in range(1, workspaces + 1):
                title = f"w{w}-r{step}"
                payload: dict[str, Any] = {"title": title}
                if (w + step) % 3 == 0:
                    value = f"cf-w{w}-r{step}"
                    payload["custom_fields"] = [{"custom_field_id": CUSTOM_FIELD, "value": value}]
                    work.custom[w] = value
                emit(w, "workspace_update", payload)
                work.titles[w] = title
                if w % 4 == 0:
                    title = f"w{w}-r{step}-merged"
                    emit(w, "workspace_update", {"title": title})
                    work.titles[w] = title
                asked = work.statuses.setdefault(w, [])
                key = STATUS_CYCLE[(w + step) % len(STATUS_CYCLE)]
                if w % 7 == 0 and step == 1 and asked:
                    key = asked[-1]  # the same status again: already applied
                emit(w, "status_change", {"to_status_key": key})
                asked.append(key)
    return work


# --------------------------------------------------------------------------- the database


def run_db(url: str, job: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
    """Run ``job`` on one fresh asyncpg connection to ``url``."""

    async def go() -> Any:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await job(conn)
        finally:
            await conn.close(timeout=5)

    return asyncio.run(go())


def query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    return list(run_db(url, lambda conn: conn.fetch(sql, *args)))


def state_counts(url: str) -> dict[str, int]:
    rows = query(url, "SELECT state, count(*) AS n FROM sync_changes GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


def changes_snapshot(url: str) -> dict[int, tuple[Any, ...]]:
    """Every change's worker-written columns, to tell whether anything changed since."""
    rows = query(
        url,
        "SELECT id, state, outcome, attempts, http_status, error_type, error_message, result,"
        " lease_owner, lease_token, merged_into_id, updated_at, completed_at"
        " FROM sync_changes ORDER BY id",
    )
    return {r["id"]: tuple(r.values()) for r in rows}


_SESSION_SELECT = """
SELECT a.pid, a.application_name, a.client_port, a.state, a.xact_start, a.query,
       a.wait_event_type, a.wait_event,
       EXISTS (SELECT 1 FROM pg_locks l
               WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted) AS holds_advisory
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
"""
SESSIONS_SQL = _SESSION_SELECT + "AND (a.application_name = $1 OR a.client_port = ANY($2::int[]))"
"""A worker's sessions: by ``application_name`` ($1) or by client port ($2)."""


def describe_activity(url: str) -> str:
    """Every other session of this database: who waits on what (for failure messages)."""
    try:
        rows = query(
            url,
            "SELECT pid, application_name, client_port, state, wait_event_type, wait_event,"
            " now() - xact_start AS in_xact, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)"
            " AS query FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() ORDER BY pid",
        )
    except (OSError, asyncpg.PostgresError) as exc:
        return f"(pg_stat_activity unreadable: {exc})"
    return "\n".join(
        f"  pid {r['pid']} app={r['application_name']!r} port={r['client_port']}"
        f" {r['state']} wait={r['wait_event_type']}/{r['wait_event']}"
        f" in_xact={r['in_xact']} query={r['query']!r}"
        for r in rows
    )


# --------------------------------------------------------------------------- the sandbox


def inspect(sandbox: SandboxProcess, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{sandbox.origin}/__sandbox__/{path}", timeout=10) as response:
        data = json.loads(response.read())
    assert isinstance(data, dict)
    return data


def set_faults(sandbox: SandboxProcess, **faults: Any) -> None:
    """Replace the sandbox's fault configuration (missing keys take their defaults)."""
    request = urllib.request.Request(
        f"{sandbox.origin}/__sandbox__/faults",
        data=json.dumps(faults).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def write_requests(sandbox: SandboxProcess) -> int:
    """PUTs and status-change POSTs the sandbox has answered, whatever the answer."""
    requests = inspect(sandbox, "stats")["requests"]
    return sum(
        sum(by_status.values())
        for route, by_status in requests.items()
        if route in ("PUT /workspaces/{id}", "POST /workspace_status_changes")
    )


def status_history(sandbox: SandboxProcess) -> dict[int, list[tuple[int, int]]]:
    """Per workspace, the recorded (from, to) status changes in the order applied."""
    by_workspace: dict[int, list[tuple[int, int]]] = {}
    for change in inspect(sandbox, "history")["status_changes"]:
        by_workspace.setdefault(change["workspace_id"], []).append(
            (change["from_status_key"], change["to_status_key"])
        )
    return by_workspace


# --------------------------------------------------------------------------- the checks


def check_terminal(url: str, work: Workload) -> list[str]:
    counts = state_counts(url)
    problems = []
    stuck = {state: n for state, n in counts.items() if state in ("pending", "in_flight")}
    if stuck:
        held = query(
            url,
            "SELECT lease_owner, state, count(*) AS n FROM sync_changes"
            " WHERE state IN ('pending', 'in_flight') GROUP BY 1, 2 ORDER BY 1, 2",
        )
        problems.append(
            f"changes not terminal: {counts} (by owner: "
            f"{[(r['lease_owner'], r['state'], r['n']) for r in held]})"
        )
    elif counts != {"succeeded": work.total}:
        failed = query(
            url,
            "SELECT id, workspace_id, kind, error_message FROM sync_changes"
            " WHERE state <> 'succeeded' ORDER BY id LIMIT 5",
        )
        problems.append(
            f"not every change succeeded: {counts}; e.g. "
            + "; ".join(
                f"#{r['id']} w{r['workspace_id']} {r['kind']}: {r['error_message']}" for r in failed
            )
        )
    return problems


def check_history(sandbox: SandboxProcess, work: Workload) -> list[str]:
    """Each status change recorded exactly once, in the asked order."""
    recorded = status_history(sandbox)
    wrong = []
    for w in range(1, work.workspaces + 1):
        got = [to for _from, to in recorded.get(w, [])]
        want = work.expected_history(w)
        if got != want:
            chain = " ".join(f"{a}->{b}" for a, b in recorded.get(w, []))
            wrong.append(f"w{w}: recorded {chain or 'nothing'}; asked {want}")
    if not wrong:
        return []
    return [
        f"status history wrong in {len(wrong)} of {work.workspaces} workspaces "
        f"(status changes recorded twice or out of order): " + "; ".join(wrong[:6])
    ]


def check_fields(sandbox: SandboxProcess, work: Workload) -> list[str]:
    """Every workspace ends at the last title, custom field and status asked for."""
    wrong = []
    for w in range(1, work.workspaces + 1):
        shown = inspect(sandbox, f"workspaces/{w}")
        problems = []
        if shown["title"] != work.titles[w]:
            problems.append(f"title {shown['title']!r}, last asked {work.titles[w]!r}")
        if shown["status_key"] != work.final_status(w):
            problems.append(f"status {shown['status_key']}, last asked {work.final_status(w)}")
        custom = shown["custom_field_values"].get(str(CUSTOM_FIELD))
        if custom != work.custom.get(w):
            problems.append(f"custom field {custom!r}, last asked {work.custom.get(w)!r}")
        if problems:
            wrong.append(f"w{w}: " + ", ".join(problems))
    if not wrong:
        return []
    return [
        f"final fields wrong in {len(wrong)} of {work.workspaces} workspaces "
        f"(older values written over newer ones): " + "; ".join(wrong[:6])
    ]


def check_all(url: str, sandbox: SandboxProcess, work: Workload) -> list[str]:
    return check_terminal(url, work) + check_history(sandbox, work) + check_fields(sandbox, work)


# --------------------------------------------------------------------------- workers


def worker_env(
    base: dict[str, str], db_url: str, sandbox: SandboxProcess, **extra: str
) -> dict[str, str]:
    return {
        **base,
        "KANTATA_SYNC_DATABASE_URL": db_url,
        "KANTATA_SYNC_API_BASE_URL": sandbox.url,
        "KANTATA_SYNC_TOKEN": TOKEN,
        "KANTATA_SYNC_LOG_FORMAT": "json",
        "KANTATA_SYNC_LOG_LEVEL": "debug",  # successful requests are logged at debug
        **extra,
    }


@dataclass
class Worker:
    """One ``kantata-sync run`` process, its output in two files."""

    name: str
    process: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    started: float
    db_port: int
    """The port of the PostgreSQL server the worker uses."""
    frozen_at: float | None = None
    frozen_wall: float | None = None
    thawed_wall: float | None = None
    exited_at: float | None = None

    @classmethod
    def start(cls, name: str, env: dict[str, str], cwd: Path, *args: str) -> Worker:
        out_path, err_path = cwd / f"{name}.stdout", cwd / f"{name}.stderr"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            process = subprocess.Popen(
                [KANTATA_SYNC, "run", "--no-progress", *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env={**env, "KANTATA_SYNC_WORKER_NAME": name},
                cwd=cwd,
            )
        db_port = urlsplit(env["KANTATA_SYNC_DATABASE_URL"]).port or 5432
        return cls(name, process, out_path, err_path, time.monotonic(), db_port)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def application_name(self) -> str:
        return f"kantata-sync/{self.name}"

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is not None and self.exited_at is None:
            self.exited_at = time.monotonic()
        return code

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen_at, self.frozen_wall = time.monotonic(), time.time()

    def thaw(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)
        if self.frozen_at is not None and self.thawed_wall is None:
            self.thawed_wall = time.time()

    def abort_freeze(self) -> None:
        """Thaw a freeze that missed its moment, as if it never happened."""
        self.thaw()
        self.frozen_at = self.frozen_wall = self.thawed_wall = None

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.poll()
            if code is not None:
                return code
            time.sleep(0.05)
        return self.poll()

    def kill(self) -> None:
        """Make sure the process is gone (thawed first: a stopped process keeps SIGTERM)."""
        if self.process.poll() is None:
            self.thaw()
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (stdout and stderr)."""
        found = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def final_message(self) -> str:
        """The last line that is not JSON: the fatal one-liner of a failed command."""
        plain = [line for line in self.output().splitlines() if line and not line.startswith("{")]
        return plain[-1] if plain else ""

    def tail(self, lines: int = 6) -> str:
        """The last lines of output, each cut to 240 characters, indented."""
        return "\n".join("    " + line[:240] for line in self.output().splitlines()[-lines:])

    def sends(self) -> list[tuple[float, float, dict[str, Any]]]:
        """``(sent, answered, line)`` in wall-clock seconds for each logged write (PUT/POST)."""
        found = []
        for e in self.named("http.attempt"):
            if str(e.get("endpoint", "")).startswith("GET"):
                continue
            answered = datetime.fromisoformat(str(e["ts"]).replace("Z", "+00:00")).timestamp()
            found.append((answered - float(e.get("duration_ms") or 0) / 1000, answered, e))
        return found

    def sends_after(self, wall: float) -> list[dict[str, Any]]:
        """The writes this worker sent at or after wall-clock ``wall``."""
        return [e for sent, _answered, e in self.sends() if sent >= wall - 0.02]

    def sends_around(self, wall: float) -> tuple[int, int]:
        """Writes sent before ``wall``: how many in all, and how many still unanswered then."""
        before = [(sent, answered) for sent, answered, _e in self.sends() if sent < wall]
        return len(before), sum(1 for _sent, answered in before if answered > wall)

    def local_ports(self, remote_port: int) -> list[int]:
        """Local ports of this process's TCP connections to ``remote_port`` (via /proc).

        The worker's PostgreSQL sessions are found by ``application_name`` once it sets one;
        until then by the client port pg_stat_activity shows.
        """
        inodes = set()
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{self.pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
        ports = []
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                lines = Path(f"/proc/{self.pid}/net/{table}").read_text().splitlines()[1:]
                for line in lines:
                    parts = line.split()
                    if parts[9] in inodes and int(parts[2].rsplit(":", 1)[1], 16) == remote_port:
                        ports.append(int(parts[1].rsplit(":", 1)[1], 16))
        return ports


def stop_all(workers: Iterable[Worker]) -> None:
    for worker in workers:
        worker.kill()


def wait_all(workers: Iterable[Worker], timeout: float) -> list[Worker]:
    """Wait until every worker exits or ``timeout`` passes; returns those still running."""
    deadline = time.monotonic() + timeout
    running = list(workers)
    while running and time.monotonic() < deadline:
        running = [w for w in running if w.poll() is None]
        if running:
            time.sleep(0.05)
    return running


DB_CAUSE = re.compile(
    r"connect|connection|refused|terminat|shut ?down|shutting|starting up|closed|unreachable"
    r"|administrator|recovery|timeout|timed out",
    re.IGNORECASE,
)


def check_exit(worker: Worker, code: int | None, *, allow_database_error: bool) -> list[str]:
    """Finished (0 and ``run.finished``), or, where allowed, 4 naming the database's trouble."""
    if code is None:
        return [f"{worker.name} did not exit in time; its last lines:\n{worker.tail()}"]
    if "Traceback (most recent call last)" in worker.output():
        return [f"{worker.name} crashed (exit {code}) with a traceback:\n{worker.tail(30)}"]
    if code == 0:
        if not worker.named("run.finished"):
            return [f"{worker.name} exited 0 without a run.finished line:\n{worker.tail()}"]
        return []
    message = worker.final_message()
    if code == 4 and allow_database_error:
        if "deregistering" in message or not DB_CAUSE.search(message):
            return [
                f"{worker.name} exited 4 with the wrong cause (not the database outage "
                f"itself): {message!r}"
            ]
        return []
    return [f"{worker.name} exited {code}: {message!r}"]


def age(start: float) -> float:
    return round(time.monotonic() - start, 1)
