"""The worker's own CPU per change, with no HTTP at all: the ceiling of the overhead ratio.

The real dispatcher, store and client run one ``run`` over a seeded database, except that the
client's request method answers at once with the fast server's 200 (a subclass, the bench's
only stand-in). What is left is what the worker adds to each request: claiming, validating,
planning, the lease checks, classifying, the ledger, metrics and the write-back. Beside a bare
request's CPU, the loop thread's share bounds the overhead ratio: bare / (bare + own).

Run as ``python tests/bench/owncost.py DATABASE_URL`` in a child process (so that nothing of
the bench's interpreter is counted); it prints ``{"changes": N, "cpu_s": ..., "main_cpu_s": ...,
"wall_s": ...}`` for one run over what the database holds: the CPU of every thread, and of the
event loop's thread alone (SQLite's driver thread runs beside it, on the other core).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from yarl import URL

from worker import db as dbmod
from worker.client import KantataClient, SendGuard
from worker.clitools import new_event_loop, tune_gc
from worker.config import Settings
from worker.dispatcher import Dispatcher
from worker.logging import configure
from worker.outcomes import ApiResponse
from worker.store import Store

TOKEN = "sandbox-token"
ANSWER = (
    b'{"count":1,"results":[{"key":"workspaces","id":"5"}],"workspaces":{"5":{"id":"5",'
    b'"status":{"color":"green","key":"310","message":"Active"},'
    b'"updated_at":"2026-12-07T00:00:00.000000+00:00"}},'
    b'"meta":{"count":1,"page_count":1,"page_number":1,"page_size":20}}'
)


class AnsweringClient(KantataClient):
    """The real client, but every request is answered at once, without a socket."""

    async def _request(
        self, method: str, url: URL, body: Any, guard: SendGuard | None = None
    ) -> ApiResponse:
        await asyncio.sleep(0)  # one loop turn, as an answer would take at least
        if guard is not None and guard() is not None:
            raise AssertionError("the send guard refused")
        return ApiResponse(200, self._parse(ANSWER), None, None, 0.1)


async def _run(url: str) -> dict[str, float]:
    settings = Settings.model_validate(
        {
            "database_url": url,
            "api_base_url": "http://127.0.0.1:9/api/v1",
            "token": TOKEN,
            "rate_limit": 0,
            "concurrency": 16,
            "batch_size": 500,
        }
    )
    engine = dbmod.create_engine(settings.database_url, worker=True)
    try:
        async with AnsweringClient(settings.api_base_url, TOKEN, timeout=10) as client:
            dispatcher = Dispatcher(Store(engine), client, settings)
            cpu, main, wall = time.process_time(), time.thread_time(), time.perf_counter()
            report = await dispatcher.run()
            cpu, main = time.process_time() - cpu, time.thread_time() - main
            wall = time.perf_counter() - wall
    finally:
        await engine.dispose()
    return {"changes": report.stats.succeeded, "cpu_s": cpu, "main_cpu_s": main, "wall_s": wall}


def main() -> None:
    configure("warning", "json", [TOKEN])
    tune_gc()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        print(json.dumps(runner.run(_run(sys.argv[1]))))


if __name__ == "__main__":
    main()
