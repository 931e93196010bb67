"""The operator's commands on a change's history: ``show``, ``runs`` and ``prune``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from . import render
from .clitools import EXIT_INPUT, fail, run_async, settings_of
from .coordination import Coordinator
from .durations import parse_duration
from .explain import why_not_sent
from .queue_cli import DEAD_AFTER
from .retention import Pruner, PruneReport, describe
from .runtime import open_store


@click.command()
@click.argument("change_id", type=int, required=False)
@click.option("--source-ref", help="The producer's reference instead of an ID.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def show(ctx: click.Context, /, change_id: int | None, source_ref: str | None, fmt: str) -> None:
    """One change and everything that explains it.

    Its payload and state, every request that carried it (time, endpoint, status, duration,
    error, Kantata's X-Request-Id), the runs that sent them, what it superseded or was
    superseded by, the operators' notes, and for a change not sent yet, why not.
    """
    if (change_id is None) == (source_ref is None):
        raise click.UsageError("give a change ID or --source-ref (one of them)")
    settings = settings_of(ctx)

    async def _go() -> dict[str, Any] | None:
        async with open_store(settings) as store:
            now = datetime.now(UTC)
            history = await store.change_history(now, change_id, source_ref)
            if history is None:
                return None
            live, _dead = await Coordinator(store.engine).workers(now, DEAD_AFTER)
        why = why_not_sent(history.queued(), history.workspace, now, len(live))
        return render.show_data(history, why)

    data = run_async(_go)
    if data is None:
        what = f"ID {change_id}" if change_id is not None else f"source_ref {source_ref!r}"
        fail(EXIT_INPUT, f"no change with {what}")
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        render.print_show(data)


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def runs(ctx: click.Context, /, limit: int, fmt: str) -> None:
    """The run log, newest first: who ran, what it did, how long, and why it ended."""
    settings = settings_of(ctx)

    async def _go() -> list[dict[str, Any]]:
        async with open_store(settings) as store:
            return await store.runs(limit)

    rows = [render.runs_row(run) for run in run_async(_go)]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        render.print_runs(rows)


def _older_than(_ctx: click.Context, _param: click.Parameter, value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option(
    "--older-than",
    "age",
    required=True,
    callback=_older_than,
    help="Age of what goes: a whole number and s, m, h, d or w (30d, 12h, 90m).",
)
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def prune(ctx: click.Context, /, age: timedelta, dry_run: bool, fmt: str) -> None:
    """Delete finished changes, their attempts, and runs, older than --older-than.

    Terminal changes (succeeded, failed, invalid, cancelled) that finished before the cutoff
    go, except those a change that stays still points at (a pending correction that
    superseded them, a change merged into their request). Then the attempts none of whose
    changes is left, and the runs no attempt names. A thousand rows a transaction at most,
    pausing between them, so that running workers are never held up.
    """
    settings = settings_of(ctx)

    async def _go() -> PruneReport:
        async with open_store(settings) as store:
            return await Pruner(store.engine).prune(datetime.now(UTC) - age, dry_run=dry_run)

    report = run_async(_go)
    if fmt == "json":
        click.echo(json.dumps(report.fields(), indent=2))
        return
    for line in describe(report, _age_text(age)):
        click.echo(line)


def _age_text(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    for size, unit in ((604_800, "w"), (86_400, "d"), (3_600, "h"), (60, "m")):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


COMMANDS = (show, runs, prune)
