"""The HTML page of a ``fleet capacity`` report: the answer, the knee chart (latency percentiles
against offered rate, capacity and knee marked, the p99 limit drawn), offered against achieved
rate per step, and every step's numbers. Inline SVG, no scripts or external assets, every value
from the report escaped (as ``fleet.report``)."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fleet.report import STYLE, fmt_rate, fmt_seconds

__all__ = ["is_capacity_report", "render_capacity_html", "xy_chart"]


def is_capacity_report(path: Path) -> dict[str, Any] | None:
    """The document when ``path`` holds a ``fleet capacity`` report, else None (a run report,
    or something ``fleet.report.load_report`` will name the problem of)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("fleet_capacity") == 1 and isinstance(data.get("steps"), list) else None

_COLORS = ("#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd")
_W, _H = 760, 300
_L, _R, _T, _B = 72, 20, 36, 40


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    span = hi - lo if hi > lo else (abs(hi) or 1.0)
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(math.ceil((hi - start) / step) + 1)]


def xy_chart(series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *, x_label: str, y_label: str,
             x_format: Callable[[float], str], y_format: Callable[[float], str], chart: str,
             marks: Sequence[tuple[float, str]] = (), levels: Sequence[tuple[float, str]] = (),
             log_y: bool = False) -> str:
    """Points joined by lines over a numeric x axis; ``marks`` are labelled vertical lines
    (capacity, knee), ``levels`` labelled horizontal ones (an SLO limit)."""
    points = [(x, y) for _, pts in series for x, y in pts if math.isfinite(x) and math.isfinite(y)]
    if not points:
        return '<p class="empty">no data</p>'
    xs = [x for x, _ in points] + [x for x, _ in marks]
    ys = [y for _, y in points] + [y for y, _ in levels]
    x_ticks = _ticks(0.0, max(xs))
    if log_y:
        low = min(y for y in ys if y > 0) if any(y > 0 for y in ys) else 1e-3
        lo_exp, hi_exp = math.floor(math.log10(low)), math.ceil(math.log10(max(ys) or 1.0))
        hi_exp = max(hi_exp, lo_exp + 1)
        y_ticks = [10.0 ** e for e in range(lo_exp, hi_exp + 1)]

        def fy(v: float) -> float:
            v = max(v, y_ticks[0])
            return (math.log10(v) - lo_exp) / (hi_exp - lo_exp)
    else:
        y_ticks = _ticks(0.0, max(ys))

        def fy(v: float) -> float:
            return v / y_ticks[-1]
    pw, ph = _W - _L - _R, _H - _T - _B

    def px(x: float) -> float:
        return _L + x / x_ticks[-1] * pw

    def py(y: float) -> float:
        return _T + ph - fy(y) * ph

    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
              f'role="img" class="chart" data-chart="{_e(chart)}">'),
             f'<rect class="plot-area" x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>']
    for t in y_ticks:
        parts.append(f'<line class="grid" x1="{_L}" x2="{_W - _R}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>'
                     f'<text x="{_L - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_e(y_format(t))}</text>')
    for t in x_ticks:
        parts.append(f'<text x="{px(t):.1f}" y="{_H - _B + 16}" text-anchor="middle">{_e(x_format(t))}</text>')
    parts.append(f'<text x="{_L + pw / 2:.0f}" y="{_H - 6}" text-anchor="middle">{_e(x_label)}</text>'
                 f'<text x="14" y="{_T + ph / 2:.0f}" transform="rotate(-90 14 {_T + ph / 2:.0f})" '
                 f'text-anchor="middle">{_e(y_label)}</text>')
    for y, label in levels:
        parts.append(f'<g class="level"><line x1="{_L}" x2="{_W - _R}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
                     f'stroke="#999" stroke-dasharray="6 4"/><text x="{_W - _R - 4}" y="{py(y) - 4:.1f}" '
                     f'text-anchor="end">{_e(label)}</text></g>')
    for x, label in marks:
        parts.append(f'<g class="mark"><line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{_T}" y2="{_T + ph}" '
                     f'stroke="#2ca02c" stroke-width="2"/><text x="{px(x) + 4:.1f}" y="{_T + 12}">{_e(label)}</text></g>')
    for i, (name, pts) in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(pts) if math.isfinite(x) and math.isfinite(y))
        if coords:
            parts.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>')
            for x, y in pts:
                parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}">'
                             f'<title>{_e(name)} at {_e(x_format(x))}: {_e(y_format(y))}</title></circle>')
        parts.append(f'<g class="legend-entry"><line x1="{_L + i * 150}" x2="{_L + i * 150 + 12}" y1="14" y2="14" '
                     f'stroke="{color}" stroke-width="3"/><text x="{_L + i * 150 + 16}" y="18">{_e(name)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _p(op_stats: dict[str, Any], key: str) -> float | None:
    value = (op_stats.get("latency_seconds") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def render_capacity_html(doc: dict[str, Any]) -> str:
    found = doc.get("answer") or {}
    flow = doc.get("flow") or ["ir"]
    first = flow[0]
    steps = doc.get("steps") or []
    capacity, knee = found.get("capacity"), found.get("knee")
    low, high = (found.get("interval") or [None, None])[:2]
    title = f"fleet capacity report: {doc.get('profile', '?')}"
    ok = doc.get("require_met") is not False and capacity is not None
    head = (f"capacity {fmt_rate(capacity)}" if capacity is not None else "no rate held") + (
        f", the limit lies in [{fmt_rate(low)}, {fmt_rate(high)})" if low is not None and high is not None else "")
    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">", f"<title>{_e(title)}</title>", STYLE,
           f"<h1>{_e(title)}</h1>", f'<p class="verdict {"pass" if ok else "fail"}">{_e(head)}</p><ul>']
    if knee is not None:
        out.append(f"<li>knee at {_e(fmt_rate(knee))}: {_e(found.get('knee_note', ''))}</li>")
    if found.get("caveat"):
        out.append(f"<li>{_e(found['caveat'])}</li>")
    if found.get("first_break"):
        fb = found["first_break"]
        out.append(f"<li>first to break at {_e(fmt_rate(fb['rate']))}: {_e(fb.get('why', ''))}</li>")
    if doc.get("require") is not None:
        out.append(f"<li>required {_e(fmt_rate(doc['require']))}: {'met' if doc.get('require_met') else 'NOT met'}</li>")
    out.append(f"<li>search stopped: {_e(found.get('stop_reason', ''))}; {len(steps)} steps of "
               f"{_e(doc.get('search', {}).get('step_seconds'))} s (warm-up {_e(doc.get('search', {}).get('warmup_seconds'))} s "
               f"left out) against {_e(doc.get('server', '?'))}{_shards_note(doc)}</li></ul>")
    latency: dict[str, list[tuple[float, float]]] = {"p50": [], "p90": [], "p99": []}
    achieved: list[tuple[float, float]] = []
    offered: list[tuple[float, float]] = []
    rows = []
    for step in steps:
        a = step.get("assessment") or {}
        results = (step.get("report") or {}).get("results") or {}
        steady = results.get("steady") or results
        stats = (steady.get("operations") or {}).get(first) or {}
        rate = float(a.get("rate") or 0)
        for key, pts in latency.items():
            value = _p(stats, key)
            if value is not None:
                pts.append((rate, value))
        achieved.append((rate, float(a.get("achieved_rate") or 0)))
        offered.append((rate, rate))
        rows.append((rate, a, stats, steady))
    marks = [(float(capacity), f"capacity {fmt_rate(capacity)}")] if capacity is not None else []
    if knee is not None and knee != capacity:
        marks.append((float(knee), f"knee {fmt_rate(knee)}"))
    limit = ((doc.get("slo") or {}).get("p99_seconds") or {}).get(first)
    levels = [(float(limit), f"p99 limit {fmt_seconds(float(limit))}")] if limit else []
    out.append(f"<h2>Latency against offered rate (the knee chart, {_e(first)}, steady windows)</h2>")
    out.append(xy_chart([(k, v) for k, v in latency.items()], x_label="offered rate", y_label="latency (log scale)",
                        x_format=fmt_rate, y_format=fmt_seconds, chart="knee", marks=marks, levels=levels, log_y=True))
    out.append("<h2>Offered vs achieved rate per step</h2>")
    out.append(xy_chart([("offered", offered), (f"achieved ({first} ok)", achieved)], x_label="offered rate",
                        y_label="rate", x_format=fmt_rate, y_format=fmt_rate, chart="offered-achieved", marks=marks))
    out.append("<h2>Steps</h2><style>td{white-space:nowrap}</style><table><tr><th>#</th><th>offered</th><th>achieved</th><th>p50</th><th>p99</th>"
               "<th>errors</th><th>dropped</th><th>outcome</th></tr>")
    for n, (rate, a, stats, steady) in enumerate(rows, 1):
        p50, p99 = _p(stats, "p50"), _p(stats, "p99")
        errors = ", ".join(f"{k} {v}" for k, v in sorted((a.get("errors") or {}).items(), key=lambda kv: -kv[1]))
        outcome = "held" if a.get("passed") else "; ".join(a.get("reasons") or ["failed"])
        if a.get("client_limit"):
            outcome += f" (client-limited: {a['client_limit']})"
        out.append(f"<tr><td>{n}</td><td>{_e(fmt_rate(rate))}</td><td>{_e(fmt_rate(float(a.get('achieved_rate') or 0)))}</td>"
                   f"<td>{_e(fmt_seconds(p50) if p50 is not None else '–')}</td>"
                   f"<td>{_e(fmt_seconds(p99) if p99 is not None else '–')}</td><td>{_e(errors or '–')}</td>"
                   f"<td>{_e(steady.get('dropped', 0))}</td><td>{_e(outcome)}</td></tr>")
    out.append("</table><p class=\"note\">Each step offers one constant rate; its warm-up is measured apart and "
               "the rest checked for a steady state. Generated by fleet capacity.</p></body></html>")
    return "\n".join(out)


def _shards_note(doc: dict[str, Any]) -> str:
    """How many processes played each step, when more than one (``fleet capacity --shards``)."""
    shards = int(doc.get("search", {}).get("shards") or 1)
    return f", each step played in {shards} shards and merged" if shards > 1 else ""
