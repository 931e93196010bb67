"""Issue 11: database trouble mid-run must neither lose track of changes nor write stale data.

Each test runs ``kantata-sync run`` workers against a database in a throwaway PostgreSQL
cluster of its own (:mod:`tests.pgcluster`; the shared server on 5432 is never restarted or
stopped) and a sandbox, and injects one fault mid-run:

- ``pg_ctl restart -m fast``, twice: a blip of well under a second, which a run rides out;
- the server stopped for 20 s, then started: the run may give up (exit 4, naming the outage);
- every ``UPDATE sync_workers`` (the heartbeat) failing for 8 s, longer than the lease, through
  a trigger that raises while a flag row exists.

Afterwards, once a final clean ``run`` has finished what a failed one left: every change is
terminal and succeeded, Kantata recorded each status change exactly once in the asked order,
every workspace ends at the last values asked for, and each run either finished (exit 0 and a
``run.finished`` line) or exited 4 with the real cause, never "deregistering the worker".
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.pgcluster import PgCluster, throwaway_cluster

from .conftest import Cli, SandboxProcess, start_sandbox, stop
from .fleet import (
    Worker,
    Workload,
    age,
    check_all,
    check_exit,
    query,
    run_db,
    state_counts,
    stop_all,
    wait_all,
    worker_env,
    write_workload,
)

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

LEASE = 6
WORKSPACES = 100
EXIT_BOUND = 60
"""Seconds a worker gets to exit once the fault is over."""
HEARTBEAT_FAULT = "injected heartbeat failure"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with throwaway_cluster() as made:
        yield made


@pytest.fixture
def fault_db(cluster: PgCluster) -> Iterator[str]:
    """A fresh database in the throwaway cluster (which is running when the test starts)."""
    with cluster.database() as url:
        yield url


def prepare(
    cli: Cli, url: str, rounds: int, budget: int, **extra: str
) -> tuple[SandboxProcess, Workload, dict[str, str]]:
    sandbox = start_sandbox("--workspaces", str(WORKSPACES), "--rate-limit", str(budget * 10))
    try:
        work = write_workload(cli.cwd / "changes.jsonl", WORKSPACES, rounds)
        env = worker_env(
            cli.env,
            url,
            sandbox,
            KANTATA_SYNC_RATE_LIMIT=str(budget),
            KANTATA_SYNC_CONCURRENCY="8",
            KANTATA_SYNC_LEASE_SECONDS=str(LEASE),
            KANTATA_SYNC_RETRY_MAX_DELAY=str(LEASE + 4),
            **extra,
        )
        upgraded = cli("db", "upgrade", env=env)
        assert upgraded.returncode == 0, upgraded.stderr
        enqueued = cli("enqueue", "-f", "changes.jsonl", env=env)
        assert enqueued.returncode == 0, enqueued.stderr
    except BaseException:
        stop(sandbox.process)
        raise
    return sandbox, work, env


def succeeded(url: str) -> int:
    return state_counts(url).get("succeeded", 0)


def wait_until(predicate: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def finish_with_clean_run(cli: Cli, env: dict[str, str], url: str) -> list[str]:
    """After a run that gave up, one more run must finish what it left."""
    if not state_counts(url).keys() & {"pending", "in_flight"}:
        return []
    final = Worker.start("final-run", env, cli.cwd)
    try:
        code = final.wait(EXIT_BOUND)
        return [
            f"the clean run after the fault: {p}"
            for p in check_exit(final, code, allow_database_error=False)
        ]
    finally:
        final.kill()


def check_runs(
    url: str, workers: list[Worker], codes: dict[str, int | None], up_since: float
) -> list[str]:
    """A run that finished, or gave up while the database answered again (``up_since``, a
    monotonic time), has a finished row and left nothing in flight it could have released."""
    problems = []
    for worker in workers:
        code = codes[worker.name]
        gave_up_while_up = (
            code is not None and worker.exited_at is not None and worker.exited_at > up_since + 1
        )
        if code != 0 and not gave_up_while_up:
            continue
        rows = query(
            url, "SELECT finished_at, ended_because FROM sync_runs WHERE worker = $1", worker.name
        )
        unfinished = [r for r in rows if r["finished_at"] is None]
        if not rows or unfinished:
            problems.append(
                f"{worker.name} (exit {code}) left its sync_runs row unfinished: "
                f"{[dict(r) for r in rows]}"
            )
        held = query(
            url,
            "SELECT count(*) AS n FROM sync_changes WHERE lease_owner = $1 AND state = 'in_flight'",
            worker.name,
        )[0]["n"]
        if held:
            problems.append(
                f"{worker.name} (exit {code}) exited with the database up and left {held} "
                f"changes in flight"
            )
    return problems


def test_postgres_restarts_mid_run(cli: Cli, fault_db: str, cluster: PgCluster) -> None:
    """Two fast restarts (each well under a second) are ridden out: both runs finish."""
    sandbox, work, env = prepare(cli, fault_db, rounds=2, budget=100)
    workers: list[Worker] = []
    try:
        started = time.monotonic()
        workers = [Worker.start(f"worker{i}", env, cli.cwd) for i in range(2)]
        restarts = []
        for share in (4, 2):
            wait_until(lambda s=share: succeeded(fault_db) >= work.total // s, "progress")
            took = cluster.restart(fast=True)
            restarts.append(f"at {age(started)} s ({took:.2f} s)")
        up_since = time.monotonic()
        print(f"\nrestarted PostgreSQL {', '.join(restarts)}")
        still = wait_all(workers, EXIT_BOUND)
        codes = {w.name: w.poll() for w in workers}
        print(f"workers exited {codes} after {age(started)} s")
        problems = []
        for worker in workers:
            # A blip this short is ridden out: no run gives up over it.
            problems += [
                f"a sub-second restart was not ridden out: {p}"
                for p in check_exit(worker, codes[worker.name], allow_database_error=False)
            ]
        problems += check_runs(fault_db, workers, codes, up_since)
        stop_all(still)  # hung: killed, and what they held is left to the clean run
        problems += finish_with_clean_run(cli, env, fault_db)
        problems += check_all(fault_db, sandbox, work)
        assert not problems, "\n".join(problems)
    finally:
        stop_all(workers)
        stop(sandbox.process)
        cluster.ensure_running()


def test_postgres_down_for_20_seconds(cli: Cli, fault_db: str, cluster: PgCluster) -> None:
    """A 20 s outage: a run finishes or gives up with the outage as its cause."""
    sandbox, work, env = prepare(cli, fault_db, rounds=2, budget=100)
    workers: list[Worker] = []
    try:
        started = time.monotonic()
        workers = [Worker.start(f"worker{i}", env, cli.cwd) for i in range(2)]
        wait_until(lambda: succeeded(fault_db) >= work.total // 4, "progress")
        cluster.stop("fast")
        down_at = time.monotonic()
        try:
            while time.monotonic() < down_at + 20:
                wait_all(workers, 0.1)  # timestamps the exits
        finally:
            cluster.start()
        back_at = time.monotonic()
        print(
            f"\nPostgreSQL down from {round(down_at - started, 1)} s to "
            f"{round(back_at - started, 1)} s"
        )
        still = wait_all(workers, EXIT_BOUND)
        codes = {w.name: w.poll() for w in workers}
        for worker in workers:
            when = round((worker.exited_at or time.monotonic()) - started, 1)
            print(
                f"{worker.name} exited {codes[worker.name]} at {when} s: {worker.final_message()!r}"
            )
        problems = []
        for worker in workers:
            problems += check_exit(worker, codes[worker.name], allow_database_error=True)
        problems += check_runs(fault_db, workers, codes, back_at)
        stop_all(still)  # hung: killed, and what they held is left to the clean run
        problems += finish_with_clean_run(cli, env, fault_db)
        problems += check_all(fault_db, sandbox, work)
        assert not problems, "\n".join(problems)
    finally:
        stop_all(workers)
        stop(sandbox.process)
        cluster.ensure_running()


HEARTBEAT_TRIGGER = f"""
CREATE TABLE kantata_test_fault (flag integer);
CREATE FUNCTION kantata_test_fail_heartbeat() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM kantata_test_fault) THEN
        RAISE EXCEPTION '{HEARTBEAT_FAULT}';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER kantata_test_fail_heartbeat BEFORE UPDATE ON sync_workers
    FOR EACH ROW EXECUTE FUNCTION kantata_test_fail_heartbeat();
"""


def heartbeats(url: str) -> dict[str, object]:
    return {r["name"]: r["heartbeat_at"] for r in query(url, "SELECT * FROM sync_workers")}


def test_failing_heartbeat(cli: Cli, fault_db: str, cluster: PgCluster) -> None:
    """Heartbeats fail for 8 s (longer than the lease) while two workers send.

    The failure is logged and retried, the heartbeat resumes, and no worker sends what it
    may no longer hold: Kantata's history never reads 100→300, 300→400, 400→300.
    """
    sandbox, work, env = prepare(cli, fault_db, rounds=3, budget=40, KANTATA_SYNC_BATCH_SIZE="100")
    workers: list[Worker] = []
    try:
        run_db(fault_db, lambda conn: conn.execute(HEARTBEAT_TRIGGER))
        started = time.monotonic()
        workers = [Worker.start(f"worker{i}", env, cli.cwd) for i in range(2)]
        wait_until(lambda: len(heartbeats(fault_db)) == 2, "both workers to register")
        wait_until(lambda: succeeded(fault_db) >= work.total // 10, "progress")
        run_db(fault_db, lambda conn: conn.execute("INSERT INTO kantata_test_fault VALUES (1)"))
        failing_at = age(started)
        time.sleep(8)
        run_db(fault_db, lambda conn: conn.execute("DELETE FROM kantata_test_fault"))
        cleared = time.monotonic()
        before = heartbeats(fault_db)
        print(
            f"\nheartbeats failed from {failing_at} s to {age(started)} s; "
            f"{succeeded(fault_db)} of {work.total} changes succeeded by then"
        )

        problems = []
        # Beats come every lease/3 = 2 s; within 6 beats (when the others would count it dead)
        # each worker still running has beaten again.
        resumed: set[str] = set()
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            now = heartbeats(fault_db)
            resumed |= {n for n, at in now.items() if n in before and at != before[n]}
            if all(w.name in resumed or w.poll() is not None for w in workers):
                break
            time.sleep(0.2)
        silent = [w.name for w in workers if w.name not in resumed and w.poll() is None]
        if silent:
            problems.append(
                f"{silent} kept running {round(time.monotonic() - cleared, 1)} s after the "
                f"heartbeat fault cleared without beating again (is the heartbeat task dead?)"
            )

        still = wait_all(workers, EXIT_BOUND)
        codes = {w.name: w.poll() for w in workers}
        print(f"workers exited {codes} at {age(started)} s")
        for worker in workers:
            noticed = [
                e
                for e in worker.events()
                if e.get("level") in ("warning", "error")
                and re.search(r"heartbeat", str(e), re.IGNORECASE)
            ]
            if not noticed:
                problems.append(
                    f"{worker.name} logged no warning or error about its failing heartbeat"
                )
            code = codes[worker.name]
            if code == 4 and HEARTBEAT_FAULT in worker.final_message():
                continue  # gave up, naming the real cause
            problems += check_exit(worker, code, allow_database_error=False)
        problems += check_runs(fault_db, workers, codes, started)
        stop_all(still)  # hung: killed, and what they held is left to the clean run
        problems += finish_with_clean_run(cli, env, fault_db)
        problems += check_all(fault_db, sandbox, work)
        assert not problems, "\n".join(problems)
    finally:
        stop_all(workers)
        stop(sandbox.process)
