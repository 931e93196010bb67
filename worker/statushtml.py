"""The status page and the HTML report, drawn from values (:mod:`worker.statusdata`).

Pure functions: values in, one self-contained HTML document out. Inline CSS and SVG charts
(:mod:`worker.charts`), no script, no font, image or style from anywhere else; the listener
adds a Content-Security-Policy that would block them anyway. Every text that comes from the
database (Kantata's messages, producers' references, worker names) is masked, then
HTML-escaped: each secret passed in (the API token), in the forms a JSON encoder may have
escaped it to, becomes ``[REDACTED]`` first.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any

from .charts import Series, horizontal_bars, legend, meter, number, stacked_bars
from .logging import REDACTED
from .render import REPORT_COLUMNS
from .statusdata import ReportSummary, StatusData, Throughput

STATE_COLORS = {
    "pending": "#4e79a7",
    "in_flight": "#f28e2b",
    "succeeded": "#59a14f",
    "failed": "#e15759",
    "invalid": "#b07aa1",
    "cancelled": "#9c9c9c",
}
ERROR_COLORS = {
    "validation": "#ff9d9a",
    "oauth": "#ff9da7",
    "system": "#9c755f",
    "timeout": "#edc948",
    "connection": "#f28e2b",
    "rate_limited": "#76b7b2",
    "too_large": "#4e79a7",
    "invalid": "#b07aa1",
    "interrupted": "#bab0ac",
    "internal": "#3b3b3b",
}
OTHER_COLOR = "#8cd17d"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""For the listener: inline styles only; no script, nothing loaded from anywhere."""

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2937;
margin:0;background:#f7f8fa}
main{max-width:1100px;margin:0 auto;padding:16px 24px 40px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:16px;margin:0 0 8px}
.meta{color:#6b7280;margin:0 0 16px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:14px 16px;
margin:0 0 16px}
.row{display:flex;gap:16px;flex-wrap:wrap}.row>section{flex:1 1 420px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}
th{color:#6b7280;font-weight:600}td.msg{white-space:pre-wrap;word-break:break-word}
td.num,th.num{text-align:right}
.legend{list-style:none;padding:0;margin:6px 0 0;display:flex;gap:14px;flex-wrap:wrap}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px}
svg.chart{display:block;width:100%;height:auto}svg.hbars{max-width:640px}
svg text{font:11px system-ui,sans-serif;fill:#374151}svg text.empty{fill:#9ca3af}
.none{color:#6b7280}.bad{color:#b91c1c}
"""


def masker(secrets: Iterable[str]) -> Callable[[str], str]:
    """A function that replaces each secret in a text, raw or JSON-escaped, by REDACTED."""
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            escaped = json.dumps(secret)[1:-1]
            forms.update({secret, escaped, escaped.replace("/", "\\/")})
    ordered = sorted(forms, key=len, reverse=True)

    def mask(text: str) -> str:
        for form in ordered:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    return mask


class _Page:
    """The text helpers of one document: every value masked, then escaped."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.mask = masker(secrets)

    def t(self, value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, datetime):
            value = when(value)
        elif isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        return escape(self.mask(str(value)), quote=True)


def when(moment: datetime) -> str:
    """``2026-12-04 10:03:07 UTC``."""
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def age(seconds: float) -> str:
    """``42 s``, ``7 min``, ``3 h 5 min``, ``2 d 4 h``."""
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _head(title: str, p: _Page) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{p.t(title)}</title><style>{STYLE}</style></head><body><main>"
    )


def _queue(counts: Mapping[str, int]) -> str:
    items = [(state, float(counts.get(state, 0)), STATE_COLORS[state]) for state in STATE_COLORS]
    return horizontal_bars("queue-chart", items)


def round_ticks(flow: Throughput, count: int = 6) -> list[int]:
    """The bars to label: those that start a round period (10 minutes of minutes, 4 hours of
    hours), about ``count`` of them."""
    width = flow.bucket_seconds
    step = max(flow.buckets // count, 1)
    for candidate in (1, 2, 4, 5, 6, 10, 12, 15, 20, 30, 60):
        if candidate >= step:
            step = candidate
            break
    first = int(flow.start.timestamp()) // width
    return [i for i in range(flow.buckets) if (first + i) % step == 0]


def _flow_charts(flow: Throughput, what: str, p: _Page) -> str:
    labels = [flow.bucket_start(i).strftime("%H:%M") for i in range(flow.buckets)]
    if flow.bucket_seconds >= 86400:
        labels = [flow.bucket_start(i).strftime("%m-%d") for i in range(flow.buckets)]
    ticks = round_ticks(flow)
    states = [
        Series(state, STATE_COLORS[state], tuple(float(v) for v in values))
        for state, values in flow.by_state.items()
    ]
    errors = [
        Series(p.mask(kind), ERROR_COLORS.get(kind, OTHER_COLOR), tuple(float(v) for v in values))
        for kind, values in flow.failures_by_type.items()
    ]
    per = {60: "minute", 3600: "hour", 86400: "day"}.get(flow.bucket_seconds)
    per = per or age(flow.bucket_seconds)
    since = when(flow.start)
    return (
        f'<section id="throughput"><h2>Finished {what}, per {per}</h2>'
        f"{stacked_bars('throughput-chart', labels, states, ticks=ticks, unit='changes')}"
        f"{legend(states)}</section>"
        f'<section id="failures-chart"><h2>Failures {what}, by error type</h2>'
        f"{stacked_bars('failures-by-type-chart', labels, errors, ticks=ticks)}"
        f"{legend(errors) if errors else '<p class=none>No failures.</p>'}</section>"
        f'<p class="meta">Charts count changes by the time they reached their final state, '
        f"from {escape(since)}; times in UTC.</p>"
    )


def _failures(data: StatusData, p: _Page) -> str:
    if not data.failures:
        return '<p class="none">No failed or invalid change.</p>'
    head = (
        "<tr><th>change</th><th>finished</th><th>workspace</th><th>kind</th><th>state</th>"
        "<th class=num>HTTP</th><th>error</th><th>field</th><th>message</th>"
        "<th>source_ref</th></tr>"
    )
    rows = "".join(
        f'<tr data-change-id="{f.id}"><td class=num>{f.id}</td><td>{p.t(f.completed_at)}</td>'
        f"<td>{p.t(f.workspace_id)}</td><td>{p.t(f.kind)}</td><td>{p.t(f.state)}</td>"
        f"<td class=num>{p.t(f.http_status)}</td><td>{p.t(f.error_type)}</td>"
        f"<td>{p.t(f.error_field)}</td><td class=msg>{p.t(f.error_message)}</td>"
        f"<td>{p.t(f.source_ref)}</td></tr>"
        for f in data.failures
    )
    return f"<table>{head}{rows}</table>"


def _workers(data: StatusData, p: _Page) -> str:
    dead = (
        f'<p class="meta">{data.dead_workers} registered worker(s) stopped heartbeating.</p>'
        if data.dead_workers
        else ""
    )
    if not data.workers:
        return f'<p class="none">No live worker.</p>{dead}'
    rows = "".join(
        f'<tr data-worker="{p.t(w.name)}"><td>{p.t(w.name)}</td><td>{p.t(w.command)}</td>'
        f"<td>{p.t(w.host)}</td><td class=num>{w.pid}</td><td>{p.t(w.started_at)}</td>"
        f"<td>{escape(age((data.generated_at - w.heartbeat_at).total_seconds()))} ago</td></tr>"
        for w in data.workers
    )
    return (
        "<table><tr><th>worker</th><th>command</th><th>host</th><th class=num>pid</th>"
        f"<th>started</th><th>last heartbeat</th></tr>{rows}</table>{dead}"
    )


def _budgets(data: StatusData, p: _Page) -> str:
    if not data.budgets:
        return '<p class="none">No shared rate budget yet (no worker has sent a request).</p>'
    rows = []
    for b in data.budgets:
        paused = f"paused for {age(b.paused_for)}" if b.paused_for > 0 else ""
        if b.learned is not None:
            # A learned budget is healthy at its learned rate, far below its ceiling.
            known = f"learned {b.learned:.3g}/s" if b.learned else "learning"
            paused = f"{known} (ceiling {b.budget:.3g}/s)" + (f"; {paused}" if paused else "")
        full = b.learned if b.learned else b.budget
        color = STATE_COLORS["succeeded"] if b.rate >= full * 0.97 else "#edc948"
        rows.append(
            f'<tr data-token="{p.t(b.token)}" data-rate="{number(round(b.rate, 3))}" '
            f'data-budget="{number(round(b.budget, 3))}"><td><code>{p.t(b.token)}</code></td>'
            f"<td>{meter(b.rate, full, color, label=f'{b.rate:.3g}/s of {full:.3g}/s')}"
            f"</td><td class=num>{b.rate:.3g}/s of {b.budget:.3g}/s</td>"
            f"<td class=num>{b.throttled}</td><td>{escape(paused)}</td></tr>"
        )
    return (
        "<table><tr><th>token (fingerprint)</th><th>rate in use</th><th class=num>rate</th>"
        f"<th class=num>429s</th><th></th></tr>{''.join(rows)}</table>"
    )


def render_status_page(data: StatusData, *, secrets: Sequence[str] = ()) -> str:
    """The status page ``serve`` answers on ``GET /``."""
    p = _Page(secrets)
    activity = f" · this daemon: {p.t(data.activity)}" if data.activity else ""
    oldest = (
        f"oldest pending change: {age(data.oldest_pending_age)} old"
        if data.oldest_pending_age is not None
        else "no pending change"
    )
    waiting = data.counts.get("pending", 0) + data.counts.get("in_flight", 0)
    return (
        _head("kantata-sync status", p)
        + f"<h1>kantata-sync</h1><p class=meta>version {p.t(data.version)} · "
        f"{p.t(data.generated_at)}{activity}</p>"
        f'<section id="queue"><h2>Queue: {waiting} waiting</h2>{_queue(data.counts)}'
        f'<p class="meta" id="oldest">{escape(oldest)}</p></section>'
        + _flow_charts(data.throughput, "in the last hour", p)
        + f'<section id="latest-failures"><h2>Latest failures</h2>{_failures(data, p)}</section>'
        f'<div class="row"><section id="workers"><h2>Live workers</h2>{_workers(data, p)}'
        f'</section><section id="budgets"><h2>Rate budget</h2>{_budgets(data, p)}</section>'
        "</div><p class=meta>Read-only; reload for fresh numbers. "
        '<a href="/metrics">/metrics</a> · <a href="/healthz">/healthz</a> · '
        '<a href="/readyz">/readyz</a></p></main></body></html>\n'
    )


def render_error_page(problem: str, *, secrets: Sequence[str] = ()) -> str:
    """What ``GET /`` shows when the database cannot be read."""
    p = _Page(secrets)
    return (
        _head("kantata-sync status", p)
        + "<h1>kantata-sync</h1><section><h2 class=bad>The database cannot be read</h2>"
        f"<p>{p.t(problem)}</p></section></main></body></html>\n"
    )


def iter_report_html(
    summary: ReportSummary, rows: Iterable[Mapping[str, Any]], *, secrets: Sequence[str] = ()
) -> Iterator[str]:
    """A self-contained HTML reconciliation report, in pieces: the head with the charts and
    the counts per state and outcome, then one table row per change of ``rows`` (as
    ``OutboxQueries.report`` yields them), then the end. For ``report --format html``."""
    p = _Page(secrets)
    outcome_rows = "".join(
        f"<tr><td>{p.t(state)}</td><td>{p.t(outcome)}</td><td class=num>{n}</td></tr>"
        for state, outcome, n in summary.outcomes
    )
    window = age(summary.throughput.bucket_seconds * summary.throughput.buckets)
    yield (
        _head(summary.title, p)
        + f"<h1>{p.t(summary.title)}</h1><p class=meta>{p.t(summary.scope)} · "
        f"{p.t(summary.generated_at)} · kantata-sync {p.t(summary.version)}</p>"
        f'<div class="row"><section id="queue"><h2>Changes by state</h2>'
        f"{_queue(summary.counts)}</section>"
        '<section id="outcomes"><h2>By state and outcome</h2><table><tr><th>state</th>'
        f"<th>outcome</th><th class=num>count</th></tr>{outcome_rows}</table></section></div>"
        + _flow_charts(summary.throughput, f"in the last {window}", p)
        + '<section id="changes"><h2>Changes</h2><table><tr>'
        + "".join(f"<th>{c}</th>" for c in REPORT_COLUMNS)
        + "</tr>"
    )
    for row in rows:
        cells = "".join(
            f"<td class=msg>{p.t(row.get(c))}</td>"
            if c == "error_message"
            else f"<td>{p.t(row.get(c))}</td>"
            for c in REPORT_COLUMNS
        )
        yield f'<tr data-change-id="{p.t(row.get("id"))}">{cells}</tr>'
    yield "</table></section></main></body></html>\n"


def render_report_html(
    summary: ReportSummary, rows: Iterable[Mapping[str, Any]], *, secrets: Sequence[str] = ()
) -> str:
    """:func:`iter_report_html` as one string."""
    return "".join(iter_report_html(summary, rows, secrets=secrets))
