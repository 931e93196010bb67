"""The ``kantata-sync`` command line: the one place that reads the environment.

Exit codes: 0 done (whatever the per-change outcomes), 1 some input was rejected, 2 usage error,
3 configuration error, 4 database unreachable or not migrated, 5 API token rejected.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

import click

from . import __version__
from . import db as dbmod
from . import logging as logmod
from .changes import NewChange, State
from .client import KantataClient
from .config import Settings, load_settings
from .coordination import Coordinator, shared_limiter
from .daemon import serve
from .dispatcher import Dispatcher, default_worker_name
from .exceptions import ConfigError, DatabaseError, InputError, NotMigratedError, SyncError
from .metrics import Metrics
from .progress import progress_bar
from .ratelimit import RateLimiter, SharedRateLimiter
from .sandbox.cli import sandbox
from .store import Filters, Store
from .validation import parse_line

DEAD_AFTER = 30.0
"""Seconds without a heartbeat after which ``status`` counts a worker as dead."""

GC_THRESHOLD = 20_000
"""Allocations between collections of the youngest generation (Python's default is 700)."""

EXIT_INPUT = 1
EXIT_CONFIG = 3
EXIT_DATABASE = 4
EXIT_TOKEN = 5
T = TypeVar("T")


def make_limiter(settings: Settings, coordinator: Coordinator) -> RateLimiter | SharedRateLimiter:
    """The shared budget when a rate is set; no limiter at all when it is 0."""
    if settings.rate_limit <= 0:
        return RateLimiter(0)
    return shared_limiter(
        coordinator,
        settings.api_token(),
        settings.rate_limit,
        max_pause=settings.max_retry_after,
        db_retry_seconds=settings.db_retry_seconds,
    )


def named_worker(settings: Settings) -> Settings:
    """``settings`` with a worker name: the configured one, or a new unique one."""
    if settings.worker_name:
        return settings
    return settings.model_copy(update={"worker_name": default_worker_name()})


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"kantata-sync: {message}", err=True)
    sys.exit(code)


def _settings(ctx: click.Context, /, **overrides: Any) -> Settings:
    try:
        settings = load_settings(ctx.obj["config"], os.environ, overrides)
    except ConfigError as exc:
        _fail(EXIT_CONFIG, f"configuration error: {exc}")
    secrets = [settings.token.get_secret_value()] if settings.token else []
    logmod.configure(settings.log_level, settings.log_format, secrets)
    return settings


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


def _tune_gc() -> None:
    """Spare the cyclic garbage collector the objects that live as long as the process.

    Everything imported so far is frozen out of collection, and the youngest generation is
    collected less often: a run allocates several objects per request, nearly all freed by
    reference counting, and the default threshold spent about 4% of a run's CPU in collections.
    """
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def _run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, turning kantata-sync's errors into one line and an exit code."""
    _tune_gc()
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(_guarded(factory))
    except ConfigError as exc:
        _fail(EXIT_CONFIG, f"configuration error: {exc}")
    except DatabaseError as exc:
        _fail(EXIT_DATABASE, f"database error: {exc}")
    except SyncError as exc:
        _fail(EXIT_INPUT, str(exc))


async def _guarded(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


def _require_sqlite_file(url: str) -> None:
    path = dbmod.sqlite_path(url)
    if path is not None and not os.path.exists(path):
        raise NotMigratedError(
            f"database file {path} does not exist: run `kantata-sync db upgrade` to create it"
        )


async def _open_store(settings: Settings, *, migrated: bool = True, worker: bool = False) -> Store:
    """The store on the configured database; ``worker`` for a process that syncs.

    A SQLite file that does not exist is not created here (only ``db upgrade`` creates it):
    a mistyped path, or a file deleted under a running worker, must not leave an empty
    database behind.
    """
    if migrated:
        _require_sqlite_file(settings.database_url)
    engine = dbmod.create_engine(
        settings.database_url,
        application_name=f"kantata-sync/{settings.worker_name}" if worker else None,
        worker=worker,
    )
    try:
        if migrated:
            await dbmod.check_schema(engine)
        else:
            await dbmod.ping(engine)
    except BaseException:
        await engine.dispose()
        raise
    return Store(engine)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


main.add_command(sandbox)
main.add_command(serve)


@main.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context, /) -> None:
    """Create or migrate the tables (sync_changes, sync_attempts, sync_runs)."""
    settings = _settings(ctx)

    async def _go() -> tuple[str | None, str]:
        engine = dbmod.create_engine(settings.database_url)
        try:
            return await dbmod.upgrade(engine)
        finally:
            await engine.dispose()

    before, after = _run_async(_go)
    where = dbmod.describe_url(settings.database_url)
    if before == after:
        click.echo(f"{where}: already at schema {after}")
    else:
        click.echo(f"{where}: migrated from {before or 'empty'} to {after}")


@main.command()
@click.option(
    "--file",
    "-f",
    "source",
    type=click.File("r", encoding="utf-8", errors="surrogateescape"),
    required=True,
    help="JSON Lines file of changes, or - for standard input.",
)
@click.pass_context
def enqueue(ctx: click.Context, /, source: IO[str]) -> None:
    """Validate and insert changes, one JSON object a line.

    Each line has the producer columns of sync_changes, for example
    {"workspace_id": 12, "kind": "status_change", "payload": {"to_status_key": 310},
    "source_ref": "crm-991"}. Good lines are inserted in one transaction; every bad line is
    reported with its number and reason, and the exit code is 1 if any line was bad.
    """
    settings = _settings(ctx)
    good: list[tuple[int, NewChange]] = []
    bad = 0
    seen: dict[str, int] = {}
    for number, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            line.encode("utf-8")
            change = parse_line(line)
        except UnicodeEncodeError:
            bad += 1
            click.echo(f"line {number}: line: is not valid UTF-8", err=True)
            continue
        except InputError as exc:
            bad += 1
            click.echo(f"line {number}: {exc}", err=True)
            continue
        if change.source_ref is not None:
            if change.source_ref in seen:
                bad += 1
                click.echo(
                    f"line {number}: source_ref: {change.source_ref!r} "
                    f"repeats line {seen[change.source_ref]}",
                    err=True,
                )
                continue
            seen[change.source_ref] = number
        good.append((number, change))

    async def _go() -> tuple[list[int], list[int]]:
        store = await _open_store(settings)
        try:
            taken = await store.existing_source_refs(list(seen))
            rejected = [n for n, ch in good if ch.source_ref in taken]
            accepted = [ch for _, ch in good if ch.source_ref not in taken]
            return await store.enqueue(accepted), rejected
        finally:
            await store.engine.dispose()

    ids, rejected = _run_async(_go) if good else ([], [])
    for number in rejected:
        click.echo(f"line {number}: source_ref: already enqueued", err=True)
    bad += len(rejected)
    click.echo(f"enqueued {len(ids)} change(s); {bad} line(s) rejected")
    if bad:
        sys.exit(EXIT_INPUT)


@main.command()
@click.option(
    "--metrics-textfile",
    type=click.Path(dir_okay=False),
    help="Write Prometheus metrics here at the end (node_exporter textfile collector).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar (default: only on a terminal).",
)
@click.pass_context
def run(ctx: click.Context, /, metrics_textfile: str | None, progress: bool | None) -> None:
    """Sync every due change, then exit (for a systemd timer or cron)."""
    settings = named_worker(_settings(ctx))
    show_progress = sys.stdout.isatty() if progress is None else progress
    report = _run_async(lambda: _sync_once(settings, metrics_textfile, show_progress))
    if report.ended_because == "token_rejected":
        _fail(
            EXIT_TOKEN,
            "the API token was rejected (401); claimed changes were returned to pending "
            "untouched. Check or replace KANTATA_SYNC_TOKEN.",
        )


async def _sync_once(settings: Settings, textfile: str | None, show_progress: bool) -> Any:
    token = settings.api_token()
    store = await _open_store(settings, worker=True)
    metrics = Metrics()
    try:
        async with KantataClient(
            settings.api_base_url,
            token,
            timeout=settings.request_timeout,
            max_connections=settings.concurrency * 2,
        ) as client:
            coordinator = Coordinator(store.engine)
            dispatcher = Dispatcher(
                store,
                client,
                settings,
                limiter=make_limiter(settings, coordinator),
                coordinator=coordinator,
                metrics=metrics,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            total = (await store.counts())[State.PENDING]
            try:
                async with progress_bar(show_progress, total) as advance:
                    dispatcher.on_progress = advance
                    report = await dispatcher.run(stop)
            finally:
                await dispatcher.close()
        await _update_queue_metrics(store, metrics)
        if textfile:
            metrics.write_textfile(textfile)
        return report
    finally:
        await store.engine.dispose()


async def _update_queue_metrics(store: Store, metrics: Metrics) -> None:
    for state, count in (await store.counts()).items():
        metrics.queue_depth.labels(state).set(count)
    oldest = await store.oldest_pending()
    age = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
    metrics.oldest_pending.set(max(age, 0.0))


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def status(ctx: click.Context, /, fmt: str) -> None:
    """Counts per state (and per outcome), and the age of the oldest pending change."""
    settings = _settings(ctx)

    async def _go() -> dict[str, Any]:
        store = await _open_store(settings)
        try:
            counts = await store.counts()
            breakdown = await store.outcome_counts()
            oldest = await store.oldest_pending()
            live, dead = await Coordinator(store.engine).workers(datetime.now(UTC), DEAD_AFTER)
        finally:
            await store.engine.dispose()
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest else None
        return {
            "states": counts,
            "outcomes": [
                {"state": state, "outcome": outcome, "count": count}
                for state, outcome, count in breakdown
            ],
            "oldest_pending_age_seconds": round(age, 1) if age is not None else None,
            "workers": [
                {
                    "name": w.name,
                    "host": w.host,
                    "pid": w.pid,
                    "command": w.command,
                    "started_at": w.started_at.isoformat(),
                    "heartbeat_at": w.heartbeat_at.isoformat(),
                }
                for w in live
            ],
            "dead_workers": dead,
        }

    data = _run_async(_go)
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
        return
    from rich.table import Table

    table = Table(title="sync_changes")
    table.add_column("state")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    for row in data["outcomes"]:
        table.add_row(row["state"], row["outcome"] or "", str(row["count"]))
    console = _console()
    console.print(table)
    age = data["oldest_pending_age_seconds"]
    console.print(f"oldest pending change: {f'{age:.0f} s old' if age is not None else 'none'}")
    workers = ", ".join(f"{w['name']} ({w['command']} on {w['host']})" for w in data["workers"])
    console.print(f"live workers: {workers or 'none'}")


REPORT_COLUMNS = (
    "id",
    "source_ref",
    "workspace_id",
    "kind",
    "state",
    "outcome",
    "attempts",
    "http_status",
    "error_type",
    "error_message",
    "error_field",
    "merged_into_id",
    "created_at",
    "updated_at",
)


def _filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--state",
            "states",
            multiple=True,
            type=click.Choice([str(s) for s in State]),
            help="Only changes in this state (repeatable).",
        ),
        click.option("--workspace", "workspaces", multiple=True, type=int, help="Workspace ID."),
        click.option("--id", "ids", multiple=True, type=int, help="Change ID (repeatable)."),
        click.option("--source-ref", "source_refs", multiple=True, help="Producer's reference."),
        click.option("--error-type", "error_types", multiple=True, help="e.g. validation."),
        click.option(
            "--since",
            type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]),
            help="Only changes created at or after this time (UTC unless given).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _filters(
    states: Iterable[str],
    workspaces: Iterable[int],
    ids: Iterable[int],
    source_refs: Iterable[str],
    error_types: Iterable[str],
    since: datetime | None,
) -> Filters:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return Filters(
        states=tuple(State(s) for s in states),
        workspace_ids=tuple(workspaces),
        ids=tuple(ids),
        source_refs=tuple(source_refs),
        error_types=tuple(error_types),
        since=since,
    )


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@_filter_options
@click.pass_context
def report(ctx: click.Context, /, fmt: str, limit: int | None, **filter_args: Any) -> None:
    """One row per change: what was asked, what happened, and Kantata's error if any."""
    settings = _settings(ctx)
    filters = _filters(**filter_args)

    async def _go() -> None:
        store = await _open_store(settings)
        try:
            await _write_report(store.report(filters, limit), fmt)
        finally:
            await store.engine.dispose()

    _run_async(_go)


async def _write_report(rows: AsyncIterator[dict[str, Any]], fmt: str) -> None:
    out = sys.stdout
    if fmt == "csv":
        writer: csv.DictWriter[str] = csv.DictWriter(out, REPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        async for row in rows:
            writer.writerow({k: _plain(row[k]) for k in REPORT_COLUMNS})
        return
    if fmt == "json":
        out.write("[")
        first = True
        async for row in rows:
            out.write("\n  " if first else ",\n  ")
            out.write(json.dumps({k: _plain(row[k]) for k in REPORT_COLUMNS}))
            first = False
        out.write("\n]\n" if not first else "]\n")
        return
    from rich.table import Table

    table = Table()
    shown = [k for k in REPORT_COLUMNS if k not in {"created_at", "updated_at", "merged_into_id"}]
    for column in shown:
        table.add_column(column, overflow="fold")
    async for row in rows:
        table.add_row(*("" if row[k] is None else str(row[k]) for k in shown))
    _console().print(table)


def _console() -> Any:
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _transition_command(name: str, doc: str) -> Callable[..., Any]:
    @main.command(name, help=doc)
    @click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
    @_filter_options
    @click.pass_context
    def command(ctx: click.Context, /, dry_run: bool, **filter_args: Any) -> None:
        settings = _settings(ctx)
        filters = _filters(**filter_args)
        if not filters.where():
            raise click.UsageError(f"{name} needs at least one filter (--state, --id, ...)")

        async def _go() -> list[int]:
            store = await _open_store(settings)
            try:
                method = store.retry if name == "retry" else store.cancel
                return await method(filters, datetime.now(UTC), dry_run)
            finally:
                await store.engine.dispose()

        ids = _run_async(_go)
        verb = (
            "would " + name if dry_run else name.rstrip("y") + ("ied" if name == "retry" else "led")
        )
        click.echo(f"{verb} {len(ids)} change(s)" + (f": {_id_list(ids)}" if ids else ""))

    return command


def _id_list(ids: list[int], shown: int = 50) -> str:
    text = ", ".join(str(i) for i in ids[:shown])
    return text + (f", ... ({len(ids) - shown} more)" if len(ids) > shown else "")


_transition_command(
    "retry", "Put failed, invalid or cancelled changes back to pending, attempts reset."
)
_transition_command("cancel", "Cancel pending changes so that they are never sent.")


@main.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.pass_context
def config_check(ctx: click.Context, /) -> None:
    """Validate the configuration and print the effective values, secrets masked."""
    settings = _settings(ctx)
    for key, value in settings.masked().items():
        click.echo(f"{key} = {json.dumps(value)}")
    if settings.token is None:
        click.echo("warning: no API token configured (KANTATA_SYNC_TOKEN)", err=True)
