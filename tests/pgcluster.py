"""A throwaway PostgreSQL cluster of a test's own, to restart and stop at will.

The shared server (``KANTATA_SYNC_TEST_PG_URL``, port 5432) is never restarted or stopped by a
test: fault tests ``initdb`` a cluster in a temporary directory instead, start it on a free port
with ``pg_ctl -w``, trust authentication on 127.0.0.1 only, and a ``test`` database. It is
stopped (``-m immediate``) and its directory removed at the end, whatever happened.

PostgreSQL refuses to run as root: as root, every ``initdb``/``pg_ctl`` runs as the ``postgres``
OS user through ``runuser``. Without ``initdb`` the tests skip, or fail when
``KANTATA_SYNC_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

PG_BIN_DIRS = (
    os.environ.get("KANTATA_SYNC_TEST_PG_BIN", ""),
    "/usr/lib/postgresql/15/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/14/bin",
    "/usr/local/pgsql/bin",
)
REQUIRE_POSTGRES = os.environ.get("KANTATA_SYNC_REQUIRE_POSTGRES") == "1"


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, if any."""
    for directory in PG_BIN_DIRS:
        if directory and (Path(directory) / "initdb").is_file():
            return Path(directory)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


CLUSTER_PORTS = range(20000, 32000)
"""Below Linux's ephemeral range (32768-60999 unless configured), from which the kernel takes
every port 0 bind and every outgoing connection's local port. A cluster that its test stops
leaves its port free for as long as the outage lasts (20 s), and a port from that range could
meanwhile go to a sandbox or listener of a test running beside it (pytest-xdist): the cluster
would then fail to start again. Nothing in the suite binds a fixed port down here."""
PORTS_PER_WORKER = 1000


def free_port() -> int:
    """A free port for a cluster, from this pytest-xdist worker's own slice of
    :data:`CLUSTER_PORTS` (``gw0`` the first; no worker id, as without xdist, the first too),
    so that two workers' clusters never pick the same port."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = (int(worker) if worker.isdigit() else 0) % (len(CLUSTER_PORTS) // PORTS_PER_WORKER)
    start = CLUSTER_PORTS.start + index * PORTS_PER_WORKER
    ports = list(range(start, start + PORTS_PER_WORKER))
    random.shuffle(ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}-{start + PORTS_PER_WORKER - 1}")


class PgCluster:
    """One cluster in ``root``: ``start()``, ``stop()``, ``restart(fast=True)``, ``destroy()``."""

    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.logfile = root / "postgres.log"
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/test"
        self.running = False

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A PostgreSQL program as the cluster's owner (``postgres`` when we are root)."""
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root
        )

    def _as_owner(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = self._run(*args, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}\n{self.log_tail()}"
            )
        return done

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def init(self) -> None:
        self._as_owner(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 100\nshared_buffers = 32MB\n"
                "log_min_messages = warning\n"
            )
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        )
        self.start()
        self._admin_sql("CREATE DATABASE test")

    def _admin_sql(self, sql: str) -> None:
        async def go() -> None:
            conn = await asyncpg.connect(
                f"postgresql://postgres@127.0.0.1:{self.port}/postgres", timeout=10
            )
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(go())

    def start(self) -> None:
        self._as_owner(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "start"
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._as_owner("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def restart(self, fast: bool = True) -> float:
        """``pg_ctl restart`` (``-m fast`` by default); returns how long it took."""
        started = time.monotonic()
        self._as_owner(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-m",
            "fast" if fast else "smart",
            "-w",
            "-t",
            "60",
            "restart",
        )
        self.running = True
        return time.monotonic() - started

    def ensure_running(self) -> None:
        if self._run("pg_ctl", "-D", str(self.data), "status").returncode != 0:
            self.start()

    def destroy(self) -> None:
        if self.data.exists():
            with contextlib.suppress(Exception):
                self._as_owner(
                    "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30
                )
        self.running = False
        shutil.rmtree(self.root, ignore_errors=True)

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database in this cluster (dropped afterwards): its ``postgresql://`` URL."""
        self.ensure_running()
        name = f"kantata_fault_{uuid.uuid4().hex[:12]}"
        self._admin_sql(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql://postgres@127.0.0.1:{self.port}/{name}"
        finally:
            with contextlib.suppress(Exception):
                self.ensure_running()
                self._admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _unavailable(reason: str) -> None:
    if REQUIRE_POSTGRES:
        pytest.fail(f"{reason} (KANTATA_SYNC_REQUIRE_POSTGRES=1)")
    pytest.skip(reason)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[PgCluster]:
    """Init, start, yield, and always stop and remove a cluster of our own."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        _unavailable("no initdb found: cannot create a throwaway PostgreSQL cluster")
    assert bin_dir is not None
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            _unavailable("running as root without runuser: cannot run initdb as postgres")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and no postgres OS user to run initdb as")
            raise
    root = Path(tempfile.mkdtemp(prefix="kantata-pgcluster-"))
    if os.geteuid() == 0:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    cluster = PgCluster(bin_dir, root, free_port())
    atexit.register(cluster.destroy)
    try:
        try:
            cluster.init()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            _unavailable(f"could not start a throwaway PostgreSQL cluster: {exc}")
        yield cluster
    finally:
        cluster.destroy()
        atexit.unregister(cluster.destroy)
