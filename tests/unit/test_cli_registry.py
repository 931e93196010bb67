"""The command line lists its commands without importing them, and lists them truly."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from worker.cli import COMMANDS, SHORT_HELP_CHARS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_listed_command_is_that_command_with_that_help(name: str) -> None:
    command = main.get_command(click.Context(main), name)
    assert command is not None and command.name == name
    assert command.get_short_help_str(limit=SHORT_HELP_CHARS) == COMMANDS[name][2]


def test_help_loads_none_of_the_heavy_libraries() -> None:
    """``--help`` (and the import of the entry point) stays free of what a command needs."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from worker.cli import main\n"
        "result = CliRunner().invoke(main, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert 'verify' in result.output and 'Commands:' in result.output\n"
        "heavy = {'sqlalchemy', 'aiohttp', 'pydantic', 'alembic', 'structlog', 'rich'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_run_does_not_load_alembic_to_check_the_schema() -> None:
    from worker import db as dbmod

    code = "import sys, worker.sync_cli, worker.runtime\nprint('alembic' in sys.modules)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
    assert dbmod.head_revision() == dbmod.SCHEMA_HEAD  # the constant is alembic's own head
