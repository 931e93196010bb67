"""Charts as inline SVG, drawn on the server: no JavaScript, no fonts or styles fetched.

Pure functions from numbers to markup, for the status page and the HTML report
(:mod:`worker.statuspage`). Every mark carries its number in ``data-*`` attributes and a
``<title>`` (the browser's tooltip), so that a reader, a screen reader or a test can read back
what was drawn. Labels are escaped here; callers pass plain text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

AXIS = "#6b7280"
GRID = "#e5e7eb"
TRACK = "#eef0f3"


@dataclass(frozen=True, slots=True)
class Series:
    """One stack of a bar chart: a name, its colour and a value per bar."""

    name: str
    color: str
    values: tuple[float, ...]

    @property
    def total(self) -> float:
        return sum(self.values)


def nice_ceiling(value: float) -> float:
    """The smallest round number (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten) at or
    above ``value``; 1 for 0 or less."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        candidate = step * 10.0**exponent
        if candidate >= value * (1 - 1e-12):
            return float(candidate)
    return 10.0 ** (exponent + 1)  # pragma: no cover - the loop always returns


def number(value: float) -> str:
    """``12``, ``2.5``, ``0.25``: integers without a decimal point, others to 3 digits."""
    if not math.isfinite(value):
        return str(value)
    if value == int(value):
        return str(int(value))
    return f"{value:.3g}"


def _f(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def stacked_bars(
    chart_id: str,
    x_labels: Sequence[str],
    series: Sequence[Series],
    *,
    ticks: Sequence[int] | None = None,
    width: int = 1000,
    height: int = 180,
    unit: str = "",
) -> str:
    """A stacked bar chart: one bar per ``x_labels`` entry, ``series`` stacked bottom-up.

    Only the x labels of the bars in ``ticks`` (by default every tenth) are written on the axis;
    each bar's label is in its tooltip.
    """
    n = len(x_labels)
    for s in series:
        if len(s.values) != n:
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for {n} bars")
    left, right, top, bottom = 44, 28, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(s.values[i] for s in series) for i in range(n)]
    ymax = nice_ceiling(max(totals, default=0))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(chart_id)}" data-max="{number(ymax)}">'
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_h - fraction * plot_h
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{_f(y)}" y2="{_f(y)}" '
            f'stroke="{GRID if fraction else AXIS}" stroke-width="1"/>'
            f'<text x="{left - 6}" y="{_f(y + 4)}" text-anchor="end" class="tick">'
            f"{number(ymax * fraction)}</text>"
        )
    bar_w = plot_w / n if n else 0.0
    gap = min(1.0, bar_w / 4)
    for i in range(n):
        base = 0.0
        x = left + i * bar_w + gap / 2
        for s in series:
            value = s.values[i]
            if value <= 0:
                continue
            h = value / ymax * plot_h
            y = top + plot_h - base - h
            tip = f"{x_labels[i]}: {number(value)} {s.name}{(' ' + unit) if unit else ''}"
            parts.append(
                f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(max(bar_w - gap, 0.5))}" '
                f'height="{_f(h)}" fill="{escape(s.color)}" data-series="{escape(s.name)}" '
                f'data-bar="{i}" data-value="{number(value)}"><title>{escape(tip)}</title></rect>'
            )
            base += h
    for i in sorted(set(range(0, n, 10) if ticks is None else ticks)):
        if not 0 <= i < n:
            continue
        x = left + (i + 0.5) * bar_w
        parts.append(
            f'<text x="{_f(x)}" y="{height - 8}" text-anchor="middle" class="tick">'
            f"{escape(x_labels[i])}</text>"
        )
    if not any(totals):
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" '
            'text-anchor="middle" class="empty">nothing in this window</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def legend(series: Sequence[Series]) -> str:
    """The key of a chart, each series with its total."""
    items = "".join(
        f'<li data-series="{escape(s.name)}" data-total="{number(s.total)}">'
        f'<span class="swatch" style="background:{escape(s.color)}"></span>'
        f"{escape(s.name)} <b>{number(s.total)}</b></li>"
        for s in series
    )
    return f'<ul class="legend">{items}</ul>'


def horizontal_bars(
    chart_id: str,
    items: Sequence[tuple[str, float, str]],
    *,
    width: int = 520,
    row: int = 24,
    label_width: int = 90,
) -> str:
    """One labelled bar per ``(label, value, colour)``, lengths relative to the largest."""
    value_width = 70
    plot_w = width - label_width - value_width
    height = row * len(items) + 4
    vmax = max((v for _, v, _ in items), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart hbars" id="{escape(chart_id)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(chart_id)}">'
    ]
    for i, (label, value, color) in enumerate(items):
        y = 2 + i * row
        w = value / vmax * plot_w if value > 0 else 0.0
        parts.append(
            f'<g data-label="{escape(label)}" data-value="{number(value)}">'
            f'<text x="{label_width - 8}" y="{y + row * 0.65:.1f}" text-anchor="end">'
            f"{escape(label)}</text>"
            f'<rect x="{label_width}" y="{y + 3}" width="{plot_w}" height="{row - 8}" '
            f'fill="{TRACK}"/>'
        )
        if w > 0:
            parts.append(
                f'<rect x="{label_width}" y="{y + 3}" width="{_f(max(w, 1.0))}" '
                f'height="{row - 8}" fill="{escape(color)}" class="bar">'
                f"<title>{escape(label)}: {number(value)}</title></rect>"
            )
        parts.append(
            f'<text x="{label_width + plot_w + 8}" y="{y + row * 0.65:.1f}" class="value">'
            f"{number(value)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def meter(
    value: float, maximum: float, color: str, *, width: int = 240, height: int = 14, label: str = ""
) -> str:
    """A bar filled to ``value / maximum`` (capped at full)."""
    fraction = min(max(value / maximum, 0.0), 1.0) if maximum > 0 else 0.0
    tip = f"<title>{escape(label)}</title>" if label else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="meter" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}" data-value="{number(value)}" '
        f'data-max="{number(maximum)}">{tip}'
        f'<rect width="{width}" height="{height}" rx="3" fill="{TRACK}"/>'
        f'<rect width="{_f(fraction * width)}" height="{height}" rx="3" '
        f'fill="{escape(color)}"/></svg>'
    )
