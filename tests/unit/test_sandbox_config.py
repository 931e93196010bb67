"""Sandbox configuration and the ``sandbox`` click command's option parsing."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from worker.sandbox import FaultConfig, SandboxConfig
from worker.sandbox import cli as sandbox_cli
from worker.sandbox.config import ApplyThenFailMode, ConfigError, statuses_for
from worker.sandbox.ratelimit import RateSchedule
from worker.statuses import DEFAULT_STATUSES


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[tuple[SandboxConfig, str, int]]:
    calls: list[tuple[SandboxConfig, str, int]] = []

    async def fake_serve(config: SandboxConfig, host: str, port: int) -> None:
        calls.append((config, host, port))

    monkeypatch.setattr(sandbox_cli, "serve", fake_serve)
    return calls


def invoke(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(sandbox_cli.sandbox, args, env=env, catch_exceptions=False)


def test_defaults(captured: list[tuple[SandboxConfig, str, int]]) -> None:
    result = invoke([])
    assert result.exit_code == 0, result.output
    [(config, host, port)] = captured
    assert (host, port) == ("127.0.0.1", 8089)
    assert config == SandboxConfig()
    assert config.statuses == DEFAULT_STATUSES
    assert not config.inspect


def test_options(captured: list[tuple[SandboxConfig, str, int]]) -> None:
    result = invoke(
        [
            "--port",
            "0",
            "--token",
            "a",
            "--token",
            "b",
            "--workspaces",
            "5",
            "--status-keys",
            "100,310,600",
            "--initial-status",
            "310",
            "--forbidden",
            "2,3",
            "--rate-limit",
            "10",
            "--retry-after",
            "2",
            "--error-rate",
            "0.1",
            "--latency-ms",
            "5",
            "--hang-rate",
            "0.2",
            "--hang-seconds",
            "3",
            "--drop-rate",
            "0.3",
            "--apply-then-fail-rate",
            "0.4",
            "--apply-then-fail-mode",
            "hang",
            "--burst-429-rate",
            "0.05",
            "--burst-seconds",
            "0.5",
            "--seed",
            "7",
            "--inspect",
        ]
    )
    assert result.exit_code == 0, result.output
    [(config, _, port)] = captured
    assert port == 0
    assert config == SandboxConfig(
        tokens=("a", "b"),
        workspaces=5,
        statuses={100: "Not Started", 310: "Active", 600: "Completed"},
        initial_status=310,
        forbidden=frozenset({2, 3}),
        rate_limit=10,
        retry_after=2,
        faults=FaultConfig(
            error_rate=0.1,
            latency_ms=5,
            hang_rate=0.2,
            hang_seconds=3,
            drop_rate=0.3,
            apply_then_fail_rate=0.4,
            apply_then_fail_mode=ApplyThenFailMode.HANG,
            burst_429_rate=0.05,
            burst_seconds=0.5,
            seed=7,
        ),
        inspect=True,
    )


def test_environment_variables(captured: list[tuple[SandboxConfig, str, int]]) -> None:
    env = {
        "KANTATA_SANDBOX_PORT": "0",
        "KANTATA_SANDBOX_TOKEN": "one two",
        "KANTATA_SANDBOX_RATE_LIMIT": "25",
        "KANTATA_SANDBOX_FORBIDDEN": "9",
        "KANTATA_SANDBOX_ERROR_RATE": "0.5",
        "KANTATA_SANDBOX_SEED": "3",
        "KANTATA_SANDBOX_INSPECT": "true",
    }
    result = invoke([], env=env)
    assert result.exit_code == 0, result.output
    [(config, _, port)] = captured
    assert port == 0
    assert config.tokens == ("one", "two")
    assert config.rate_limit == 25
    assert config.forbidden == frozenset({9})
    assert (config.faults.error_rate, config.faults.seed) == (0.5, 3)
    assert config.inspect


def test_rate_limit_schedule_options(captured: list[tuple[SandboxConfig, str, int]]) -> None:
    result = invoke(
        [
            "--rate-limit",
            "50",
            "--rate-limit-schedule",
            "0:37,20:12,40:37",
            "--read-rate-limit-schedule",
            "0:5,1:2",
        ]
    )
    assert result.exit_code == 0, result.output
    result = invoke([], env={"KANTATA_SANDBOX_READ_RATE_LIMIT": "4"})
    assert result.exit_code == 0, result.output
    [(scheduled, _, _), (read_only, _, _)] = captured
    assert scheduled.main_schedule == RateSchedule.parse("0:37,20:12,40:37")
    assert scheduled.read_schedule == RateSchedule.parse("0:5,1:2")
    assert read_only.main_schedule == RateSchedule.constant(0)
    assert read_only.read_rate_limit == 4
    assert read_only.read_schedule == RateSchedule.constant(4)


@pytest.mark.parametrize(
    ("option", "spec", "problem"),
    [
        ("--rate-limit-schedule", "5:3", "the first entry must be at 0 seconds"),
        ("--rate-limit-schedule", "0:3,2:1,1:4", "strictly increasing"),
        ("--read-rate-limit-schedule", "0:-2", "limit must be an integer >= 0"),
        ("--read-rate-limit-schedule", "0:x", "limit 'x' is not an integer"),
    ],
)
def test_bad_schedules_are_usage_errors_naming_the_problem(
    captured: list[tuple[SandboxConfig, str, int]], option: str, spec: str, problem: str
) -> None:
    result = CliRunner().invoke(sandbox_cli.sandbox, [option, spec])
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output
    assert problem in result.output
    assert captured == []


def test_help_shows_env_vars() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    for name in (
        "KANTATA_SANDBOX_PORT",
        "KANTATA_SANDBOX_TOKEN",
        "KANTATA_SANDBOX_STATUS_KEYS",
        "KANTATA_SANDBOX_APPLY_THEN_FAIL_RATE",
        "KANTATA_SANDBOX_INSPECT",
        "KANTATA_SANDBOX_RATE_LIMIT_SCHEDULE",
        "KANTATA_SANDBOX_READ_RATE_LIMIT",
        "KANTATA_SANDBOX_READ_RATE_LIMIT_SCHEDULE",
    ):
        assert name in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--error-rate", "2"],
        ["--status-keys", "100,x"],
        ["--initial-status", "310", "--status-keys", "100"],
        ["--status-keys", "50"],
        ["--port", "70000"],
        ["--read-rate-limit", "-1"],
    ],
)
def test_bad_options_are_usage_errors(
    captured: list[tuple[SandboxConfig, str, int]], args: list[str]
) -> None:
    result = invoke(args)
    assert result.exit_code == 2
    assert captured == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workspaces": -1},
        {"statuses": {}},
        {"statuses": {800: "x"}},
        {"initial_status": 999},
        {"rate_limit": -1},
        {"retry_after": -1},
        {"tokens": ("",)},
    ],
)
def test_invalid_sandbox_config(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SandboxConfig(**kwargs)


def test_statuses_for_uses_default_messages() -> None:
    assert statuses_for((310, 330)) == {310: "Active", 330: "Status 330"}
