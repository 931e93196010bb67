"""deploy/: the systemd units verify and rate well, the alert rules load and fire as meant.

The tools come from Debian packages (``systemd`` has systemd-analyze, ``prometheus`` has
promtool). Without them these tests skip and say so, unless KANTATA_SYNC_REQUIRE_TOOLS=1 (CI),
which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import KANTATA_SYNC, Cli

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = ("kantata-sync.service", "kantata-sync.timer", "kantata-sync-daemon.service")
SERVICES = tuple(unit for unit in UNITS if unit.endswith(".service"))
INSTALLED_BINARY = "/opt/kantata-sync/venv/bin/kantata-sync"
MAX_EXPOSURE = 2.0
INSTALL_HINT = "apt-get install -y --no-install-recommends systemd prometheus"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed ({INSTALL_HINT})"
        if os.environ.get("KANTATA_SYNC_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{reason}; KANTATA_SYNC_REQUIRE_TOOLS=1")
        pytest.skip(reason)
    return path


def directives(unit: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file, every value of a repeated key kept in order."""
    found: dict[str, list[str]] = {}
    for line in (DEPLOY / unit).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def exec_start(unit: str) -> list[str]:
    [command] = directives(unit)["ExecStart"]
    return shlex.split(command)


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at this venv's kantata-sync, which verify requires."""
    for unit in UNITS:
        text = (DEPLOY / unit).read_text().replace(INSTALLED_BINARY, KANTATA_SYNC)
        (tmp_path / unit).write_text(text)
    return tmp_path


def test_every_unit_verifies(units: Path) -> None:
    analyze = tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "verify", *(str(units / unit) for unit in UNITS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("unit", SERVICES)
def test_every_service_is_hardened_to_an_exposure_of_two_or_less(units: Path, unit: str) -> None:
    analyze = tool("systemd-analyze")
    result = subprocess.run(
        [
            analyze,
            "security",
            "--offline=yes",
            "--no-pager",
            f"--threshold={round(MAX_EXPOSURE * 10)}",
            str(units / unit),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_units_keep_the_documented_contract() -> None:
    for unit in SERVICES:
        found = directives(unit)
        assert found["LoadCredential"] == ["kantata-token:/etc/kantata-sync/token"]
        assert found["StateDirectory"] == ["kantata-sync"]
        assert found["DynamicUser"] == ["yes"]
        assert found["User"] == ["kantata-sync"]  # one dynamic user for both units
        assert found["UMask"] == ["0077"]
        assert exec_start(unit)[:3] == [
            INSTALLED_BINARY,
            "--config",
            "/etc/kantata-sync/kantata-sync.toml",
        ]
        assert "KANTATA_SYNC_TOKEN" not in (DEPLOY / unit).read_text()
    oneshot = directives("kantata-sync.service")
    assert oneshot["Type"] == ["oneshot"]
    assert exec_start("kantata-sync.service")[3] == "run"
    daemon = directives("kantata-sync-daemon.service")
    assert daemon["Type"] == ["notify"]
    assert daemon["Restart"] == ["on-failure"]
    assert int(daemon["WatchdogSec"][0]) > 0
    assert exec_start("kantata-sync-daemon.service")[3] == "serve"
    timer = directives("kantata-sync.timer")
    assert timer["WantedBy"] == ["timers.target"]


@pytest.mark.parametrize("unit", SERVICES)
def test_each_exec_start_is_a_command_line_kantata_sync_accepts(cli: Cli, unit: str) -> None:
    args = exec_start(unit)[1:]
    result = cli(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: kantata-sync" in result.stdout


def test_the_production_config_is_valid_and_puts_the_database_in_the_state_directory(
    cli: Cli,
) -> None:
    env = {k: v for k, v in cli.env.items() if not k.startswith("KANTATA_SYNC_")}
    result = subprocess.run(
        [KANTATA_SYNC, "--config", str(DEPLOY / "kantata-sync.toml"), "config", "check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**env, "KANTATA_SYNC_TOKEN": "tok-from-credential"},
    )
    assert result.returncode == 0, result.stderr
    assert 'database_url = "sqlite+aiosqlite:////var/lib/kantata-sync/kantata-sync.db"' in (
        result.stdout
    )
    assert 'log_format = "json"' in result.stdout
    assert "tok-from-credential" not in result.stdout + result.stderr


def test_the_alert_rules_load() -> None:
    promtool = tool("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "kantata-sync.rules.yml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_the_alert_rules_fire_on_trouble_and_stay_quiet_otherwise() -> None:
    promtool = tool("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", "kantata-sync.rules.test.yml"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=DEPLOY / "prometheus",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_timer_run_publishes_its_metrics_for_node_exporter(tmp_path: Path) -> None:
    """ExecStopPost copies the run's textfile, world-readable and atomically, if it can."""
    [command] = directives("kantata-sync.service")["ExecStopPost"]
    prefix, script = command.split(" ", 1)
    assert prefix == "-+/bin/sh"  # ignore failure; root, outside the sandbox
    script = shlex.split(script)[1].replace("$$", "$")
    state, textfiles = tmp_path / "state", tmp_path / "node-exporter"
    script = script.replace("/var/lib/kantata-sync", str(state))
    script = script.replace("/var/lib/prometheus/node-exporter", str(textfiles))
    assert exec_start("kantata-sync.service")[-2:] == [
        "--metrics-textfile",
        "/var/lib/kantata-sync/kantata-sync.prom",
    ]
    state.mkdir()
    (state / "kantata-sync.prom").write_text("kantata_sync_retries_total 3.0\n")
    (state / "kantata-sync.prom").chmod(0o600)
    no_exporter = subprocess.run(["/bin/sh", "-c", script], check=False, timeout=30)
    assert no_exporter.returncode != 0 and not textfiles.exists()
    textfiles.mkdir()
    published = subprocess.run(["/bin/sh", "-c", script], check=False, timeout=30)
    assert published.returncode == 0
    assert sorted(p.name for p in textfiles.iterdir()) == ["kantata-sync.prom"]
    assert (textfiles / "kantata-sync.prom").read_text() == "kantata_sync_retries_total 3.0\n"
    assert (textfiles / "kantata-sync.prom").stat().st_mode & 0o777 == 0o644


RUNBOOKS = "https://github.com/kantata-sync/kantata-sync/blob/main/deploy/OPERATIONS.md"


def test_every_alert_links_its_runbook_in_operations_md() -> None:
    """Each runbook_url is the heading named after the alert (GitHub's anchor: lower case)."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "kantata-sync.rules.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert len(alerts) == 6
    for rule in alerts:
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOKS}#{rule['alert'].lower()}"


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel's expression, as a recording rule, with Grafana's variables
    given values."""
    promtool = tool("promtool")
    dashboard = json.loads((DEPLOY / "grafana" / "kantata-sync.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    rules = [
        {
            "record": f"dashboard:expr_{i}",
            "expr": expr.replace("$__rate_interval", "5m")
            .replace("$job", ".+")
            .replace("$instance", ".+"),
        }
        for i, expr in enumerate(exprs)
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout
