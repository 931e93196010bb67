"""Plumbing shared by the commands: settings from the edge, the event loop, exit codes.

Exit codes: 0 done (whatever the per-change outcomes), 1 some input was rejected or the run
failed, 2 usage error, 3 configuration error, 4 database unreachable or not migrated, 5 API
token rejected, 130 interrupted during start-up.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from .exceptions import ConfigError, DatabaseError, SyncError

if TYPE_CHECKING:
    from .config import Settings

GC_THRESHOLD = 20_000
"""Allocations between collections of the youngest generation (Python's default is 700)."""

EXIT_INPUT = 1
EXIT_CONFIG = 3
EXIT_DATABASE = 4
EXIT_TOKEN = 5
T = TypeVar("T")


def fail(code: int, message: str) -> NoReturn:
    click.echo(f"kantata-sync: {message}", err=True)
    sys.exit(code)


def settings_of(
    ctx: click.Context,
    /,
    origins: dict[str, str] | None = None,
    strict: bool = False,
    **overrides: Any,
) -> Settings:
    """The settings (file, ``KANTATA_SYNC_*``, ``overrides``); logging configured from them.

    The only place that reads the environment; everything below receives the settings.
    ``origins`` is filled with where each value came from; ``strict`` makes a
    ``KANTATA_SYNC_*`` variable that names no setting an error instead of a warning.
    """
    from . import logging as logmod  # imported when a command runs, not for --help
    from .config import load_settings

    notes: list[str] = []
    try:
        settings = load_settings(
            ctx.obj["config"],
            os.environ,
            overrides,
            warn=notes.append,
            origins=origins,
            strict=strict,
        )
    except ConfigError as exc:
        fail(EXIT_CONFIG, f"configuration error: {exc}")
    secrets = [settings.token.get_secret_value()] if settings.token else []
    logmod.configure(
        settings.log_level, settings.log_format, secrets, journald=_stderr_is_journal()
    )
    log = logmod.get_logger()
    for note in notes:  # a log line like any other, so that JSON logs stay JSON
        log.warning("config.warning", message=note)
    return settings


def _stderr_is_journal() -> bool:
    """Whether stderr is the journal stream systemd names in ``$JOURNAL_STREAM``."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{stat.st_dev}:{stat.st_ino}" == expected


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (a dependency on Linux and macOS), else asyncio's own.

    The worker spends most of its time in the event loop and the HTTP client; uvloop cuts
    its CPU per change by about a sixth (see the README's Performance section).
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def tune_gc() -> None:
    """Spare the cyclic garbage collector the objects that live as long as the process.

    Everything imported so far is frozen out of collection, and the youngest generation is
    collected less often: a run allocates several objects per request, nearly all freed by
    reference counting, and the default threshold spent about 4% of a run's CPU in collections.
    """
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, turning kantata-sync's errors into one line and an exit code."""
    tune_gc()
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(_guarded(factory))
    except ConfigError as exc:
        fail(EXIT_CONFIG, f"configuration error: {exc}")
    except DatabaseError as exc:
        fail(EXIT_DATABASE, f"database error: {exc}")
    except SyncError as exc:
        fail(EXIT_INPUT, str(exc))


async def _guarded(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()
