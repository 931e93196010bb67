"""The checks of scripts/systemd-check.sh, run inside the booted test container.

kantata-check.service runs this as root with the container's own Python (not kantata-sync's
venv), once the container has booted. It installs kantata-sync the way deploy/OPERATIONS.md
says: the project from the checkout (bind-mounted at /src) into /opt/kantata-sync/venv,
whose dependencies the cached root already holds; the configuration and the token; the
shipped units, unmodified, plus the test drop-ins of tests/systemd/dropins; the schema as
the service's user. Then it checks the units under this real systemd, against the sandbox
running as a plain unit on the container's private loopback.

Each check appends one line to /results/results.txt, ``PASS <n> <name>: <detail>`` or
``FAIL <n> <name>: <why>``, which the host prints. The container's journal goes to
/results/journal.txt. The container powers off when this ends, whatever happened.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SRC = Path("/src")
HERE = SRC / "tests" / "systemd"
RESULTS = Path("/results")
VENV = Path("/opt/kantata-sync/venv")
KANTATA_SYNC = VENV / "bin" / "kantata-sync"
WHEELS = Path("/var/cache/kantata-check/wheels")  # the build requirements, for offline builds
CONFIG = Path("/etc/kantata-sync/kantata-sync.toml")
TOKEN = Path("/etc/kantata-sync/token")
UNIT_DIR = Path("/etc/systemd/system")
PROBE = Path("/usr/local/lib/kantata-check/hardening_probe.py")
EXIT_LOG = Path("/run/kantata-check/exit.log")
NEXT_TOKEN = Path("/run/kantata-check/next-token")  # the rotation check's new token
TEXTFILE_DIR = Path("/var/lib/prometheus/node-exporter")
SANDBOX = "http://127.0.0.1:18089"
METRICS = "http://127.0.0.1:9464"
DAEMON = "kantata-sync-daemon.service"
ONESHOT = "kantata-sync.service"
TIMER = "kantata-sync.timer"
UNITS = ("kantata-sync.service", "kantata-sync.timer", "kantata-sync-daemon.service")
DYNAMIC_UIDS = range(61184, 65520)  # systemd's DynamicUser= range

# deploy/OPERATIONS.md's kantata-sync-admin: a command as the services' dynamic user.
ADMIN = (
    "systemd-run",
    "--quiet",
    "--wait",
    "--pipe",
    "--collect",
    "-p",
    "DynamicUser=yes",
    "-p",
    "User=kantata-sync",
    "-p",
    "StateDirectory=kantata-sync",
    "-p",
    "WorkingDirectory=/var/lib/kantata-sync",
    "-p",
    "LoadCredential=kantata-token:/etc/kantata-sync/token",
    str(KANTATA_SYNC),
    "--config",
    str(CONFIG),
)

CHECKS = {
    1: "ready",
    2: "credential",
    3: "hardening",
    4: "flow",
    5: "watchdog",
    6: "drain",
    7: "timer",
    8: "reload",
    9: "exit-codes",
    10: "rotate",
}


class Failed(Exception):
    """A check's verdict: what was expected and what was seen."""


# -- helpers -------------------------------------------------------------------------------


def run(
    args: Sequence[str | Path], *, stdin: str | None = None, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        words = " ".join(str(arg) for arg in args)
        raise Failed(
            f"`{words}` exited {result.returncode}: {(result.stderr or result.stdout).strip()}"
        )
    return result


def admin(*args: str, stdin: str | None = None) -> str:
    return run([*ADMIN, *args], stdin=stdin, timeout=90).stdout


def show(unit: str, *names: str) -> dict[str, str]:
    args = ["systemctl", "show", unit]
    for name in names:
        args += ["-p", name]
    lines = run(args).stdout.splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def http(method: str, url: str, body: object | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sandbox(path: str, body: object | None = None) -> Any:
    status, text = http("GET" if body is None else "POST", f"{SANDBOX}/__sandbox__/{path}", body)
    if status != 200:
        raise Failed(f"sandbox {path}: HTTP {status}: {text[:200]}")
    return json.loads(text)


def workspace(workspace_id: int) -> dict[str, Any]:
    data: dict[str, Any] = sandbox(f"workspaces/{workspace_id}")
    return data


def wait_until(what: str, predicate: Callable[[], object], timeout: float) -> float:
    """Seconds until ``predicate()`` held; Failed after ``timeout``."""
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except (OSError, Failed, ValueError, KeyError):
            pass
        if time.monotonic() - started > timeout:
            raise Failed(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def journal(unit: str, since: float | None = None) -> list[str]:
    args = ["journalctl", "--no-pager", "-o", "cat", "-u", unit]
    if since is not None:
        args.append(f"--since=@{int(since) - 1}")
    return run(args).stdout.splitlines()


def events(unit: str, since: float | None = None) -> list[dict[str, Any]]:
    """kantata-sync's JSON log lines of ``unit``."""
    found = []
    for line in journal(unit, since):
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def enqueue(changes: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(change) + "\n" for change in changes)
    out = admin("enqueue", "--file", "-", stdin=lines)
    if f"enqueued {len(changes)} change(s)" not in out:
        raise Failed(f"enqueue said: {out.strip()}")


def report() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(admin("report", "--format", "json"))
    return rows


def rows_by_ref(prefix: str) -> dict[str, dict[str, Any]]:
    return {
        row["source_ref"]: row
        for row in report()
        if row["source_ref"] and row["source_ref"].startswith(prefix)
    }


def succeeded(source_ref: str) -> bool:
    """Whether the change's result is written back as succeeded."""
    return bool(rows_by_ref(source_ref)[source_ref]["state"] == "succeeded")


def exit_log(unit: str) -> list[str]:
    if not EXIT_LOG.exists():
        return []
    return [line for line in EXIT_LOG.read_text().splitlines() if line.startswith(f"unit={unit} ")]


def probe_findings(unit: str = DAEMON) -> dict[str, Any]:
    """The hardening probe's latest line in the unit's journal."""
    prefix = "systemd-check-probe "
    lines = [line for line in journal(unit) if line.startswith(prefix)]
    if not lines:
        raise Failed(f"the hardening probe (ExecStartPre=) of {unit} printed nothing")
    findings: dict[str, Any] = json.loads(lines[-1].removeprefix(prefix))
    return findings


def expect(condition: object, message: str) -> None:
    if not condition:
        raise Failed(message)


def sandbox_codes() -> dict[str, int]:
    """Answered API requests by HTTP status, over every route."""
    codes: dict[str, int] = {}
    for by_status in sandbox("stats")["requests"].values():
        for code, count in by_status.items():
            codes[code] = codes.get(code, 0) + count
    return codes


# -- install, as deploy/OPERATIONS.md says --------------------------------------------------


def install() -> str:
    started = time.monotonic()
    # Step 1, the program: kantata-sync from this checkout. The cached venv has its
    # dependencies (from `pip install` of a checkout with the same pyproject.toml, by
    # build-root.sh); the network is private, so the build requirements come from wheels.
    run(
        [
            VENV / "bin" / "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--find-links",
            WHEELS,
            "--force-reinstall",
            SRC,
        ],
        timeout=180,
    )
    installed = run([KANTATA_SYNC, "--help"]).returncode == 0
    expect(installed, "kantata-sync --help failed after pip install")
    # Steps 2 and 3: the shipped configuration, pointed at the sandbox, and the token.
    run(["install", "-d", "-m", "0755", CONFIG.parent])
    run(["install", "-m", "0644", SRC / "deploy" / "kantata-sync.toml", CONFIG])
    text, count = re.subn(
        r"(?m)^api_base_url = .*$", f'api_base_url = "{SANDBOX}/api/v1"', CONFIG.read_text()
    )
    expect(count == 1, "deploy/kantata-sync.toml has no single api_base_url line")
    CONFIG.write_text(text)
    run(["install", "-m", "0600", "/dev/null", TOKEN])
    TOKEN.write_text(secrets.token_urlsafe(24) + "\n")
    # Step 4: the units, unmodified, and the test drop-ins.
    run(["install", "-m", "0644", *(SRC / "deploy" / unit for unit in UNITS), UNIT_DIR])
    for dropin in sorted((HERE / "dropins").glob("*.d/*.conf")):
        run(["install", "-D", "-m", "0644", dropin, UNIT_DIR / dropin.parent.name / dropin.name])
    run(["install", "-m", "0644", HERE / "units" / "kantata-sandbox.service", UNIT_DIR])
    run(["install", "-D", "-m", "0644", HERE / "hardening_probe.py", PROBE])
    run(["install", "-d", "-m", "0755", EXIT_LOG.parent, TEXTFILE_DIR])
    run(["install", "-m", "0600", "/dev/null", NEXT_TOKEN])
    NEXT_TOKEN.write_text(secrets.token_urlsafe(24) + "\n")
    run(["systemctl", "daemon-reload"])
    for unit in UNITS:
        shipped = (SRC / "deploy" / unit).read_bytes()
        expect((UNIT_DIR / unit).read_bytes() == shipped, f"{unit} differs from deploy/")
    # The sandbox, accepting only the token in /etc/kantata-sync/token for now.
    run(["systemctl", "start", "kantata-sandbox.service"])
    wait_until("the sandbox to listen", lambda: sandbox("stats"), 30)
    sandbox("tokens/revoke", {"token": NEXT_TOKEN.read_text().strip()})  # until rotation
    # Steps 5 and 6: the schema and the configuration check, as the services' dynamic user.
    upgraded = admin("db", "upgrade").strip()
    checked = admin("config", "check")
    expect(TOKEN.read_text().strip() not in checked, "config check printed the token")
    took = time.monotonic() - started
    return f"kantata-sync installed and configured in {took:.1f} s; {upgraded}"


# -- the checks ------------------------------------------------------------------------------


def check_ready() -> str:
    started = time.monotonic()
    run(["systemctl", "enable", "--now", DAEMON], timeout=90)
    took = time.monotonic() - started
    props = show(DAEMON, "Type", "ActiveState", "SubState", "StatusText", "MainPID")
    expect(props["Type"] == "notify", f"Type={props['Type']}")
    state = f"{props['ActiveState']} ({props['SubState']})"
    expect(state == "active (running)", f"the daemon is {state} after start")
    expect(props["StatusText"].startswith("idle"), f"status text {props['StatusText']!r}")
    ready = [e for e in events(DAEMON) if e.get("event") == "serve.ready"]
    expect(ready, "no serve.ready in the journal")
    health, _ = http("GET", f"{METRICS}/healthz")
    metrics_status, metrics = http("GET", f"{METRICS}/metrics")
    expect(health == 200, f"/healthz answered {health}")
    expect(metrics_status == 200 and "kantata_sync_queue_depth" in metrics, "/metrics is wrong")
    return (
        f"active (running) {took:.1f} s after `systemctl enable --now` returned on READY=1 "
        f'(Type=notify, status "{props["StatusText"]}"); /healthz 200, /metrics served'
    )


def check_flow() -> str:
    nonce = secrets.token_hex(3)
    title = f"systemd-check {nonce}"
    enqueue(
        [
            {
                "workspace_id": 7,
                "kind": "workspace_update",
                "payload": {"title": title},
                "source_ref": f"flow-title-{nonce}",
            },
            {
                "workspace_id": 7,
                "kind": "status_change",
                "payload": {"to_status_key": 310},
                "source_ref": f"flow-status-{nonce}",
            },
        ]
    )
    took = wait_until(
        "workspace 7 to get the title and status 310",
        lambda: workspace(7)["title"] == title and workspace(7)["status_key"] == 310,
        30,
    )

    def written_back() -> bool:
        rows = rows_by_ref("flow-")
        return len(rows) == 2 and all(row["state"] == "succeeded" for row in rows.values())

    wait_until("both changes to be written back as succeeded", written_back, 15)
    rows = rows_by_ref("flow-")
    outcomes = sorted(f"{row['outcome']}/{row['http_status']}" for row in rows.values())
    return (
        f"the sandbox shows workspace 7 titled {title!r} with status 310 {took:.1f} s after "
        f"`kantata-sync enqueue` as the service user; the outbox says succeeded "
        f"({', '.join(outcomes)})"
    )


def check_credential() -> str:
    info = TOKEN.stat()
    expect(info.st_mode & 0o777 == 0o600 and info.st_uid == 0, "token file is not root's 0600")
    with CONFIG.open("rb") as handle:
        settings = tomllib.load(handle)["kantata_sync"]
    expect("token" not in settings and "token_file" not in settings, "config names a token")
    environment = show(DAEMON, "Environment")["Environment"]
    expect("TOKEN" not in environment, f"token in the unit's environment: {environment}")
    found = probe_findings()
    credential = found["credential"]
    expect(credential.get("present"), f"no credential in the service: {credential}")
    expect(credential["uid"] == found["uid"], "the credential is not the service user's")
    expect(int(credential["mode"], 8) & 0o077 == 0, f"credential mode {credential['mode']}")
    digest = hashlib.sha256(TOKEN.read_bytes()).hexdigest()
    expect(credential["sha256"] == digest, "the credential differs from /etc/kantata-sync/token")
    expect(
        found["token_file_read"].startswith("denied"),
        f"the service can read {TOKEN} itself: {found['token_file_read']}",
    )
    codes = sandbox_codes()
    expect(codes.get("200", 0) > 0, f"the sandbox answered no request with 200: {codes}")
    expect("401" not in codes, f"the sandbox answered 401: {codes}")
    warnings = [line for line in journal(DAEMON) if "accessible to group or others" in line]
    expect(not warnings, f"kantata-sync warned: {warnings[0] if warnings else ''}")
    return (
        f"$CREDENTIALS_DIRECTORY/kantata-token (mode {credential['mode']}, the dynamic user's) "
        f"holds the file's token, which the service cannot read itself ({found['token_file_read']})"
        f"; not in the config or environment; the sandbox, which accepts no other token, "
        f"answered {codes.get('200', 0)} request(s) with 200 and none with 401"
    )


def judge_probe(found: dict[str, Any]) -> None:
    """Failed unless the probe saw every hardening option do its part."""
    imported = found["extensions"]["imported"]
    failed = found["extensions"]["failed"]
    expect(not failed, f"C extensions failed to import: {failed}")
    for needed in ("uvloop.loop", "orjson.orjson", "aiohttp._http_parser", "asyncpg.protocol"):
        expect(any(m.startswith(needed) for m in imported), f"{needed} was not imported")
    expect(found["runtime"].startswith("ok"), f"runtime: {found['runtime']}")
    expect(found["uid"] in DYNAMIC_UIDS, f"uid {found['uid']} is not a dynamic user")
    expect(found["status"].get("NoNewPrivs") == "1", f"status {found['status']}")
    expect(found["status"].get("Seccomp") == "2", f"status {found['status']}")
    expect(int(found["status"].get("CapEff", "1"), 16) == 0, f"status {found['status']}")
    expected = {
        "write_execute_mapping": "denied",  # MemoryDenyWriteExecute=
        "af_netlink_socket": "denied (EAFNOSUPPORT)",  # RestrictAddressFamilies=
        "af_packet_socket": "denied (EAFNOSUPPORT)",
        "af_inet_connect": "allowed",
        "af_inet6_socket": "allowed",
        "af_unix_socket": "allowed",
        "resolve_localhost": "allowed",
        "chown": "denied (EPERM)",  # SystemCallFilter=~@privileged
        "setpriority": "denied (EPERM)",  # SystemCallFilter=~@resources
        "write_state_directory": "allowed",  # StateDirectory=
        "write_venv": "denied (EROFS)",  # ProtectSystem=strict
        "write_etc": "denied (EROFS)",
    }
    wrong = {key: found[key] for key, want in expected.items() if not found[key].startswith(want)}
    expect(not wrong, f"the hardening did not do as expected: {wrong}")


def check_hardening() -> str:
    found = probe_findings()
    judge_probe(found)
    imported = found["extensions"]["imported"]
    props = show(
        DAEMON,
        "MainPID",
        "MemoryDenyWriteExecute",
        "RestrictAddressFamilies",
        "DynamicUser",
        "PrivateUsers",
        "ProtectSystem",
    )
    expect(props["MemoryDenyWriteExecute"] == "yes", f"{props}")
    main_pid = int(props["MainPID"])
    expect(main_pid > 0, "the daemon has no main process")
    status = Path(f"/proc/{main_pid}/status").read_text()
    expect(re.search(r"(?m)^Seccomp:\s+2$", status), "the daemon runs without seccomp")
    expect(re.search(r"(?m)^NoNewPrivs:\s+1$", status), "the daemon may gain privileges")
    maps = Path(f"/proc/{main_pid}/maps").read_text()
    loaded = sorted(
        {Path(line.split()[-1]).name.split(".")[0] for line in maps.splitlines() if ".so" in line}
    )
    for needed in ("loop", "orjson", "_http_parser", "_pydantic_core"):
        expect(needed in loaded, f"the daemon did not load {needed}: {loaded}")
    return (
        f"{len(imported)} C extensions import and uvloop/aiohttp/orjson/greenlet run as the "
        f"dynamic user (uid {found['uid']}, seccomp, no capabilities); denied as meant: W+X "
        f"memory, AF_NETLINK/AF_PACKET, chown (@privileged), setpriority (@resources), "
        f"writes outside the state directory; the daemon (PID {main_pid}) runs on uvloop, "
        f"orjson and aiohttp's C parser and reached the sandbox over AF_INET"
    )


def check_watchdog() -> str:
    before = show(DAEMON, "NRestarts", "MainPID", "WatchdogUSec")
    expect(before["WatchdogUSec"] == "4s", f"WatchdogUSec={before['WatchdogUSec']}")
    old_pid = int(before["MainPID"])
    restarts = int(before["NRestarts"])
    since = time.time()
    run(["systemctl", "kill", "-s", "SIGSTOP", DAEMON])

    def restarted() -> bool:
        now = show(DAEMON, "NRestarts", "MainPID", "ActiveState", "SubState")
        return (
            int(now["NRestarts"]) > restarts
            and now["ActiveState"] == "active"
            and now["SubState"] == "running"
            and int(now["MainPID"]) not in (0, old_pid)
        )

    took = wait_until("the watchdog to restart the daemon", restarted, 45)
    after = show(DAEMON, "NRestarts", "MainPID")
    messages = journal(DAEMON, since)
    expect(any("Watchdog timeout" in m for m in messages), "no watchdog timeout in the journal")
    expect(
        any("Failed with result 'watchdog'" in m for m in messages),
        "the journal does not say the watchdog ended it",
    )
    ended = [line for line in exit_log(DAEMON) if "SERVICE_RESULT=watchdog" in line]
    expect(ended, "ExecStopPost= did not see SERVICE_RESULT=watchdog")
    how = ended[-1].split(" ", 2)[2]
    return (
        f"SIGSTOPped PID {old_pid}: the watchdog (WatchdogSec=4) killed it ({how}), and "
        f"Restart=on-failure brought up PID {after['MainPID']}; NRestarts {restarts} -> "
        f"{after['NRestarts']}, active again {took:.1f} s after the SIGSTOP"
    )


def check_drain() -> str:
    latency_ms = 4000
    sandbox("faults", {"latency_ms": latency_ms})
    sandbox("reset_stats", {})
    nonce = secrets.token_hex(3)
    workspaces = range(21, 33)
    enqueue(
        [
            {
                "workspace_id": ws,
                "kind": "workspace_update",
                "payload": {"title": f"drain {nonce} {ws}"},
                "source_ref": f"drain-{nonce}-{ws}",
            }
            for ws in workspaces
        ]
    )

    def in_flight() -> bool:
        stats = sandbox("stats")
        return bool(stats["max_received_per_second"] >= 1 and stats["total"] == 0)

    wait_until("requests in flight at the sandbox", in_flight, 20)
    time.sleep(0.5)  # let the rest of the first wave reach the sandbox
    at_stop = sandbox("stats")
    expect(at_stop["total"] == 0, "requests were answered before the stop; too slow to test")
    started = time.monotonic()
    since = time.time()
    run(["systemctl", "stop", DAEMON], timeout=90)
    took = time.monotonic() - started
    sandbox("faults", {})
    ended = exit_log(DAEMON)
    expect(ended, "ExecStopPost= logged nothing")
    last = ended[-1]
    expect(
        "SERVICE_RESULT=success EXIT_CODE=exited EXIT_STATUS=0" in last,
        f"the daemon did not exit 0: {last}",
    )
    props = show(DAEMON, "ActiveState", "Result")
    expect(props["ActiveState"] == "inactive", f"{props}")
    rows = rows_by_ref(f"drain-{nonce}-")
    expect(len(rows) == len(workspaces), f"{len(rows)} drain rows in the outbox")
    states = {row["state"] for row in rows.values()}
    expect(states <= {"succeeded", "pending"}, f"states after the stop: {sorted(states)}")
    applied = {ws for ws in workspaces if workspace(ws)["title"] == f"drain {nonce} {ws}"}
    succeeded = {row["workspace_id"] for row in rows.values() if row["state"] == "succeeded"}
    expect(applied == succeeded, f"applied at the sandbox {applied} != succeeded {succeeded}")
    expect(succeeded, "no request was in flight at the stop")
    pending = [row for row in rows.values() if row["state"] == "pending"]
    expect(all(row["attempts"] == 0 for row in pending), "a released change was charged")
    answered = sandbox("stats")["total"]
    expect(answered == len(succeeded), f"the sandbox answered {answered} after the stop")
    expect(took >= 1.0, f"stop took {took:.1f} s: it did not wait for the answers")
    names = [e.get("event") for e in events(DAEMON, since)]
    expect("serve.stopping" in names and "serve.stopped" in names, f"events {names}")
    return (
        f"`systemctl stop` with {len(succeeded)} requests in flight (sandbox latency "
        f"{latency_ms} ms) took {took:.1f} s: all {len(succeeded)} answered and written back "
        f"as succeeded, {len(pending)} unsent change(s) back to pending uncharged; "
        f"ExecStopPost= saw EXIT_CODE=exited EXIT_STATUS=0"
    )


def check_timer() -> str:
    nonce = secrets.token_hex(3)
    title = f"timer {nonce}"
    enqueue(
        [
            {
                "workspace_id": 8,
                "kind": "workspace_update",
                "payload": {"title": title},
                "source_ref": f"timer-{nonce}",
            }
        ]
    )
    runs_before = len(exit_log(ONESHOT))
    started = time.monotonic()
    run(["systemctl", "enable", "--now", TIMER])
    took = wait_until("the timer's run to end", lambda: len(exit_log(ONESHOT)) > runs_before, 60)
    line = exit_log(ONESHOT)[-1]
    expect(
        "SERVICE_RESULT=success EXIT_CODE=exited EXIT_STATUS=0" in line,
        f"the run did not exit 0: {line}",
    )
    props = show(ONESHOT, "Result", "ExecMainStatus", "ActiveState")
    expect(props["Result"] == "success" and props["ExecMainStatus"] == "0", f"{props}")
    timer = show(TIMER, "LastTriggerUSec", "ActiveState", "SubState", "NextElapseUSecMonotonic")
    expect(timer["LastTriggerUSec"] not in ("", "n/a", "0"), f"{timer}")
    waiting = f"{timer['ActiveState']} ({timer['SubState']})"
    expect(waiting == "active (waiting)", f"the timer is {waiting} after its run")
    expect(workspace(8)["title"] == title, "workspace 8 did not get the timer's change")
    states: dict[str, int] = {}
    for row in report():
        states[row["state"]] = states.get(row["state"], 0) + 1
    expect(set(states) == {"succeeded"}, f"the outbox after the timer's run: {states}")
    judge_probe(probe_findings(ONESHOT))  # the same hardening holds in the oneshot
    finished = [e for e in events(ONESHOT) if e.get("event") == "run.finished"]
    expect(finished, "no run.finished in kantata-sync.service's journal")
    published = TEXTFILE_DIR / "kantata-sync.prom"
    expect(published.exists(), f"{published} was not published")
    expect(published.stat().st_mode & 0o777 == 0o644, f"{published} is not 0644")
    expect("kantata_sync_changes_total" in published.read_text(), f"{published} has no counts")
    return (
        f"the timer (OnActiveSec=2s) started kantata-sync.service, whose run ended "
        f"{time.monotonic() - started:.1f} s after `systemctl enable --now` ({took:.1f} s): "
        f"exit 0 (ExecStopPost= saw EXIT_CODE=exited EXIT_STATUS=0), workspace 8 retitled, "
        f"all {states['succeeded']} changes succeeded (earlier leftovers too), metrics "
        f"published to {published} (0644); the timer waits for its next run; the hardening "
        f"probe found the same in the oneshot as in the daemon"
    )


def check_reload() -> str:
    """A rejected token: the daemon stays up, unready; SIGHUP retries at once."""
    token = TOKEN.read_text().strip()
    sandbox("tokens/revoke", {"token": token})
    nonce = secrets.token_hex(3)
    title = f"reload {nonce}"
    change = {"workspace_id": 9, "kind": "workspace_update", "payload": {"title": title}}
    enqueue([{**change, "source_ref": f"reload-{nonce}"}])
    since = time.time()
    before = show(DAEMON, "MainPID", "NRestarts")

    def rejected() -> bool:
        return show(DAEMON, "StatusText")["StatusText"].startswith("token rejected (401)")

    wait_until("the daemon to report the token rejected", rejected, 30)
    unready, _ = http("GET", f"{METRICS}/readyz")
    expect(unready == 503, f"/readyz answered {unready} with the token rejected")
    sandbox("tokens/restore", {"token": token})
    started = time.monotonic()
    run(["systemctl", "reload", DAEMON])  # ExecReload= sends SIGHUP
    took = wait_until("the change to land after SIGHUP", lambda: workspace(9)["title"] == title, 20)
    expect(took < 30, f"the change took {took:.1f} s: the 60 s retry, not SIGHUP")
    wait_until("/readyz to answer 200", lambda: http("GET", f"{METRICS}/readyz")[0] == 200, 15)
    after = show(DAEMON, "MainPID", "NRestarts", "ActiveState")
    expect(after["ActiveState"] == "active", f"{after}")
    same = (after["MainPID"], after["NRestarts"]) == (before["MainPID"], before["NRestarts"])
    expect(same, f"the daemon restarted: {before} -> {after}")
    names = [e.get("event") for e in events(DAEMON, since)]
    for name in ("serve.token_rejected", "serve.retry_requested", "serve.token_accepted"):
        expect(name in names, f"no {name} in the journal: {names}")
    wait_until("its result to be written back", lambda: succeeded(f"reload-{nonce}"), 15)
    return (
        f"with the token revoked the daemon stayed up (PID {after['MainPID']}), said "
        f'"token rejected (401)" and /readyz 503; after the token came back, '
        f"`systemctl reload` (SIGHUP) made it retry at once: the change landed "
        f"{time.monotonic() - started:.1f} s later, /readyz 200, no restart"
    )


def check_rotate() -> str:
    """A new token: write it into the file, restart the daemon, which gets it as credential."""
    old, new = TOKEN.read_text().strip(), NEXT_TOKEN.read_text().strip()
    sandbox("tokens/restore", {"token": new})
    sandbox("tokens/revoke", {"token": old})
    TOKEN.write_text(new + "\n")
    expect(TOKEN.stat().st_mode & 0o777 == 0o600, "the token file lost its mode")
    before = show(DAEMON, "MainPID")["MainPID"]
    run(["systemctl", "restart", DAEMON], timeout=90)
    after = show(DAEMON, "MainPID", "ActiveState")
    expect(after["ActiveState"] == "active" and after["MainPID"] != before, f"{after}")
    nonce = secrets.token_hex(3)
    title = f"rotate {nonce}"
    change = {"workspace_id": 11, "kind": "workspace_update", "payload": {"title": title}}
    enqueue([{**change, "source_ref": f"rotate-{nonce}"}])
    took = wait_until("the change to land", lambda: workspace(11)["title"] == title, 30)
    wait_until("its result to be written back", lambda: succeeded(f"rotate-{nonce}"), 15)
    digest = hashlib.sha256(TOKEN.read_bytes()).hexdigest()
    expect(probe_findings()["credential"]["sha256"] == digest, "the credential is the old token")
    return (
        f"new token written into {TOKEN}, old one revoked at the sandbox; after `systemctl "
        f"restart` (PID {before} -> {after['MainPID']}) the credential holds the new token "
        f"and a change landed {took:.1f} s after enqueue"
    )


def check_exit_codes() -> str:
    """Exit 5 (token rejected) fails the oneshot; exit 3 (configuration) is not restarted."""
    token = TOKEN.read_text().strip()
    sandbox("tokens/revoke", {"token": token})
    nonce = secrets.token_hex(3)
    change = {"workspace_id": 10, "kind": "workspace_update", "payload": {"title": nonce}}
    enqueue([{**change, "source_ref": f"exit-{nonce}"}])
    try:
        started = run(["systemctl", "start", ONESHOT], check=False, timeout=90)
    finally:
        sandbox("tokens/restore", {"token": token})
    expect(started.returncode != 0, "systemctl start succeeded with the token revoked")
    line = exit_log(ONESHOT)[-1] if exit_log(ONESHOT) else ""
    expect("EXIT_CODE=exited EXIT_STATUS=5" in line, f"the run did not exit 5: {line}")
    row = rows_by_ref(f"exit-{nonce}")[f"exit-{nonce}"]
    expect(row["state"] == "pending" and row["attempts"] == 0, f"after the 401: {row}")
    run(["systemctl", "reset-failed", ONESHOT])

    good = CONFIG.read_text()
    bad, count = re.subn(r"(?m)^rate_limit = .*$", "rate_limit = -3", good)
    expect(count == 1, "deploy/kantata-sync.toml has no single rate_limit line")
    CONFIG.write_text(bad)
    try:
        exits_before = len(exit_log(DAEMON))
        failed = run(["systemctl", "start", DAEMON], check=False, timeout=90)
        expect(failed.returncode != 0, "the daemon started with rate_limit = -3")
        time.sleep(2.5)  # RestartSec=1 in the drop-in: a restart would have happened by now
        props = show(DAEMON, "ActiveState", "Result", "NRestarts", "ExecMainStatus")
        exits = exit_log(DAEMON)[exits_before:]
    finally:
        CONFIG.write_text(good)
        run(["systemctl", "reset-failed", DAEMON], check=False)
    expect(exits, "ExecStopPost= logged nothing")
    expect("EXIT_CODE=exited EXIT_STATUS=3" in exits[0], f"the daemon did not exit 3: {exits}")
    expect(props["ActiveState"] == "failed", f"{props}")
    # A manual start zeroes NRestarts; a restart would count one and log a second exit.
    restarted = props["NRestarts"] != "0" or len(exits) > 1
    expect(not restarted, f"exit 3 was restarted: {props}, {exits}")
    errors = [line for line in journal(DAEMON) if "configuration error: rate_limit" in line]
    expect(errors, "the journal does not name the bad key")
    return (
        "with the token revoked, kantata-sync.service exited 5 and failed, its change back to "
        "pending uncharged; with rate_limit = -3 the daemon exited 3, failed and was not "
        f"restarted (RestartPreventExitStatus=), the journal naming the key ({errors[-1]!r})"
    )


# -- main ------------------------------------------------------------------------------------


def record(number: int, verdict: str, detail: str) -> None:
    line = f"{verdict} {number} {CHECKS.get(number, 'install')}: {detail}"
    print(line, flush=True)
    with (RESULTS / "results.txt").open("a") as handle:
        handle.write(line + "\n")


def attempt(number: int, check: Callable[[], str]) -> bool:
    started = time.monotonic()
    try:
        detail, verdict = check(), "PASS"
    except Failed as failure:
        detail, verdict = str(failure), "FAIL"
    except Exception as exc:
        detail, verdict = f"{type(exc).__name__}: {exc}", "FAIL"
    record(number, verdict, f"{detail} [{time.monotonic() - started:.1f} s]")
    return verdict == "PASS"


def main() -> None:
    try:
        if attempt(0, install):
            # The flow first: the credential and hardening checks judge its requests too.
            order = [(1, check_ready), (4, check_flow), (2, check_credential)]
            order += [(3, check_hardening), (8, check_reload), (10, check_rotate)]
            order += [(5, check_watchdog)]
            order += [(6, check_drain), (9, check_exit_codes), (7, check_timer)]
            for number, check in order:
                attempt(number, check)
    finally:
        with (RESULTS / "journal.txt").open("w") as handle:
            subprocess.run(
                ["journalctl", "--no-pager", "-b", "-o", "short-monotonic"],
                stdout=handle,
                check=False,
                timeout=60,
            )


if __name__ == "__main__":
    main()
