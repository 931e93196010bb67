"""A progress bar on a terminal, nothing elsewhere (under systemd the logs tell the story)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable


@contextlib.asynccontextmanager
async def progress_bar(enabled: bool, total: int) -> AsyncIterator[Callable[[int], None] | None]:
    """Yield a callback that advances the bar by n finished changes, or None when disabled."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("syncing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    task = progress.add_task("sync", total=total or None)
    with progress:
        yield lambda n: progress.advance(task, n)
