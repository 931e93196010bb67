"""``serve``'s status page in a real browser: headless Chromium draws it, and what it drew is
read back (the DOM it built, the pixels of a screenshot) and checked against the database.

Chromium comes from Debian's ``chromium`` package. Without it these tests skip and say so,
unless KANTATA_SYNC_REQUIRE_TOOLS=1 (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.pagescan import Element, parse, png_pixels
from worker.statushtml import STATE_COLORS

from .conftest import BIN, Cli, start_sandbox, stop, wait_for
from .test_serve import changes, fetch, serve

SECRET = "tok-71c0ffee-PAGE-SECRET"
INSTALL_HINT = "apt-get install -y --no-install-recommends chromium"
ECHOED = (
    f"upstream said: Authorization: Bearer {SECRET} ({json.dumps(SECRET)[1:-1]}) "
    '<script>document.title="pwned"</script> & <img src=x onerror=alert(1)>'
)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    reason = f"chromium is not installed ({INSTALL_HINT})"
    if os.environ.get("KANTATA_SYNC_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason}; KANTATA_SYNC_REQUIRE_TOOLS=1")
    pytest.skip(reason)


def browse(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium, as root in a container allows it, with a profile of its own."""
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=90,
    )


def query(database: sqlite3.Connection, sql: str) -> list[tuple[object, ...]]:
    return database.execute(sql).fetchall()


def bars(root: Element, chart_id: str) -> Counter[str]:
    drawn: Counter[str] = Counter()
    for rect in root.by_id(chart_id).find_all("rect"):
        if "data-series" in rect.attrs:
            drawn[rect.attrs["data-series"]] += int(rect.attrs["data-value"])
    return drawn


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, sqlite3.Connection, Path]]:
    """A sandbox, an outbox with an echoed-token failure in it, and ``serve`` syncing it;
    shared by the tests of this module, which only read."""
    chromium()  # skip before starting anything
    home = tmp_path_factory.mktemp("statuspage")
    cli = Cli(
        {
            "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(home),
            "KANTATA_SYNC_DATABASE_URL": f"sqlite:///{home / 'outbox.db'}",
        },
        home,
    )
    sandbox = start_sandbox("--token", SECRET, "--forbidden", "13", "--workspaces", "60")
    process = None
    try:
        assert cli("db", "upgrade").returncode == 0
        assert cli("enqueue", "-f", "-", input=changes(20)).returncode == 0
        database = sqlite3.connect(cli.cwd / "outbox.db")
        database.execute(
            "INSERT INTO sync_changes (workspace_id, kind, payload, state, attempts, "
            "http_status, error_type, error_field, error_message, completed_at) "
            "VALUES (99, 'workspace_update', '{}', 'failed', 1, 422, 'validation', "
            "'<i>title</i>', ?, ?)",
            (ECHOED, datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")),
        )
        database.commit()
        env = {
            "KANTATA_SYNC_API_BASE_URL": sandbox.url,
            "KANTATA_SYNC_TOKEN": SECRET,
            "KANTATA_SYNC_RATE_LIMIT": "100",
        }
        process, log = serve(cli, env, "--http-port", "0", "--poll-interval", "0.2")
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:"), log.read_text()

        def settled() -> bool:
            [(waiting,)] = query(
                database,
                "SELECT count(*) FROM sync_changes WHERE state IN ('pending', 'in_flight')",
            )
            code, body = fetch(f"{url}/readyz")
            return waiting == 0 and code == 200 and json.loads(body)["activity"] == "idle"

        wait_for(settled, timeout=60)
        yield url, database, log
        database.close()
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=30)
        stop(sandbox.process)


def test_the_browser_draws_the_queue_flow_failures_workers_and_budget_of_the_database(
    daemon: tuple[str, sqlite3.Connection, Path], tmp_path: Path
) -> None:
    browser = chromium()
    url, database, log = daemon
    dumped = browse(browser, tmp_path / "profile", "--dump-dom", f"{url}/")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    root = parse(dom)

    assert SECRET not in dom and SECRET not in log.read_text()
    assert root.find_all("title")[0].all_text() == "kantata-sync status"  # no script ran
    assert root.find_all("script") == [] and root.find_all("img") == []

    states = dict(query(database, "SELECT state, count(*) FROM sync_changes GROUP BY state"))
    assert states["succeeded"] > 0 and states["failed"] >= 3  # 403s on 13, and the echo
    queue = {g.attrs["data-label"]: int(g.attrs["data-value"]) for g in root.find_all("g")}
    assert queue == {s: states.get(s, 0) for s in STATE_COLORS}

    finished = {s: n for s, n in states.items() if s not in ("pending", "in_flight")}
    legend = {
        li.attrs["data-series"]: int(li.attrs["data-total"])
        for li in root.by_id("throughput").find_all("li")
    }
    assert legend == {
        s: finished.get(s, 0) for s in ("succeeded", "failed", "invalid", "cancelled")
    }
    assert bars(root, "throughput-chart") == Counter(finished)
    by_type = query(
        database,
        "SELECT coalesce(error_type, 'unknown'), count(*) FROM sync_changes "
        "WHERE state IN ('failed', 'invalid') GROUP BY 1",
    )
    assert bars(root, "failures-by-type-chart") == Counter(dict(by_type))  # type: ignore[arg-type]

    newest = query(
        database,
        "SELECT id FROM sync_changes WHERE state IN ('failed', 'invalid') "
        "ORDER BY completed_at DESC, id DESC LIMIT 20",
    )
    listed = root.by_id("latest-failures").find_all("tr")
    assert [int(r.attrs["data-change-id"]) for r in listed if "data-change-id" in r.attrs] == [
        i for (i,) in newest
    ]
    [echo] = [r for r in listed if "upstream said" in r.all_text()]
    text = echo.all_text()
    assert "Authorization: Bearer [REDACTED] ([REDACTED])" in text
    assert '<script>document.title="pwned"</script> & <img src=x onerror=alert(1)>' in text
    assert "<i>title</i>" in text
    forbidden = [
        r for r in listed if r.attrs.get("data-change-id") and "permission" in r.all_text()
    ]
    assert forbidden and all("403" in r.all_text() for r in forbidden)

    [(worker,)] = query(database, "SELECT name FROM sync_workers WHERE command = 'serve'")
    assert [r.attrs["data-worker"] for r in root.by_id("workers").find_all("tr")[1:]] == [worker]
    [(key, budget)] = query(database, "SELECT token_key, budget FROM sync_rate_limits")
    [row] = root.by_id("budgets").find_all("tr")[1:]
    assert row.attrs["data-token"] == key and float(row.attrs["data-budget"]) == round(budget, 3)


def test_the_screenshot_shows_the_charts_in_their_colours(
    daemon: tuple[str, sqlite3.Connection, Path], tmp_path: Path
) -> None:
    browser = chromium()
    url, database, _ = daemon
    shot = tmp_path / "status.png"
    taken = browse(
        browser, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,1400", f"{url}/"
    )
    assert taken.returncode == 0, taken.stderr[-2000:]
    width, height, colours = png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 1400)

    def pixels(state: str) -> int:
        value = STATE_COLORS[state].lstrip("#")
        return colours[int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)]

    [(succeeded,)] = query(database, "SELECT count(*) FROM sync_changes WHERE state = 'succeeded'")
    [(failed,)] = query(database, "SELECT count(*) FROM sync_changes WHERE state = 'failed'")
    assert succeeded > failed > 0
    # The queue's bars and the flow's columns, drawn in the states' colours; more green than
    # red, as there are more succeeded changes than failed ones. Nothing is pending.
    assert pixels("succeeded") > pixels("failed") > 100
    assert pixels("pending") == 0


def test_the_browser_draws_the_html_report_from_the_same_database(
    daemon: tuple[str, sqlite3.Connection, Path], tmp_path: Path
) -> None:
    """``report --format html`` writes a file that Chromium opens on its own: the counts per
    state and the changes it lists are the database's, and no secret is in it."""
    browser = chromium()
    _url, database, log = daemon
    home = log.parent
    cli = Cli(
        {
            "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(home),
            "KANTATA_SYNC_DATABASE_URL": f"sqlite:///{home / 'outbox.db'}",
            "KANTATA_SYNC_TOKEN": SECRET,
        },
        home,
    )
    written = cli("report", "--format", "html")
    assert written.returncode == 0, written.stderr
    report = tmp_path / "report.html"
    report.write_text(written.stdout)
    dumped = browse(browser, tmp_path / "profile", "--dump-dom", report.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    root = parse(dom)
    assert SECRET not in dom and root.find_all("script") == []
    states = dict(query(database, "SELECT state, count(*) FROM sync_changes GROUP BY state"))
    queue = {g.attrs["data-label"]: int(g.attrs["data-value"]) for g in root.find_all("g")}
    assert queue == {s: states.get(s, 0) for s in STATE_COLORS}
    listed = [
        int(r.attrs["data-change-id"])
        for r in root.by_id("changes").find_all("tr")
        if "data-change-id" in r.attrs
    ]
    assert listed == [i for (i,) in query(database, "SELECT id FROM sync_changes ORDER BY id")]
    [echo] = [r for r in root.by_id("changes").find_all("tr") if "upstream said" in r.all_text()]
    assert "Authorization: Bearer [REDACTED]" in echo.all_text()
    assert '<script>document.title="pwned"</script>' in echo.all_text()  # shown, not run
