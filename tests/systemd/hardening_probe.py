"""Check 3 of scripts/systemd-check.sh: what kantata-sync-daemon.service's hardening allows.

The check's drop-in runs this as an ``ExecStartPre=`` of the daemon, with the venv's Python,
so under the unit's own dynamic user, credential and sandbox: every hardening option of the
unit applies to it as to ``ExecStart=``. It imports every C extension of the venv, runs
uvloop, aiohttp, orjson and greenlet against the sandbox over AF_INET, tries what the
hardening must deny, and prints one line, ``systemd-check-probe {json}``, to the journal.
It always exits 0: inside.py judges the findings.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import mmap
import os
import socket
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

SANDBOX_HOST = "127.0.0.1"
SANDBOX_PORT = 18089
STATE_DIRECTORY = Path("/var/lib/kantata-sync")
TOKEN_FILE = Path("/etc/kantata-sync/token")


def attempt(action: Callable[[], object]) -> str:
    """``allowed``, or ``denied (ERRNO)`` when the action raised an OSError."""
    try:
        action()
    except OSError as exc:
        return f"denied ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    return "allowed"


def extensions() -> dict[str, Any]:
    """Import every compiled module in the venv (test helpers aside)."""
    site = Path(sysconfig.get_paths()["purelib"])
    imported: list[str] = []
    failed: dict[str, str] = {}
    for library in sorted(site.rglob("*.so")):
        parts = library.relative_to(site).parts
        name = library.name.split(".")[0]
        if "tests" in parts or name.startswith("_test"):
            continue
        module = ".".join((*parts[:-1], name))
        try:
            importlib.import_module(module)
        except Exception as exc:  # report, don't die: the checks want the whole list
            failed[module] = f"{type(exc).__name__}: {exc}"
        else:
            imported.append(module)
    return {"imported": imported, "failed": failed}


def runtime() -> str:
    """uvloop's loop, aiohttp's client and C parser, orjson and a greenlet switch, for real."""
    import aiohttp
    import greenlet  # type: ignore[import-untyped]
    import orjson
    import uvloop

    async def fetch() -> dict[str, Any]:
        url = f"http://{SANDBOX_HOST}:{SANDBOX_PORT}/__sandbox__/stats"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            response.raise_for_status()
            data: dict[str, Any] = orjson.loads(await response.read())
            return data

    stats = uvloop.run(fetch())
    switched = greenlet.greenlet(lambda: "switched").switch()
    return f"ok: sandbox stats with {len(stats)} keys over uvloop/aiohttp; greenlet {switched}"


def credential() -> dict[str, Any]:
    """The systemd credential the unit loads, described without its value."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return {"present": False}
    path = Path(directory) / "kantata-token"
    try:
        info = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return {"present": False, "error": str(exc)}
    return {
        "present": True,
        "directory": directory,
        "mode": f"{info.st_mode & 0o777:04o}",
        "uid": info.st_uid,
        "sha256": digest,
    }


def process_status() -> dict[str, str]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"NoNewPrivs", "Seccomp", "CapEff", "CapBnd"}:
            fields[key] = value.strip()
    return fields


def write_execute_mapping() -> None:
    mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()


def open_socket(family: int, kind: int) -> None:
    socket.socket(family, kind).close()


def connect_sandbox() -> None:
    socket.create_connection((SANDBOX_HOST, SANDBOX_PORT), timeout=5).close()


def chown_own_file() -> None:
    """chown(2) to oneself is a no-op anywhere, unless ~@privileged (@chown) filters it."""
    path = STATE_DIRECTORY / ".systemd-check-probe"
    path.write_text("probe\n")
    try:
        os.chown(path, os.getuid(), os.getgid())
    finally:
        path.unlink()


def lower_priority() -> None:
    """Raising one's own nice value needs no privilege, unless ~@resources filters it."""
    os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + 1)


def write_file(path: Path) -> Callable[[], None]:
    def write() -> None:
        path.write_text("probe\n")
        path.unlink()

    return write


def main() -> None:
    findings: dict[str, Any] = {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "status": process_status(),
        "extensions": extensions(),
        "credential": credential(),
        "token_file_read": attempt(TOKEN_FILE.read_bytes),
        "write_execute_mapping": attempt(write_execute_mapping),
        "af_inet_connect": attempt(connect_sandbox),
        "af_inet6_socket": attempt(lambda: open_socket(socket.AF_INET6, socket.SOCK_STREAM)),
        "af_unix_socket": attempt(lambda: open_socket(socket.AF_UNIX, socket.SOCK_STREAM)),
        "af_netlink_socket": attempt(lambda: open_socket(socket.AF_NETLINK, socket.SOCK_RAW)),
        "af_packet_socket": attempt(lambda: open_socket(socket.AF_PACKET, socket.SOCK_RAW)),
        "resolve_localhost": attempt(lambda: socket.getaddrinfo("localhost", 443)),
        "chown": attempt(chown_own_file),
        "setpriority": attempt(lower_priority),
        "write_state_directory": attempt(write_file(STATE_DIRECTORY / ".systemd-check-write")),
        "write_venv": attempt(write_file(Path("/opt/kantata-sync/venv/.systemd-check-write"))),
        "write_etc": attempt(write_file(Path("/etc/.systemd-check-write"))),
    }
    try:
        findings["runtime"] = runtime()
    except Exception as exc:
        findings["runtime"] = f"failed: {type(exc).__name__}: {exc}"
    print("systemd-check-probe " + json.dumps(findings, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
