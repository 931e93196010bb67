#!/usr/bin/env bash
# The kantata-sync demo: a fresh SQLite outbox, the local Kantata OX sandbox, a few hundred
# changes (some bad), one sync run with a progress bar, and the reconciliation tables.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO=demo
rm -rf "$DEMO" && mkdir -p "$DEMO"
export KANTATA_SYNC_DATABASE_URL="sqlite:///$PWD/$DEMO/kantata-sync.db"
export KANTATA_SYNC_TOKEN=sandbox-token
export KANTATA_SYNC_RATE_LIMIT=50
export KANTATA_SYNC_RETRY_BASE_DELAY=0.2
export KANTATA_SYNC_RETRY_MAX_DELAY=2

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Starting the local Kantata OX sandbox (50 requests/s, 5% server errors, project 13 locked)"
kantata-sync sandbox --port 0 --workspaces 120 --forbidden 13 --rate-limit 50 \
  --error-rate 0.05 --seed 42 >"$DEMO/sandbox.out" 2>"$DEMO/sandbox.log" &
SANDBOX_PID=$!
trap 'kill "$SANDBOX_PID" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q listening "$DEMO/sandbox.out" 2>/dev/null && break
  sleep 0.1
done
cat "$DEMO/sandbox.out"
export KANTATA_SYNC_API_BASE_URL="$(awk '{print $NF}' "$DEMO/sandbox.out")"

step "Creating the outbox: kantata-sync db upgrade"
kantata-sync db upgrade

step "Enqueueing sample changes: kantata-sync enqueue --file $DEMO/changes.jsonl"
python scripts/sample_changes.py >"$DEMO/changes.jsonl"
kantata-sync enqueue --file "$DEMO/changes.jsonl" || echo "(the bad lines above were rejected on purpose)"

step "A producer writing straight into sync_changes with SQL, mistakes included"
python - "$DEMO/kantata-sync.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.executemany(
    "INSERT INTO sync_changes (workspace_id, kind, payload, source_ref) VALUES (?, ?, ?, ?)",
    [
        (30, "workspace_update", '{"stage": "project", "access_level": "open"}', "erp-1"),
        (31, "workspace_update", '{"due_date": "2027-02-30"}', "erp-2"),
        (32, "workspace_update", '{"title": "ok", "colour": "red"}', "erp-3"),
        (33, "status_change", '{"to_status_key": "done"}', "erp-4"),
    ],
)
db.commit()
print("inserted 4 rows with plain SQL")
PY

step "Syncing: kantata-sync run (logs in $DEMO/run.log)"
kantata-sync run --progress 2>"$DEMO/run.log"
tail -n 1 "$DEMO/run.log"

step "Reconciliation: kantata-sync status"
kantata-sync status

step "Everything that did not go through: kantata-sync report --state failed --state invalid"
kantata-sync report --state failed --state invalid

printf '\nTry: kantata-sync report --format csv | head   (the database is %s)\n' "$DEMO/kantata-sync.db"
