"""The status page and HTML report renderers, and their SVG charts: values in, HTML out."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tests.pagescan import Element, parse
from worker.charts import Series, horizontal_bars, meter, nice_ceiling, number, stacked_bars
from worker.coordination import WorkerInfo
from worker.statusdata import (
    FINAL_STATES,
    Budget,
    Failure,
    ReportSummary,
    StatusData,
    Throughput,
    budgets_from,
    fold_buckets,
)
from worker.statushtml import (
    REDACTED,
    age,
    masker,
    render_error_page,
    render_report_html,
    render_status_page,
    round_ticks,
)

NOW = datetime(2026, 12, 4, 10, 30, 15, tzinfo=UTC)
TOKEN = 'tok-8d1f/9e"ab-SECRET'
HOSTILE = '<script>alert("x")</script> & <b>bold</b>'


def flow(buckets: int = 60, **by_state: dict[int, int]) -> Throughput:
    states = {s: tuple(by_state.get(s, {}).get(i, 0) for i in range(buckets)) for s in FINAL_STATES}
    failures = {
        "validation": tuple(by_state.get("failed", {}).get(i, 0) for i in range(buckets)),
    }
    start = NOW.replace(second=0) - timedelta(minutes=buckets - 1)
    return Throughput(start, 60, states, failures if any(failures["validation"]) else {})


def failure(change_id: int, message: str | None, **fields: object) -> Failure:
    values: dict[str, object] = {
        "id": change_id,
        "workspace_id": "12",
        "kind": "workspace_update",
        "state": "failed",
        "source_ref": f"crm-{change_id}",
        "attempts": 1,
        "http_status": 422,
        "error_type": "validation",
        "error_field": "title",
        "error_message": message,
        "completed_at": NOW - timedelta(minutes=change_id),
    }
    values.update(fields)
    return Failure(**values)  # type: ignore[arg-type]


def status_data(**overrides: object) -> StatusData:
    values: dict[str, object] = {
        "generated_at": NOW,
        "counts": {
            "pending": 7,
            "in_flight": 2,
            "succeeded": 120,
            "failed": 3,
            "invalid": 1,
            "cancelled": 0,
        },
        "oldest_pending_age": 95.0,
        "throughput": flow(succeeded={58: 100, 59: 20}, failed={59: 3}),
        "failures": (failure(1, "Please give your project a title"),),
        "workers": (
            WorkerInfo("worker-a", "host-1", 4242, "serve", NOW - timedelta(hours=2), NOW),
        ),
        "dead_workers": 0,
        "budgets": (Budget("sha256:abc", 9.8, 4.9, 3, 0.0),),
        "activity": "idle",
    }
    values.update(overrides)
    return StatusData(**values)  # type: ignore[arg-type]


def values_of(root: Element, chart_id: str) -> dict[str, float]:
    """Per series, the sum of the bars a stacked chart drew."""
    totals: dict[str, float] = {}
    for rect in root.by_id(chart_id).find_all("rect"):
        if "data-series" in rect.attrs:
            series = rect.attrs["data-series"]
            totals[series] = totals.get(series, 0) + float(rect.attrs["data-value"])
    return totals


# -- charts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [
        (0, 1),
        (-5, 1),
        (1, 1),
        (3, 3),
        (7, 8),
        (9.5, 10),
        (118, 150),
        (120, 150),
        (201, 250),
        (0.7, 0.8),
        (1000, 1000),
        (float("nan"), 1),
    ],
)
def test_the_axis_ends_at_a_round_number(value: float, ceiling: float) -> None:
    assert nice_ceiling(value) == pytest.approx(ceiling)


@pytest.mark.parametrize(
    ("value", "text"), [(0, "0"), (12.0, "12"), (2.5, "2.5"), (9.8, "9.8"), (0.12345, "0.123")]
)
def test_numbers_are_written_short(value: float, text: str) -> None:
    assert number(value) == text


def test_stacked_bars_draw_each_value_at_its_height() -> None:
    svg = stacked_bars(
        "c",
        ["a", "b", "c"],
        [Series("ok", "#00ff00", (3, 0, 6)), Series("bad", "#ff0000", (1, 2, 0))],
        height=224,  # a plot 190 px high
    )
    rects = parse(svg).find_all("rect")
    drawn = [(r.attrs["data-series"], r.attrs["data-bar"], r.attrs["data-value"]) for r in rects]
    assert drawn == [("ok", "0", "3"), ("bad", "0", "1"), ("bad", "1", "2"), ("ok", "2", "6")]
    [chart] = parse(svg).find_all("svg")
    assert chart.attrs["data-max"] == "6"
    heights = {
        (r.attrs["data-series"], r.attrs["data-bar"]): float(r.attrs["height"]) for r in rects
    }
    assert heights["ok", "2"] == pytest.approx(190)
    assert heights["ok", "0"] == pytest.approx(95)
    assert heights["bad", "1"] == pytest.approx(190 / 3, abs=0.01)
    assert "nothing in this window" not in svg


def test_an_empty_window_says_so_and_mismatched_series_are_refused() -> None:
    assert "nothing in this window" in stacked_bars("c", ["a"], [Series("ok", "#0f0", (0,))])
    with pytest.raises(ValueError, match="2 values for 1 bars"):
        stacked_bars("c", ["a"], [Series("ok", "#0f0", (1, 2))])


def test_horizontal_bars_are_as_long_as_their_share_of_the_largest() -> None:
    svg = horizontal_bars("q", [("a", 50, "#111"), ("b", 100, "#222"), ("c", 0, "#333")], width=500)
    groups = {g.attrs["data-label"]: g for g in parse(svg).find_all("g")}
    assert {k: g.attrs["data-value"] for k, g in groups.items()} == {
        "a": "50",
        "b": "100",
        "c": "0",
    }
    widths = {
        k: [float(r.attrs["width"]) for r in g.find_all("rect", **{"class": "bar"})]
        for k, g in groups.items()
    }
    assert widths["b"] == [pytest.approx(500 - 90 - 70)]
    assert widths["a"] == [pytest.approx((500 - 90 - 70) / 2)]
    assert widths["c"] == []


@pytest.mark.parametrize(
    ("value", "maximum", "filled"), [(5, 10, 120.0), (20, 10, 240.0), (1, 0, 0.0), (-1, 10, 0.0)]
)
def test_a_meter_fills_its_share_and_no_more(value: float, maximum: float, filled: float) -> None:
    rects = parse(meter(value, maximum, "#0f0")).find_all("rect")
    assert float(rects[1].attrs["width"]) == filled


# -- values ---------------------------------------------------------------------------------


def test_fold_buckets_counts_by_state_and_error_type_and_clamps_the_edges() -> None:
    rows = [
        (0, "succeeded", None, 4),
        (2, "failed", "validation", 1),
        (2, "invalid", None, 2),
        (7, "failed", "timeout", 5),  # a clock ahead of ours: the last bucket
        (-1, "cancelled", None, 1),  # behind: the first
    ]
    by_state, by_type = fold_buckets(rows, 3)
    assert by_state == {
        "succeeded": (4, 0, 0),
        "failed": (0, 0, 6),
        "invalid": (0, 0, 2),
        "cancelled": (1, 0, 0),
    }
    assert by_type == {"timeout": (0, 0, 5), "unknown": (0, 0, 2), "validation": (0, 0, 1)}


def test_a_paused_budget_counts_the_seconds_left() -> None:
    rows = [
        {"token_key": "sha256:a", "budget": 10, "rate": 5, "throttled": 2, "paused_until": 0},
        {
            "token_key": "sha256:b",
            "budget": 10,
            "rate": 10,
            "throttled": 0,
            "paused_until": NOW.timestamp() + 12,
        },
    ]
    assert budgets_from(rows, NOW) == (
        Budget("sha256:a", 10.0, 5.0, 2, 0.0),
        Budget("sha256:b", 10.0, 10.0, 0, 12.0),
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (-4, "0 s"), (95, "95 s"), (130, "2 min"), (7300, "2 h 1 min"), (2e5, "2 d 7 h")],
)
def test_ages_read_like_a_person_would_say_them(seconds: float, text: str) -> None:
    assert age(seconds) == text


# -- masking and escaping -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Bearer {TOKEN} rejected", f"Bearer {REDACTED} rejected"),
        ('{"token": "tok-8d1f/9e\\"ab-SECRET"}', f'{{"token": "{REDACTED}"}}'),
        ('{"token": "tok-8d1f\\/9e\\"ab-SECRET"}', f'{{"token": "{REDACTED}"}}'),
        (f"{TOKEN}{TOKEN}", REDACTED * 2),
        ("nothing to hide", "nothing to hide"),
    ],
)
def test_the_token_is_masked_raw_and_json_escaped(text: str, expected: str) -> None:
    assert masker([TOKEN, ""])(text) == expected


HOSTILE_PLACES = {
    "message": {"failures": (failure(1, f"{HOSTILE} {TOKEN}"),)},
    "field": {"failures": (failure(1, "x", error_field=f"{HOSTILE}{TOKEN}"),)},
    "source_ref": {"failures": (failure(1, "x", source_ref=f"{HOSTILE}{TOKEN}"),)},
    "kind": {"failures": (failure(1, "x", kind=f"{HOSTILE}{TOKEN}", state="invalid"),)},
    "workspace": {"failures": (failure(1, "x", workspace_id=f"{HOSTILE}{TOKEN}"),)},
    "worker": {
        "workers": (WorkerInfo(f"{HOSTILE}{TOKEN}", f"{TOKEN}.host", 1, "serve", NOW, NOW),)
    },
    "activity": {"activity": f"{HOSTILE}{TOKEN}"},
    "error_type": {
        "failures": (failure(1, "x", error_type=f"{HOSTILE}{TOKEN}"),),
        "throughput": replace(flow(), failures_by_type={f"{HOSTILE}{TOKEN}": (1,) * 60}),
    },
    "budget": {"budgets": (Budget(f"{HOSTILE}{TOKEN}", 10, 10, 0, 0),)},
}


@pytest.mark.parametrize("place", sorted(HOSTILE_PLACES))
def test_database_text_is_escaped_and_the_token_masked_wherever_it_shows(place: str) -> None:
    page = render_status_page(status_data(**HOSTILE_PLACES[place]), secrets=[TOKEN])
    assert TOKEN not in page
    assert "tok-8d1f" not in page
    assert "<script" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold" in page
    assert REDACTED in page
    # What a browser shows: the hostile text as text, with the token masked.
    assert HOSTILE in parse(page).all_text()


def test_the_page_is_self_contained() -> None:
    page = render_status_page(status_data(), secrets=[TOKEN])
    assert "<script" not in page.lower()
    assert not re.search(r"\s(src|srcset|action|formaction)=", page)
    external = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert external <= {"http://www.w3.org/2000/svg"}  # the SVG namespace, never fetched
    links = {a.attrs["href"] for a in parse(page).find_all("a")}
    assert links == {"/metrics", "/healthz", "/readyz"}


def test_the_page_shows_the_numbers_it_was_given() -> None:
    data = status_data()
    root = parse(render_status_page(data))
    queue = {g.attrs["data-label"]: int(g.attrs["data-value"]) for g in root.find_all("g")}
    assert queue == dict(data.counts)
    assert "Queue: 9 waiting" in root.by_id("queue").all_text()
    assert "oldest pending change: 95 s old" in root.by_id("oldest").all_text()
    assert values_of(root, "throughput-chart") == {"succeeded": 120, "failed": 3}
    totals = {
        li.attrs["data-series"]: int(li.attrs["data-total"])
        for li in root.by_id("throughput").find_all("li")
    }
    assert totals == {"succeeded": 120, "failed": 3, "invalid": 0, "cancelled": 0}
    assert values_of(root, "failures-by-type-chart") == {"validation": 3}
    [row] = root.by_id("latest-failures").find_all("tr", data_change_id="1")
    assert "Please give your project a title" in row.all_text()
    [worker] = root.by_id("workers").find_all("tr", data_worker="worker-a")
    assert "host-1" in worker.all_text() and "0 s ago" in worker.all_text()
    [budget] = root.by_id("budgets").find_all("tr", data_token="sha256:abc")
    assert (budget.attrs["data-rate"], budget.attrs["data-budget"]) == ("4.9", "9.8")
    assert "this daemon: idle" in root.all_text()


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"failures": ()}, "No failed or invalid change."),
        ({"workers": ()}, "No live worker."),
        ({"workers": (), "dead_workers": 2}, "2 registered worker(s) stopped heartbeating."),
        ({"budgets": ()}, "No shared rate budget yet"),
        ({"oldest_pending_age": None}, "no pending change"),
        ({"throughput": flow()}, "nothing in this window"),
        ({"throughput": flow()}, "No failures."),
    ],
)
def test_an_empty_part_says_so(overrides: dict[str, object], says: str) -> None:
    assert says in parse(render_status_page(status_data(**overrides))).all_text()


def test_the_error_page_masks_and_escapes_the_problem() -> None:
    page = render_error_page(f"could not connect: {HOSTILE} {TOKEN}", secrets=[TOKEN])
    assert TOKEN not in page and "<script" not in page
    assert f"could not connect: {HOSTILE} {REDACTED}" in parse(page).all_text()


def test_the_report_has_the_same_charts_and_a_row_per_change() -> None:
    summary = ReportSummary(
        generated_at=NOW,
        counts={"succeeded": 2, "failed": 1},
        outcomes=(("failed", None, 1), ("succeeded", "applied", 2)),
        throughput=replace(flow(24, succeeded={23: 2}, failed={22: 1}), bucket_seconds=3600),
        scope="state: failed, succeeded",
    )
    rows = [
        {"id": 1, "state": "succeeded", "outcome": "applied", "created_at": NOW},
        {"id": 2, "state": "failed", "error_message": f"{HOSTILE} {TOKEN}", "source_ref": "r"},
        {"id": 3, "state": "succeeded", "outcome": "applied"},
    ]
    page = render_report_html(summary, rows, secrets=[TOKEN])
    root = parse(page)
    assert TOKEN not in page and "<script" not in page
    assert [
        r.attrs["data-change-id"] for r in root.find_all("tr") if "data-change-id" in r.attrs
    ] == [
        "1",
        "2",
        "3",
    ]
    assert f"{HOSTILE} {REDACTED}" in root.all_text()
    assert "2026-12-04 10:30:15 UTC" in root.all_text()
    assert values_of(root, "throughput-chart") == {"succeeded": 2, "failed": 1}
    queue = {g.attrs["data-label"]: int(g.attrs["data-value"]) for g in root.find_all("g")}
    assert queue["succeeded"] == 2 and queue["failed"] == 1 and queue["pending"] == 0
    assert "Finished in the last 24 h 0 min, per hour" in root.all_text()
    assert "state: failed, succeeded" in root.all_text()


@pytest.mark.parametrize(
    ("start", "width", "buckets", "ticks"),
    [
        (datetime(2026, 12, 4, 9, 31, tzinfo=UTC), 60, 60, [9, 19, 29, 39, 49, 59]),
        (datetime(2026, 12, 4, 9, 40, tzinfo=UTC), 60, 60, [0, 10, 20, 30, 40, 50]),
        (datetime(2026, 12, 3, 10, 0, tzinfo=UTC), 3600, 24, [2, 6, 10, 14, 18, 22]),
        (datetime(2026, 12, 4, 10, 0, tzinfo=UTC), 60, 3, [0, 1, 2]),
    ],
)
def test_the_time_axis_labels_round_times(
    start: datetime, width: int, buckets: int, ticks: list[int]
) -> None:
    states = {s: (0,) * buckets for s in FINAL_STATES}
    assert round_ticks(Throughput(start, width, states, {})) == ticks


def test_a_learned_budget_is_shown_against_what_was_learned() -> None:
    rows = [
        {
            "token_key": "sha256:c/write",
            "budget": 250,
            "rate": 36.5,
            "throttled": 2,
            "paused_until": 0,
            "auto": True,
            "good": 36.5,
        },
        {
            "token_key": "sha256:c/read",
            "budget": 250,
            "rate": 1.5,
            "throttled": 0,
            "paused_until": 0,
            "auto": True,
            "good": 0,
        },
    ]
    budgets = budgets_from(rows, NOW)
    assert [b.learned for b in budgets] == [36.5, 0.0]
    root = parse(render_status_page(status_data(budgets=budgets)))
    write, read = root.by_id("budgets").find_all("tr")[1:]
    assert "learned 36.5/s (ceiling 250/s)" in write.all_text()
    assert write.find_all("svg")[0].attrs["data-max"] == "36.5"
    assert "learning (ceiling 250/s)" in read.all_text()
