"""The ``kantata-sync`` console script: the CLI, with a Ctrl-C that never ends in a traceback.

Importing the CLI pulls in aiohttp, SQLAlchemy, pydantic and the rest, which takes most of a
second. This module imports nothing heavy, so its handler is in place before any of that
starts: an interrupt while modules import, or while a command runs without its own signal
handling, ends with one line on stderr and exit code 130 (128 + SIGINT), as shells expect.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import NoReturn

EXIT_INTERRUPTED = 130


def main() -> NoReturn:
    """Run the CLI; Ctrl-C (SIGINT) ends it quietly with :data:`EXIT_INTERRUPTED`."""
    try:
        import click

        from .cli import main as cli

        try:
            code = cli.main(prog_name="kantata-sync", standalone_mode=False)
        except click.Abort as exc:
            # Click turns Ctrl-C (and EOF at a prompt) into Abort; only the former is ours.
            if isinstance(exc.__cause__, KeyboardInterrupt):
                _interrupted()
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)
    except KeyboardInterrupt:
        _interrupted()


def _interrupted() -> NoReturn:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt this
    with contextlib.suppress(OSError):  # stderr closed: the exit code says it all
        print("kantata-sync: interrupted", file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)
