"""The history commands in-process (click's runner) on a SQLite file: what they print and exit."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from worker import db as dbmod
from worker.changes import AttemptRecord, Kind, NewChange, RunStats
from worker.cli import main
from worker.models import sync_changes
from worker.store import Store

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=2)


class Outbox:
    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(
            main,
            list(args),
            input=input,
            env={"KANTATA_SYNC_DATABASE_URL": self.url, "LOGNAME": "ann", "USER": "ann"},
        )


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    """Changes 1-4: 1 failed two days ago with a 403 (ref crm-1, error text with brackets);
    2 and 3 pending in workspace 7 behind change 4, in flight under worker-x; two runs."""
    path = tmp_path / "outbox.db"

    async def build() -> None:
        engine = dbmod.create_engine(f"sqlite+aiosqlite:///{path}")
        await dbmod.upgrade(engine)
        store = Store(engine)
        ids = await store.enqueue(
            [
                NewChange(1, Kind.STATUS_CHANGE, {"to_status_key": 310}, "crm-1"),
                NewChange(7, Kind.WORKSPACE_UPDATE, {"title": "b"}, "crm-2"),
                NewChange(7, Kind.WORKSPACE_UPDATE, {"title": "c"}),
                NewChange(7, Kind.WORKSPACE_UPDATE, {"title": "a"}),
            ]
        )
        assert ids == [1, 2, 3, 4]
        async with engine.begin() as conn:
            await conn.execute(
                sa.update(sync_changes)
                .where(sync_changes.c.id == 1)
                .values(
                    state="failed",
                    attempts=1,
                    http_status=403,
                    error_type="system",
                    error_message="no [/b] permission",
                    completed_at=OLD,
                )
            )
            await conn.execute(
                sa.update(sync_changes)
                .where(sync_changes.c.id == 4)
                .values(
                    state="in_flight",
                    lease_owner="worker-x",
                    lease_expires_at=NOW + timedelta(minutes=5),
                )
            )
        await store.start_run("run-1", "w1", "run", OLD - timedelta(seconds=1))
        await store.finish_run(
            "run-1", RunStats(claimed=1, failed=1, requests=1), "drained", OLD, 0.25
        )
        await store.start_run("run-2", "w2", "serve", NOW - timedelta(minutes=1))
        record = AttemptRecord(
            "run-1",
            (1,),
            1,
            "POST /workspace_status_changes",
            403,
            3.5,
            "system",
            "no [/b] permission",
            "req-403",
            OLD,
        )
        await store.write_batch((), (), (record,), OLD)
        await engine.dispose()

    asyncio.run(build())
    return Outbox(path)


def test_show_prints_the_change_its_attempts_and_runs(outbox: Outbox) -> None:
    result = outbox("show", "1")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for words in (
        "change 1 (crm-1)",
        '{"to_status_key": 310}',
        "403 system: no [/b] permission",
        "req-403",
        "POST /workspace_status_changes",
        "run-1",
        "drained",
    ):
        assert words in text


def test_show_says_why_a_pending_change_waits(outbox: Outbox) -> None:
    held = json.loads(outbox("show", "--source-ref", "crm-2", "--format", "json").stdout)
    why = held["why_not_sent"]
    assert (why["why"], why["change_id"], why["worker"]) == ("held_behind", 4, "worker-x")
    assert (
        "held behind change 4 of the same workspace, in flight under worker worker-x"
        in (why["message"])
    )
    table = outbox("show", "2").stdout
    assert "why not sent" in table and "held behind change 4" in table
    assert "attempts: none" in table


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["show", "42"], 1, "kantata-sync: no change with ID 42"),
        (["show", "--source-ref", "nope"], 1, "kantata-sync: no change with source_ref 'nope'"),
        (["show"], 2, "give a change ID or --source-ref"),
        (["show", "1", "--source-ref", "crm-1"], 2, "give a change ID or --source-ref"),
        (["prune", "--older-than", "30"], 2, "'30' has no unit"),
        (["prune", "--older-than", "0d"], 2, "'0d' must be greater than zero"),
        (["prune"], 2, "Missing option '--older-than'"),
    ],
)
def test_errors_are_one_line_and_an_exit_code(
    outbox: Outbox, args: list[str], code: int, message: str
) -> None:
    result = outbox(*args)
    assert result.exit_code == code
    assert message in result.stderr


def test_runs_newest_first_as_json_and_table(outbox: Outbox) -> None:
    runs = json.loads(outbox("runs", "--format", "json").stdout)
    assert [(r["id"], r["command"], r["ended_because"]) for r in runs] == [
        ("run-2", "serve", None),
        ("run-1", "run", "drained"),
    ]
    assert (runs[1]["claimed"], runs[1]["failed"], runs[1]["duration_s"]) == (1, 1, 0.25)
    assert [
        r["id"] for r in json.loads(outbox("runs", "--limit", "1", "--format", "json").stdout)
    ] == ["run-2"]
    table = outbox("runs").stdout
    assert "run-1" in table and "drained" in table and "serve" in table


def test_report_columns_and_jsonl(outbox: Outbox) -> None:
    [row] = json.loads(outbox("report", "--format", "json", "--id", "1").stdout)
    assert row["last_request_id"] == "req-403"
    assert row["payload"] == {"to_status_key": 310}
    assert row["completed_at"] is not None and row["operator_note"] is None
    assert "req-403" in outbox("report", "--id", "1").stdout  # the table shows it too
    header = outbox("report", "--format", "csv", "--id", "1").stdout.splitlines()[0]
    assert header.endswith("completed_at,payload,last_request_id,superseded_by,operator_note")
    jsonl = outbox("report", "--format", "jsonl").stdout.splitlines()
    assert [json.loads(line) for line in jsonl[:3]] == [
        {
            "workspace_id": 1,
            "kind": "status_change",
            "payload": {"to_status_key": 310},
            "source_ref": "crm-1",
        },
        {
            "workspace_id": 7,
            "kind": "workspace_update",
            "payload": {"title": "b"},
            "source_ref": "crm-2",
        },
        {"workspace_id": 7, "kind": "workspace_update", "payload": {"title": "c"}},
    ]


def test_supersede_rejects_what_it_may_not_replace_and_notes_who(outbox: Outbox) -> None:
    lines = [
        {
            "workspace_id": 1,
            "kind": "status_change",
            "payload": {"to_status_key": 320},
            "source_ref": "crm-1",
        },
        {
            "workspace_id": 7,
            "kind": "workspace_update",
            "payload": {"title": "B"},
            "source_ref": "crm-2",
        },
        {"workspace_id": 8, "kind": "workspace_update", "payload": {"title": "x"}},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    result = outbox("enqueue", "--supersede", "-f", "-", input=text)
    assert result.exit_code == 1
    assert "line 2: source_ref: change 2 is pending; only a failed" in result.stderr
    assert "line 3: source_ref: is required with --supersede" in result.stderr
    assert "enqueued 1 change(s), 1 superseding earlier ones; 2 line(s) rejected" in result.stdout
    old = json.loads(outbox("show", "1", "--format", "json").stdout)
    assert old["change"]["source_ref"] is None and old["superseded_by"] == 5
    assert old["operator_notes"][0].endswith("replaced by change 5 (enqueue --supersede) by ann")
    # Without --supersede, a taken source_ref is refused as before.
    plain = outbox("enqueue", "-f", "-", input=json.dumps(lines[0]) + "\n")
    assert plain.exit_code == 1 and "line 1: source_ref: already enqueued" in plain.stderr


def test_cancel_and_retry_record_who_and_why(outbox: Outbox) -> None:
    assert "retried 1 change(s): 1" in outbox("retry", "--id", "1", "--reason", "fixed").stdout
    after = json.loads(outbox("show", "1", "--format", "json").stdout)["change"]
    assert (after["state"], after["http_status"], after["error_message"]) == ("pending", None, None)
    assert "cancelled 1 change(s): 1" in outbox("cancel", "--id", "1").stdout
    notes = json.loads(outbox("show", "1", "--format", "json").stdout)["operator_notes"]
    assert [note.split(" UTC ", 1)[1] for note in notes] == [
        "retried by ann: fixed",
        "cancelled by ann",
    ]


def test_prune_dry_run_counts_and_deletes_nothing(outbox: Outbox) -> None:
    text = outbox("prune", "--older-than", "1d", "--dry-run").stdout
    assert text.startswith("would prune 1 change(s), 1 attempt(s) and 1 run(s) older than 1d")
    dry = json.loads(outbox("prune", "--older-than", "3d", "--dry-run", "--format", "json").stdout)
    assert (dry["dry_run"], dry["changes"], dry["attempts"], dry["runs"]) == (True, 0, 0, 0)
    assert len(json.loads(outbox("report", "--format", "json").stdout)) == 4
    assert len(json.loads(outbox("runs", "--format", "json").stdout)) == 2
    done = json.loads(outbox("prune", "--older-than", "36h", "--format", "json").stdout)
    assert (done["changes"], done["attempts"], done["runs"]) == (1, 1, 1)
    assert [r["id"] for r in json.loads(outbox("report", "--format", "json").stdout)] == [2, 3, 4]
