"""Issue 11: a worker that loses its lease must neither stop the fleet nor write stale data.

Four ``kantata-sync run`` workers share one PostgreSQL queue and one rate budget; one of them,
the victim, is frozen with SIGSTOP at a chosen moment and thawed only once the others have
finished (or a generous bound has passed):

- inside a claim transaction, holding the claim's advisory lock;
- right after its first claim, before it could send what it claimed;
- with requests in flight (the sandbox holds them 1.5 s);
- inside a write transaction on its own rows (a write-back, or a lease extension), after it
  has sent requests.

Then: the others finished within the lease plus normal work (the figure is printed), every
change is terminal and succeeded, Kantata recorded each status change exactly once and in the
asked order, every workspace ends at the last values asked for, the thawed worker sent Kantata
nothing and changed no result after its leases were taken over (and logged ``lease.lost``),
and it exited cleanly in bounded time.

The victim's PostgreSQL sessions are found by ``application_name = 'kantata-sync/<name>'`` and,
for a worker that does not set it, by their client ports; each test also checks that every
session of the victim carries that name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest

from worker.claims import CLAIM_LOCK_KEY

from .conftest import Cli, SandboxProcess, start_sandbox, stop
from .fleet import (
    SESSIONS_SQL,
    Worker,
    Workload,
    age,
    changes_snapshot,
    check_all,
    check_exit,
    check_terminal,
    describe_activity,
    inspect,
    query,
    set_faults,
    status_history,
    stop_all,
    wait_all,
    worker_env,
    write_requests,
    write_workload,
)

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

LEASE = 6
BUDGET = 100
WORKSPACES = 100
ROUNDS = 2
SURVIVORS = 3
FLEET_BOUND = LEASE + 60
"""Seconds the other workers get to finish after the freeze (they need about LEASE + 5)."""
THAW_BOUND = 60
"""Seconds the thawed worker gets to exit."""
CATCH_TIMEOUT = 30


@dataclass
class Frozen:
    """Where the victim was frozen."""

    where: str
    session: asyncpg.Record | None = None
    tries: int = 1
    """Freezes it took: one that landed after the transaction ended is undone and retried."""


# --------------------------------------------------------------------------- freezing


_ports: dict[int, tuple[float, list[int]]] = {}


async def _sessions(conn: asyncpg.Connection, victim: Worker) -> list[asyncpg.Record]:
    """The victim's sessions; its client ports (read from /proc, slow) are cached 0.25 s."""
    read_at, ports = _ports.get(victim.pid, (0.0, []))
    if time.monotonic() - read_at > 0.25:
        ports = victim.local_ports(victim.db_port)
        _ports[victim.pid] = (time.monotonic(), ports)
    return list(await conn.fetch(SESSIONS_SQL, victim.application_name, ports))


async def _session_where(
    conn: asyncpg.Connection,
    victim: Worker,
    wanted: Callable[[asyncpg.Record], bool],
    seconds: float,
) -> asyncpg.Record | None:
    """The first of the victim's sessions in a transaction that ``wanted`` accepts."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if victim.poll() is not None:
            raise AssertionError(f"the victim exited ({victim.poll()}) before it was caught")
        for session in await _sessions(conn, victim):
            if session["xact_start"] is not None and wanted(session):
                return session
        await asyncio.sleep(0.001)
    return None


def _waiting_on(*events: str) -> Callable[[asyncpg.Record], bool]:
    """Accepts a session whose statement waits for a heavyweight lock of one of ``events``."""

    def waiting(session: asyncpg.Record) -> bool:
        return (
            session["state"] == "active"
            and session["wait_event_type"] == "Lock"
            and session["wait_event"] in events
        )

    return waiting


async def _freeze_behind(
    url: str,
    victim: Worker,
    what: str,
    hold: Callable[[asyncpg.Connection], Awaitable[bool]],
    release: Callable[[asyncpg.Connection], Awaitable[None]],
    blocked_on: Callable[[asyncpg.Record], bool],
    holding: Callable[[asyncpg.Record], bool],
) -> Frozen:
    """Freeze the victim inside a transaction, holding what the others will need.

    Polling for a transaction of a few milliseconds on two busy cores is a lottery, so the
    test makes the victim's transaction wait instead: it holds a lock the victim's next
    statement needs (``hold``), waits until a victim session in a transaction is blocked on
    it, SIGSTOPs the victim, and lets go (``release``). The victim's backend, which is not
    frozen, then gets the lock, finishes the statement and sits ``idle in transaction``
    holding it (``holding`` confirms), while its frozen client can send nothing more.
    """
    holder = await asyncpg.connect(url)
    watcher = await asyncpg.connect(url)
    try:
        for tries in range(1, 11):
            if not await hold(holder):
                await asyncio.sleep(0.05)
                continue
            try:
                blocked = await _session_where(watcher, victim, blocked_on, CATCH_TIMEOUT)
                if blocked is not None:
                    victim.freeze()
            finally:
                await release(holder)
            if blocked is None:
                continue
            caught = await _session_where(
                watcher,
                victim,
                lambda s, b=blocked: (
                    s["pid"] == b["pid"]
                    and s["xact_start"] == b["xact_start"]
                    and s["state"] == "idle in transaction"
                    and holding(s)
                ),
                5,
            )
            if caught is not None:
                return Frozen(what, caught, tries)
            victim.abort_freeze()
    finally:
        await holder.close()
        await watcher.close()
    raise AssertionError(f"could not freeze the victim {what}")


async def _freeze_outside_transaction(url: str, victim: Worker, what: str) -> Frozen:
    """SIGSTOP the victim now, retrying until none of its sessions is in a transaction."""
    conn = await asyncpg.connect(url)
    try:
        for tries in range(1, 201):
            victim.freeze()
            await asyncio.sleep(0.05)
            if not any(s["xact_start"] for s in await _sessions(conn, victim)):
                return Frozen(what, tries=tries)
            victim.abort_freeze()
            await asyncio.sleep(0.003)
    finally:
        await conn.close()
    raise AssertionError(f"the victim was always inside a transaction; wanted it {what}")


async def _session_names(url: str, victim: Worker) -> set[str]:
    """The ``application_name`` of each of the victim's sessions (found by client port)."""
    conn = await asyncpg.connect(url)
    try:
        _ports.pop(victim.pid, None)
        return {s["application_name"] for s in await _sessions(conn, victim)}
    finally:
        await conn.close()


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = CATCH_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def _held(url: str, name: str) -> int:
    rows = query(
        url,
        "SELECT count(*) AS n FROM sync_changes WHERE lease_owner = $1 AND state = 'in_flight'",
        name,
    )
    return int(rows[0]["n"])


def freeze_in_claim(url: str, sandbox: SandboxProcess, victim: Worker) -> Frozen:
    """Frozen in a claim transaction holding the claim lock, with earlier claims in hand.

    The test takes the claims' advisory lock itself, so the victim's next claim waits for it
    inside its transaction; frozen there, the victim's backend gets the lock and keeps it.
    """

    async def hold(conn: asyncpg.Connection) -> bool:
        await conn.execute("SELECT pg_advisory_lock($1::bigint)", CLAIM_LOCK_KEY)
        return True

    async def release(conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT pg_advisory_unlock($1::bigint)", CLAIM_LOCK_KEY)

    return asyncio.run(
        _freeze_behind(
            url,
            victim,
            "inside a claim transaction, holding the claim lock",
            hold,
            release,
            _waiting_on("advisory"),
            lambda s: bool(s["holds_advisory"]),
        )
    )


def freeze_in_write_back(url: str, sandbox: SandboxProcess, victim: Worker) -> Frozen:
    """Frozen in a write transaction holding the locks of its own rows, after sending.

    The test locks the victim's in-flight rows, so the victim's next write-back (or lease
    extension) of them waits inside its transaction; frozen there, its backend gets the row
    locks and keeps them: the others' takeover of those rows, after the lease, must not hang.
    """
    _wait_for(lambda: len(victim.named("http.attempt")) >= 5, "the victim's first requests")

    async def hold(conn: asyncpg.Connection) -> bool:
        await conn.execute("BEGIN")
        locked = await conn.fetch(
            "SELECT id FROM sync_changes WHERE lease_owner = $1 AND state = 'in_flight'"
            " ORDER BY id FOR UPDATE SKIP LOCKED",
            victim.name,
        )
        if not locked:
            await conn.execute("ROLLBACK")
        return bool(locked)

    async def release(conn: asyncpg.Connection) -> None:
        await conn.execute("ROLLBACK")

    return asyncio.run(
        _freeze_behind(
            url,
            victim,
            "inside a write transaction, holding its rows' locks",
            hold,
            release,
            lambda s: _waiting_on("transactionid", "tuple")(s) and "sync_changes" in s["query"],
            lambda s: "sync_changes" in (s["query"] or ""),
        )
    )


def freeze_after_claim(url: str, sandbox: SandboxProcess, victim: Worker) -> Frozen:
    """Frozen as soon as its first claim is committed (before the others even start)."""
    return asyncio.run(_freeze_outside_transaction(url, victim, "right after its first claim"))


def freeze_in_flight(url: str, sandbox: SandboxProcess, victim: Worker) -> Frozen:
    _wait_for(lambda: bool(victim.named("http.attempt")), "the victim's first request")
    # Requests sent from now on are held 1.5 s by the sandbox (then applied and answered):
    # the victim is frozen with some outstanding, well inside its lease.
    set_faults(sandbox, latency_ms=1500)
    try:
        time.sleep(0.3)
        return asyncio.run(_freeze_outside_transaction(url, victim, "with requests in flight"))
    finally:
        set_faults(sandbox, latency_ms=0)


# --------------------------------------------------------------------------- the scenario


def run_stall(
    cli: Cli,
    pg_url: str,
    freeze: Callable[[str, SandboxProcess, Worker], Frozen],
    *,
    before_the_others: bool = False,
) -> None:
    sandbox = start_sandbox("--workspaces", str(WORKSPACES), "--rate-limit", str(BUDGET * 10))
    workers: list[Worker] = []
    try:
        work: Workload = write_workload(cli.cwd / "changes.jsonl", WORKSPACES, ROUNDS)
        env = worker_env(
            cli.env,
            pg_url,
            sandbox,
            KANTATA_SYNC_RATE_LIMIT=str(BUDGET),
            KANTATA_SYNC_CONCURRENCY="8",
            KANTATA_SYNC_BATCH_SIZE="40",
            KANTATA_SYNC_LEASE_SECONDS=str(LEASE),
            # Longer than the lease: a worker with nothing left to claim waits for the
            # frozen worker's leases to expire instead of leaving their changes behind.
            KANTATA_SYNC_RETRY_MAX_DELAY=str(LEASE + 4),
        )
        assert cli("db", "upgrade", env=env).returncode == 0
        enqueued = cli("enqueue", "-f", "changes.jsonl", env=env)
        assert enqueued.returncode == 0, enqueued.stderr
        started = time.monotonic()
        # The victim starts first and claims first, so that it surely holds changes: started
        # together, three workers can claim every workspace before the fourth asks.
        victim = Worker.start("victim", env, cli.cwd)
        workers.append(victim)
        _wait_for(lambda: _held(pg_url, victim.name) > 0, "the victim's first claim")
        survivors: list[Worker] = []
        if not before_the_others:
            survivors = [Worker.start(f"survivor{i}", env, cli.cwd) for i in range(SURVIVORS)]
            workers += survivors
        frozen = freeze(pg_url, sandbox, victim)
        assert victim.frozen_at is not None
        if before_the_others:
            survivors = [Worker.start(f"survivor{i}", env, cli.cwd) for i in range(SURVIVORS)]
            workers += survivors
        names = asyncio.run(_session_names(pg_url, victim))
        held = _held(pg_url, victim.name)
        session = frozen.session
        print(
            f"\nvictim frozen {frozen.where} at {age(started)} s into the run, holding {held}"
            f" changes ({frozen.tries} tries)"
            + (
                f"; its session: {session['state']}, app={session['application_name']!r},"
                f" query={(session['query'] or '')[:80]!r}"
                if session is not None
                else ""
            )
        )

        problems: list[str] = []
        if names != {victim.application_name}:
            problems.append(
                f"the victim's sessions are not named {victim.application_name!r} in "
                f"pg_stat_activity: {sorted(names)}"
            )
        still_running = wait_all(survivors, FLEET_BOUND)
        last_exit = max(w.exited_at or time.monotonic() for w in survivors)
        fleet_time = round(last_exit - victim.frozen_at, 1)
        if still_running:
            problems.append(
                f"the fleet stopped: {len(still_running)} of {SURVIVORS} other workers still "
                f"running {FLEET_BOUND} s after the victim was frozen {frozen.where}; "
                f"sessions:\n{describe_activity(pg_url)}"
            )
        else:
            print(f"the other workers finished {fleet_time} s after the freeze (lease {LEASE} s)")
            problems += [f"before the thaw: {p}" for p in check_terminal(pg_url, work)]

        writes_before = write_requests(sandbox)
        history_before = status_history(sandbox)
        snapshot_before = changes_snapshot(pg_url)
        frozen_for = round(time.monotonic() - victim.frozen_at, 1)
        victim.thaw()
        assert victim.thawed_wall is not None
        thawed = time.monotonic()
        code = victim.wait(THAW_BOUND)
        thaw_exit = round(time.monotonic() - thawed, 1)
        assert victim.frozen_wall is not None
        sent, outstanding = victim.sends_around(victim.frozen_wall)
        print(
            f"victim frozen {frozen_for} s, after sending {sent} writes ({outstanding} of them"
            f" in flight at the freeze); exited {code} {thaw_exit} s after the thaw"
        )
        late = wait_all(still_running, THAW_BOUND)

        if not still_running:
            # Every change was terminal before the thaw: anything the victim sends or
            # writes now is stale.
            # The sandbox's count is the proof. The victim's log only explains it: a request
            # answered just before the freeze but logged after the thaw looks "sent after the
            # thaw" there (its start is computed from the log time and the duration).
            stale = write_requests(sandbox) - writes_before
            logged = victim.sends_after(victim.thawed_wall)
            if stale:
                problems.append(
                    f"the thawed victim sent Kantata {stale} stale writes after its leases "
                    f"were taken over (its log shows {len(logged)}, e.g. "
                    f"{[(e.get('endpoint'), e.get('change_ids')) for e in logged[:5]]})"
                )
            if status_history(sandbox) != history_before:
                problems.append("Kantata's status history changed after the thaw")
            changed = {
                change_id
                for change_id, row in changes_snapshot(pg_url).items()
                if snapshot_before.get(change_id) != row
            }
            if changed:
                problems.append(
                    f"the thawed victim overwrote {len(changed)} results in sync_changes, "
                    f"e.g. {sorted(changed)[:10]}"
                )
            if held and not victim.named("lease.lost"):
                problems.append(
                    f"the victim had {held} changes taken over but logged no lease.lost"
                )
        problems += check_all(pg_url, sandbox, work)
        for worker in survivors:
            if worker in late:
                continue
            problems += check_exit(worker, worker.poll(), allow_database_error=False)
        problems += check_exit(victim, code, allow_database_error=True)
        stats = inspect(sandbox, "stats")
        print(
            f"{work.total} changes; sandbox answered {stats['requests']}; "
            f"victim lease.lost lines: {len(victim.named('lease.lost'))}"
        )
        assert not problems, "\n".join(problems)
    finally:
        stop_all(workers)
        stop(sandbox.process)


# --------------------------------------------------------------------------- the tests


def test_frozen_inside_a_claim_transaction(cli: Cli, pg_url: str) -> None:
    """Frozen holding the claim's advisory lock: the others must not wait for it for ever."""
    run_stall(cli, pg_url, freeze_in_claim)


def test_frozen_between_claim_and_send(cli: Cli, pg_url: str) -> None:
    """Frozen holding a claim it has not sent: once thawed it must send none of it."""
    run_stall(cli, pg_url, freeze_after_claim, before_the_others=True)


def test_frozen_with_requests_in_flight(cli: Cli, pg_url: str) -> None:
    """Frozen while Kantata works on its requests: what it still held is not sent again."""
    run_stall(cli, pg_url, freeze_in_flight)


def test_frozen_during_write_back(cli: Cli, pg_url: str) -> None:
    """Frozen inside the write-back transaction, holding its rows' locks."""
    run_stall(cli, pg_url, freeze_in_write_back)
