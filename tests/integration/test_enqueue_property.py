"""Property: `kantata-sync enqueue` reports exactly the bad lines and inserts exactly the good."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker import db as dbmod
from worker.cli import main

GOOD = [
    {"workspace_id": 3, "kind": "status_change", "payload": {"to_status_key": 310}},
    {"workspace_id": 9, "kind": "workspace_update", "payload": {"title": "ok", "price": 5}},
    {
        "workspace_id": 2,
        "kind": "workspace_update",
        "payload": {"custom_fields": [{"custom_field_id": 1, "value": "v"}]},
    },
]
BAD = [
    '{"workspace_id": 1, "kind": "status_change", "payload": {"to_status_key": "310"}}',
    '{"workspace_id": 0, "kind": "status_change", "payload": {"to_status_key": 310}}',
    '{"workspace_id": 99999999999, "kind": "workspace_update", "payload": {"title": "x"}}',
    '{"workspace_id": 1, "kind": "rename", "payload": {}}',
    '{"workspace_id": 1, "kind": "workspace_update", "payload": {"due_date": "2026-13-01"}}',
    '{"workspace_id": 1, "kind": "workspace_update", "payload": {"stage": "done"}}',
    '{"workspace_id": 1, "kind": "workspace_update", "payload": {"colour": "red"}}',
    '{"workspace_id": 1, "kind": "workspace_update", "payload": {"title": "' + "y" * 70_000 + '"}}',
    '{"workspace_id": 1, "kind": "workspace_update"}',
    '{"workspace_id": 1, "kind": "workspace_update", "payload": []}',
    "[1, 2, 3]",
    "{not json",
    '{"workspace_id": true, "kind": "status_change", "payload": {"to_status_key": 310}}',
]
_TEMPLATE: dict[str, Path] = {}


def _template() -> Path:
    if "db" not in _TEMPLATE:
        path = Path(tempfile.mkdtemp()) / "template.db"

        async def migrate() -> None:
            engine = dbmod.create_engine(f"sqlite+aiosqlite:///{path}")
            await dbmod.upgrade(engine)
            await engine.dispose()

        asyncio.run(migrate())
        _TEMPLATE["db"] = path
    return _TEMPLATE["db"]


lines = st.lists(
    st.one_of(
        st.sampled_from(GOOD).map(lambda record: ("good", json.dumps(record))),
        st.sampled_from(BAD).map(lambda text: ("bad", text)),
        st.text(min_size=1, max_size=40)
        .filter(lambda t: "\n" not in t and "\r" not in t and t.strip() != "")
        .map(lambda text: ("fuzz", text)),
    ),
    min_size=1,
    max_size=15,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=lines)
def test_enqueue_rejects_exactly_the_bad_lines(records: list[tuple[str, str]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        database = Path(directory) / "outbox.db"
        shutil.copy(_template(), database)
        text = "".join(line + "\n" for _, line in records)
        result = CliRunner().invoke(
            main,
            ["enqueue", "-f", "-"],
            input=text,
            env={"KANTATA_SYNC_DATABASE_URL": f"sqlite:///{database}"},
        )
        reported = {
            int(line.split(":")[0].removeprefix("line "))
            for line in result.stderr.splitlines()
            if line.startswith("line ")
        }
        good = [n for n, (kind, _) in enumerate(records, 1) if kind == "good"]
        bad = [n for n, (kind, _) in enumerate(records, 1) if kind == "bad"]
        assert set(bad) <= reported
        assert not reported & set(good)
        assert result.exit_code == (1 if reported else 0), result.output
        with sqlite3.connect(database) as conn:
            stored: list[Any] = conn.execute(
                "SELECT workspace_id, kind, payload FROM sync_changes ORDER BY id"
            ).fetchall()
        accepted = [n for n in range(1, len(records) + 1) if n not in reported]
        assert len(stored) == len(accepted)
        for (workspace_id, kind, payload), n in zip(stored, accepted, strict=True):
            record = json.loads(records[n - 1][1])
            assert (workspace_id, kind) == (record["workspace_id"], record["kind"])
            assert json.loads(payload) == record["payload"]
