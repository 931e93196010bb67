"""The ``kantata-sync`` command line: the one place that reads the environment.

Each command lives in the module of its concern and is imported only when it runs, so that
``kantata-sync --help`` and a timer's ``run`` with nothing to do start quickly:

- :mod:`worker.sync_cli`: ``db upgrade``, ``enqueue``, ``run``, ``serve``, ``config check``
- :mod:`worker.queue_cli`: ``status``, ``report``, ``retry``, ``cancel``
- :mod:`worker.history_cli`: ``show``, ``runs``, ``prune``
- :mod:`worker.reconcile_cli`: ``plan``, ``verify``
- :mod:`worker.sandbox.cli`: ``sandbox``

Exit codes are listed in :mod:`worker.clitools`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from . import __version__

SHORT_HELP_CHARS = 70
COMMANDS: dict[str, tuple[str, str, str]] = {
    "db": ("worker.sync_cli", "db", "Database schema management."),
    "enqueue": (
        "worker.sync_cli",
        "enqueue",
        "Validate and insert changes, one JSON object a line.",
    ),
    "run": (
        "worker.sync_cli",
        "run",
        "Sync every due change, then exit (for a systemd timer or cron).",
    ),
    "serve": (
        "worker.sync_cli",
        "serve",
        "Run as a daemon: sync changes as they become due, until SIGTERM.",
    ),
    "config": ("worker.sync_cli", "config_group", "Inspect the configuration."),
    "status": (
        "worker.queue_cli",
        "status",
        "Counts per state (and per outcome), and the age of the oldest...",
    ),
    "report": (
        "worker.queue_cli",
        "report",
        "One row per change: what was asked, what happened, and Kantata's...",
    ),
    "retry": (
        "worker.queue_cli",
        "retry",
        "Put failed, invalid or cancelled changes back to pending: attempts...",
    ),
    "cancel": (
        "worker.queue_cli",
        "cancel",
        "Cancel pending changes so that they are never sent.",
    ),
    "show": ("worker.history_cli", "show", "One change and everything that explains it."),
    "runs": (
        "worker.history_cli",
        "runs",
        "The run log, newest first: who ran, what it did, how long, and why...",
    ),
    "prune": (
        "worker.history_cli",
        "prune",
        "Delete finished changes, their attempts, and runs, older than...",
    ),
    "plan": (
        "worker.reconcile_cli",
        "plan",
        "Show exactly the requests the next run would send, and send nothing.",
    ),
    "verify": (
        "worker.reconcile_cli",
        "verify_command",
        "Read the synced workspaces back from Kantata and report where they...",
    ),
    "sandbox": (
        "worker.sandbox.cli",
        "sandbox",
        "Serve a local Kantata OX sandbox (GET /workspaces, PUT/GET...",
    ),
}
"""Each command: the module that holds it, its name there, and its short help as ``--help``
lists it (``get_short_help_str(SHORT_HELP_CHARS)``; a test keeps the two equal)."""


class LazyGroup(click.Group):
    """A group whose commands are imported when they are called, not when it is listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        command = getattr(importlib.import_module(spec[0]), spec[1])
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="kantata-sync")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML configuration file.  [env: KANTATA_SYNC_CONFIG]",
)
@click.pass_context
def main(ctx: click.Context, /, config_file: Path | None) -> None:
    """Push project changes from the sync_changes outbox into Kantata OX.

    Every setting comes from the TOML file given by --config, overridden by an environment
    variable KANTATA_SYNC_<SETTING> (e.g. KANTATA_SYNC_RATE_LIMIT=20). The API token comes
    from KANTATA_SYNC_TOKEN, KANTATA_SYNC_TOKEN_FILE or systemd's $CREDENTIALS_DIRECTORY.
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_file
