"""Ctrl-C at any moment of start-up, and tokens that no HTTP header can carry, from the outside."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.acceptance.conftest import Cli

EXIT_CONFIG = 3
EXIT_INTERRUPTED = 130
IMPORT_TIME = "import time:"


@dataclass
class Started:
    """A ``kantata-sync`` process whose imports are reported on stderr as they complete."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    seen: threading.Condition = field(default_factory=threading.Condition)

    def read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.seen:
                self.lines.append(line.rstrip("\n"))
                self.seen.notify_all()

    def imported(self, module: str) -> bool:
        return any(line.endswith(f"| {module}") for line in self.lines)

    def wait_for_import(self, module: str) -> None:
        with self.seen:
            assert self.seen.wait_for(
                lambda: self.imported(module) or self.process.poll() is not None, timeout=60
            ), f"{module} never imported"
        assert self.imported(module), "\n".join(self.lines)

    def in_main(self) -> bool:
        """Whether ``worker.console.main`` runs: an import is reported after that module's.

        The console script imports ``worker.console``, sets ``sys.argv[0]`` and only then
        calls ``main()``, which imports the rest; a process preempted just after reporting
        the import is not yet where its handler is (a SIGINT there meets a bare
        interpreter, as one during start-up does).
        """
        reported = [line for line in self.lines if line.startswith(IMPORT_TIME)]
        own = [i for i, line in enumerate(reported) if line.endswith("| worker.console")]
        return bool(own) and own[0] < len(reported) - 1

    def wait_for_main(self) -> None:
        with self.seen:
            assert self.seen.wait_for(
                lambda: self.in_main() or self.process.poll() is not None, timeout=60
            ), "worker.console.main never started"
        assert self.in_main(), "\n".join(self.lines)

    def messages(self) -> list[str]:
        """stderr without the import-time report."""
        return [line for line in self.lines if line and not line.startswith(IMPORT_TIME)]


def start(cli: Cli) -> tuple[Started, threading.Thread]:
    process = cli.popen(
        "enqueue",
        "--file",
        "-",  # waits on stdin once started
        stdin=subprocess.PIPE,
        env={"PYTHONPROFILEIMPORTTIME": "1"},
    )
    started = Started(process)
    reader = threading.Thread(target=started.read, daemon=True)
    reader.start()
    return started, reader


def interrupt(started: Started, reader: threading.Thread) -> None:
    started.process.send_signal(signal.SIGINT)
    try:
        started.process.wait(timeout=60)
    finally:
        if started.process.poll() is None:
            started.process.kill()
        assert started.process.stdin is not None
        started.process.stdin.close()
        reader.join(timeout=10)
        assert started.process.stdout is not None and started.process.stderr is not None
        started.process.stdout.close()
        started.process.stderr.close()


DELAYS = [0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]
"""Seconds after the console entry point runs; the CLI's imports take far longer."""


def test_ctrl_c_while_modules_import_ends_quietly_with_130(cli: Cli) -> None:
    landed_during_imports = 0
    for delay in DELAYS:
        started, reader = start(cli)
        started.wait_for_main()
        time.sleep(delay)
        during_imports = not started.imported("worker.cli")
        interrupt(started, reader)
        stderr = "\n".join(started.lines)
        print(f"SIGINT {delay * 1000:.0f} ms after start-up: during imports {during_imports}")
        assert "Traceback" not in stderr, stderr
        assert "KeyboardInterrupt" not in stderr, stderr
        assert started.messages() == ["kantata-sync: interrupted"], stderr
        assert started.process.returncode == EXIT_INTERRUPTED
        landed_during_imports += during_imports
    assert landed_during_imports, "no SIGINT arrived while the CLI's modules imported"


def test_ctrl_c_once_a_command_runs_ends_quietly_with_130(cli: Cli) -> None:
    started, reader = start(cli)
    started.wait_for_import("worker.cli")
    time.sleep(0.2)  # in enqueue, reading standard input, or about to
    interrupt(started, reader)
    stderr = "\n".join(started.lines)
    assert "Traceback" not in stderr, stderr
    assert started.messages() == ["kantata-sync: interrupted"], stderr
    assert started.process.returncode == EXIT_INTERRUPTED


def test_without_ctrl_c_exit_codes_are_unchanged(cli: Cli) -> None:
    assert cli("--version").returncode == 0
    usage = cli("no-such-command")
    assert usage.returncode == 2 and "No such command" in usage.stderr
    eof = cli("enqueue", "--file", "-", input="not json\n")
    assert eof.returncode == 1 and "line 1:" in eof.stderr


# --------------------------------------------------------------------------- tokens

TOKEN = "tok-S3cr3t-acceptance-0123456789"


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        pytest.param(TOKEN[:10] + "\r" + TOKEN[10:], "U+000D at character 11", id="inner-cr"),
        pytest.param(TOKEN[:10] + " " + TOKEN[10:], "U+0020 at character 11", id="inner-space"),
        pytest.param(TOKEN[:10] + "\x1b" + TOKEN[10:], "U+001B at character 11", id="escape"),
    ],
)
def test_config_check_fails_on_a_token_no_header_can_carry(
    cli: Cli, token: str, problem: str
) -> None:
    checked = cli("config", "check", env={"KANTATA_SYNC_TOKEN": token})
    assert checked.returncode == EXIT_CONFIG, checked.stderr
    assert checked.stderr.startswith("kantata-sync: configuration error: token: ")
    assert problem in checked.stderr and "KANTATA_SYNC_TOKEN" in checked.stderr
    for part in token.split():
        assert part not in checked.stdout + checked.stderr


def test_config_check_accepts_a_token_from_a_crlf_file_and_warns_on_its_mode(cli: Cli) -> None:
    token_file = cli.cwd / "token"
    token_file.write_bytes(TOKEN.encode() + b"\r\n")
    token_file.chmod(0o644)
    checked = cli("config", "check", env={"KANTATA_SYNC_TOKEN_FILE": str(token_file)})
    assert checked.returncode == 0, checked.stderr
    [warning] = [json.loads(line) for line in checked.stderr.splitlines()]
    assert (warning["event"], warning["level"]) == ("config.warning", "warning")
    assert warning["message"] == (
        f"token_file: {token_file} is accessible to group or others (mode 0644); chmod 600 it"
    )
    assert TOKEN not in checked.stdout + checked.stderr
    token_file.chmod(0o600)
    quiet = cli("config", "check", env={"KANTATA_SYNC_TOKEN_FILE": str(token_file)})
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_misspelt_variable_is_named_with_the_setting_it_probably_means(cli: Cli) -> None:
    env = {"KANTATA_SYNC_RATELIMIT": "5", "KANTATA_SYNC_TOKEN": TOKEN}
    message = (
        "KANTATA_SYNC_RATELIMIT is not a kantata-sync setting and is ignored; "
        "did you mean KANTATA_SYNC_RATE_LIMIT?"
    )
    # The operator's check fails on it...
    checked = cli("config", "check", env=env)
    assert checked.returncode == EXIT_CONFIG
    assert checked.stderr == f"kantata-sync: configuration error: {message}\n"
    # ... while a service that meets it warns and goes on (the default still stands).
    status = cli("status", "--format", "json", env=env)
    assert status.returncode != EXIT_CONFIG
    warnings = [json.loads(line) for line in status.stderr.splitlines() if line.startswith("{")]
    assert [(w["event"], w["level"], w["message"]) for w in warnings][:1] == [
        ("config.warning", "warning", message)
    ]


def test_settings_outside_the_kantata_sync_table_are_an_error(cli: Cli) -> None:
    config = cli.cwd / "kantata-sync.toml"
    config.write_text("rate_limit = 5\n\n[kantata_sync]\nconcurrency = 4\n")
    checked = cli("--config", str(config), "config", "check")
    assert checked.returncode == EXIT_CONFIG
    assert "rate_limit: outside the [kantata_sync] table" in checked.stderr


def test_config_check_shows_where_each_value_came_from(cli: Cli) -> None:
    config = cli.cwd / "kantata-sync.toml"
    config.write_text("concurrency = 4\nrate_limit = 2\n")
    token_file = cli.cwd / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    checked = cli(
        "--config",
        str(config),
        "config",
        "check",
        "--show-origin",
        env={"KANTATA_SYNC_RATE_LIMIT": "3", "KANTATA_SYNC_TOKEN_FILE": str(token_file)},
    )
    assert checked.returncode == 0, checked.stderr
    lines = dict(line.split(" = ", 1) for line in checked.stdout.splitlines())
    assert lines["concurrency"] == f"4  # {config}"
    assert lines["rate_limit"] == "3.0  # KANTATA_SYNC_RATE_LIMIT"  # the variable wins
    assert lines["token"] == f'"********"  # {token_file}'
    assert lines["max_attempts"] == "5  # default"
    assert TOKEN not in checked.stdout + checked.stderr
