"""``fleet report RUN.json --html report.html``: one self-contained page for people who ran
without Prometheus: the verdict, throughput over time, latency over time (when the report has
per-second latency buckets), the latency distribution and the numbers behind them.

Pure functions from the JSON report (``report_dict`` in ``fleet.load.orchestrator``) to HTML
text: charts are inline SVG, there are no scripts, fonts or external assets, and every value
taken from the report is escaped.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fleet.errors import FleetError
from fleet.files import atomic_write
from fleet.load.histogram import BUCKET_MIDPOINT_S, LatencyHistogram

__all__ = ["STYLE", "ReportError", "fmt_rate", "fmt_seconds", "line_chart", "load_report", "render_html", "write_html"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
_W, _H = 760, 240
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 68, 16, 16, 34  # left: tick labels, then the axis title


_STYLE = (
    "<style>body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:800px;color:#222}"
    "h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}"
    ".verdict{padding:.6em 1em;border-radius:4px;font-weight:600}.pass{background:#e3f6e3;color:#155d15}"
    ".fail{background:#fde4e4;color:#8a1414}.stopped{background:#fff1d6;color:#6b4a00}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f4f4f4}"
    "td:first-child,th:first-child{text-align:left}svg{font:11px system-ui,sans-serif;fill:#444}"
    "svg .grid{stroke:#e6e6e6}.empty{color:#888}.note{color:#666;font-size:.9em}</style></head><body>"
)


STYLE = _STYLE  # the pages' one stylesheet, shared with the capacity page


class ReportError(FleetError):
    """A run report that cannot be read or is not a fleet report."""


def load_report(path: Path) -> dict[str, Any]:
    """The JSON report ``fleet run --report`` wrote; a clear error for anything else."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ReportError(f"cannot read report {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"report {path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("fleet_report") != 1 or not isinstance(data.get("results"), dict):
        raise ReportError(f"{path} is not a fleet run report (fleet run --report writes one)")
    return data


def write_html(report: dict[str, Any], out: Path) -> None:
    atomic_write(out, render_html(report).encode())


# -- SVG ------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _nice_max(v: float) -> float:
    if v <= 0 or not math.isfinite(v):
        return 1.0
    exp = 10.0 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def _fmt_seconds(v: float) -> str:
    """Three significant figures in the unit that reads best: 3.16 s, 250 ms, 12.5 µs (never
    "3.16251 s" nor "0 µs")."""
    if v == 0:
        return "0"
    if v >= 1:
        return f"{v:.3g} s"
    if v >= 1e-3:
        return f"{v * 1e3:.3g} ms"
    if v >= 1e-6:
        return f"{v * 1e6:.3g} µs"
    return f"{v * 1e9:.3g} ns"


fmt_seconds = _fmt_seconds


def fmt_rate(v: float) -> str:
    """Rates per second: 950/s, 1.25k/s, 12.5/s."""
    if v == 0:
        return "0"
    if v >= 1000:
        return f"{v / 1000:.3g}k/s"
    return f"{v:.3g}/s"


_LEGEND_ROW = 16  # px per legend row
_CHAR_W = 6.6  # px: a generous average glyph width of the 11px sans-serif chart font


def _legend_layout(names: Sequence[str]) -> list[tuple[float, float]]:
    """(x, y) of each legend entry's swatch: rows left to right above the plot area, wrapped at
    the chart's width, so any number of series fits and none covers a line."""
    x, y, out = float(_PAD_L), float(_PAD_T), []
    right = _W - _PAD_R
    for name in names:
        width = 16 + len(name) * _CHAR_W
        if x > _PAD_L and x + width > right:
            x, y = float(_PAD_L), y + _LEGEND_ROW
        out.append((x, y))
        x += width + 18
    return out


def line_chart(series: Sequence[tuple[str, Sequence[float | None]]], *, x_label: str, y_label: str,
               y_format: Any = lambda v: f"{v:g}", chart: str = "") -> str:
    """Lines over x = 0, 1, 2... (seconds); None values leave gaps. The legend takes rows of
    its own above the plot area (the chart grows by as many rows as it needs)."""
    n = max((len(v) for _, v in series), default=0)
    values = [x for _, vs in series for x in vs if x is not None and math.isfinite(x)]
    if n == 0 or not values:
        return '<p class="empty">no data</p>'
    y_max = _nice_max(max(values))
    legend = _legend_layout([name for name, _ in series])
    top = legend[-1][1] + _LEGEND_ROW + 4  # the plot area starts below the last legend row
    height = top + _H - _PAD_T
    pw, ph = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B

    def px(i: float) -> float:
        return _PAD_L + (i / max(n - 1, 1)) * pw

    def py(v: float) -> float:
        return top + ph - (v / y_max) * ph

    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height:g}" width="{_W}" height="{height:g}" '
              f'role="img" class="chart" data-chart="{_e(chart)}">'),
             f'<rect class="plot-area" x="{_PAD_L}" y="{top:g}" width="{pw}" height="{ph}" fill="none" data-y-max="{y_max!r}"/>']
    for k in range(5):
        v = y_max * k / 4
        y = py(v)
        parts.append(f'<line x1="{_PAD_L}" y1="{y:.1f}" x2="{_W - _PAD_R}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(y_format(v))}</text>')
    step = max(1, round(n / 10))
    for i in range(0, n, step):
        parts.append(f'<text x="{px(i):.1f}" y="{height - _PAD_B + 16:g}" text-anchor="middle">{i}</text>')
    parts.append(f'<text x="{_PAD_L + pw / 2:.0f}" y="{height - 4:g}" text-anchor="middle">{_e(x_label)}</text>')
    parts.append(f'<text x="12" y="{top + ph / 2:.0f}" transform="rotate(-90 12 {top + ph / 2:.0f})" text-anchor="middle">{_e(y_label)}</text>')
    for idx, (name, vs) in enumerate(series):
        color = _COLORS[idx % len(_COLORS)]
        dash = ' stroke-dasharray="5 3"' if idx // len(_COLORS) % 2 else ""  # beyond 8 series: dashed
        segments: list[list[str]] = [[]]
        for i, value in enumerate(vs):
            if value is None or not math.isfinite(value):
                segments.append([])
            else:
                segments[-1].append(f"{px(i):.1f},{py(value):.1f}")
        for seg in segments:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"/>')
            elif seg:
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5"{dash} points="{" ".join(seg)}"/>')
    parts.append('<g class="legend">')
    for idx, ((name, _), (x, y)) in enumerate(zip(series, legend)):
        color = _COLORS[idx % len(_COLORS)]
        dash = ' stroke-dasharray="5 3"' if idx // len(_COLORS) % 2 else ""
        parts.append(f'<g class="legend-entry"><line x1="{x:g}" y1="{y + 5:g}" x2="{x + 12:g}" y2="{y + 5:g}" '
                     f'stroke="{color}" stroke-width="3"{dash}/><text x="{x + 16:g}" y="{y + 9:g}">{_e(name)}</text></g>')
    parts.append("</g></svg>")
    return "".join(parts)


def distribution_chart(hist: LatencyHistogram, bins: int = 40) -> str:
    """Bars of the latency distribution on a log time axis (counts per bin)."""
    if not hist.count:
        return '<p class="empty">no successful operations</p>'
    lo = max(hist.min, 1e-6)
    hi = max(hist.max, lo * 1.01)
    edges = np.geomspace(lo, hi * 1.0001, bins + 1)
    counts = hist.counts
    nz = np.flatnonzero(counts)
    per_bin = np.zeros(bins, dtype=np.int64)
    idx = np.clip(np.searchsorted(edges, BUCKET_MIDPOINT_S[nz], side="right") - 1, 0, bins - 1)
    np.add.at(per_bin, idx, counts[nz])
    top = _nice_max(float(per_bin.max()))
    pw, ph = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    bw = pw / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img">']
    for k in range(5):
        v = top * k / 4
        y = _PAD_T + ph - v / top * ph
        parts.append(f'<line x1="{_PAD_L}" y1="{y:.1f}" x2="{_W - _PAD_R}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    for i, c in enumerate(per_bin.tolist()):
        if c:
            h = c / top * ph
            parts.append(f'<rect x="{_PAD_L + i * bw + 0.5:.1f}" y="{_PAD_T + ph - h:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                         f'height="{h:.1f}" fill="{_COLORS[0]}"><title>{_e(_fmt_seconds(edges[i]))} – '
                         f'{_e(_fmt_seconds(edges[i + 1]))}: {c}</title></rect>')
    for i in range(0, bins + 1, max(1, bins // 6)):
        parts.append(f'<text x="{_PAD_L + i * bw:.1f}" y="{_H - _PAD_B + 16}" text-anchor="middle">{_e(_fmt_seconds(edges[i]))}</text>')
    parts.append(f'<text x="{_PAD_L + pw / 2:.0f}" y="{_H - 4}" text-anchor="middle">latency from intended start (log scale)</text>')
    parts.append("</svg>")
    return "".join(parts)


# -- the page -------------------------------------------------------------------------------------


def _bucket_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """histogram_quantile over per-bucket (not cumulative) counts with a last +Inf bucket."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    cum = 0
    for i, c in enumerate(counts):
        if cum + c >= rank and c:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = bounds[i - 1] if i else 0.0
            return float(lower + (bounds[i] - lower) * (rank - cum) / c)
        cum += c
    return float(bounds[-1])


def latency_over_time(per_second: dict[str, Any], q: float, low: float | None = None,
                      high: float | None = None) -> list[float | None] | None:
    """Per-second quantile from ``per_second[op]["latency_le"]`` (``{"bounds": [...],
    "counts": [[...per bucket, +Inf last] per second], "min": [...], "max": [...]}``), None
    when the report lacks it.

    Interpolating in coarse buckets can land above anything measured (a second whose worst
    latency was 0.3 s has its p99 somewhere in the 0.25-0.5 s bucket), so each value is clamped
    to that second's exact min and max, and to the run's ``low``/``high`` when given (reports
    written before per-second extremes were kept)."""
    data = per_second.get("latency_le")
    if not isinstance(data, dict):
        return None
    bounds = data.get("bounds") or []
    rows = data.get("counts") or []
    lows, highs = data.get("min") or [], data.get("max") or []
    out: list[float | None] = []
    for i, row in enumerate(rows):
        value = _bucket_quantile(q, bounds, row)
        if value is not None:
            for bound, pick in ((low, max), (high, min), (_at(lows, i), max), (_at(highs, i), min)):
                if bound is not None:
                    value = pick(value, bound)
        out.append(value)
    return out


def _at(values: Sequence[Any], i: int) -> float | None:
    """``values[i]`` as a float when it is a number there, else None."""
    value = values[i] if i < len(values) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _offered_and_losses(results: dict[str, Any], flow: list[str], per_second: dict[str, Any]) -> list[str]:
    """Offered against achieved rate on one chart, then dropped arrivals and errors over time
    (reports written before these series were kept have neither)."""
    out: list[str] = []
    offered = results.get("offered_per_second")
    if offered and any(offered) and flow:
        first = flow[0]
        achieved = (per_second.get(first) or {}).get("completed", [])
        out.append("<h2>Offered vs achieved rate</h2>")
        out.append(line_chart([("offered (arrivals due)", [float(v) for v in offered]),
                               (f"achieved ({first} ok)", [float(v) for v in achieved])],
                              x_label="seconds since start", y_label="per second", chart="offered-achieved"))
    dropped = results.get("dropped_per_second")
    if dropped is not None:
        losses: list[tuple[str, Sequence[float | None]]] = [("dropped arrivals", [float(v) for v in dropped])]
        for op in flow:
            losses.append((f"{op} errors", [float(v) for v in (per_second.get(op) or {}).get("failed", [])]))
        out.append("<h2>Dropped arrivals and errors over time</h2>")
        out.append(line_chart(losses, x_label="seconds since start", y_label="per second", chart="losses"))
    return out


_EXTRA_OPS = ("revoke", "reenroll")  # [announcements]: the run's revocations, the re-enrollments they trigger


def _announcements(a: dict[str, Any], ops: dict[str, Any], per_second: dict[str, Any]) -> list[str]:
    """[announcements]: what the devices were pushed, the rann's delivery and the re-enrollment
    storm it triggered (re-enrollments per second beside the revocations)."""
    believed = ", ".join(f"{k} {v}" for k, v in sorted((a.get("received") or {}).items())) or "none"
    refused = ", ".join(f"{k} {v}" for k, v in sorted((a.get("refused") or {}).items())) or "none"
    q = a.get("delivery_seconds") or {}
    delivery = ", ".join(f"{k} {_fmt_seconds(q[k])}" for k in ("p50", "p90", "p99", "max") if q.get(k) is not None) or "–"
    reenroll = ops.get("reenroll") or {}
    rq = reenroll.get("latency_seconds") or {}
    storm = ", ".join(f"{k} {_fmt_seconds(rq[k])}" for k in ("p50", "p99", "max") if rq.get(k) is not None) or "–"
    out = [
        "<h2>Announcements</h2><table>",
        f"<tr><td>believed</td><td>{_e(believed)}</td></tr><tr><td>refused (failInfo)</td><td>{_e(refused)}</td></tr>",
        f"<tr><td>rann delivery, from the run's rr to the device</td><td>{_e(delivery)}</td></tr>",
        (f"<tr><td>re-enrollments triggered</td><td>{_e(a.get('reenrollments', 0))} ({_e(reenroll.get('ok', 0))} ok, "
        f"{_e(reenroll.get('failed', 0))} failed; latency from the rann {_e(storm)})</td></tr>"),
        f"<tr><td>rann of a certificate already replaced</td><td>{_e(a.get('not_current', 0))}</td></tr>",
        f"<tr><td>trust anchor updates (ckuann)</td><td>{_e(a.get('trust_updates', 0))}</td></tr>",
        f"<tr><td>revocations not announced by the end</td><td>{_e(a.get('unannounced', 0))}</td></tr></table>",
    ]
    series = [(f"{op} per second", [float(v) for v in (per_second.get(op) or {}).get("completed", [])])
              for op in _EXTRA_OPS if op in per_second]
    if series:
        out.append(line_chart(series, x_label="seconds since start", y_label="per second", chart="storm"))
    try:
        hist = LatencyHistogram.from_dict(a["delivery"]) if a.get("delivery") else LatencyHistogram()
    except FleetError as exc:
        raise ReportError(f"announcements: {exc}") from None
    if hist.count:
        out.append(f"<h3>rann delivery ({hist.count})</h3>")
        out.append(distribution_chart(hist).replace("latency from intended start", "from the run's rr to the device"))
    return out


def render_html(report: dict[str, Any]) -> str:
    results = report["results"]
    verdict = report.get("verdict") or {}
    passed = bool(verdict.get("passed"))
    status = str(verdict.get("status") or ("PASS" if passed else "FAIL"))
    css = {"PASS": "pass", "FAIL": "fail"}.get(status, "stopped")  # ABORTED, INTERRUPTED
    ops: dict[str, Any] = results.get("operations", {})
    flow = [op for op in dict.fromkeys([*(report.get("flow") or list(ops)), *_EXTRA_OPS]) if op in ops] or list(ops)
    elapsed = float(results.get("elapsed_seconds") or 0.0)
    title = f"fleet run report: {report.get('profile', '?')}"
    out = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{_e(title)}</title>",
        _STYLE,
        f"<h1>{_e(title)}</h1>",
        f'<p class="verdict {css}">{_e(verdict.get("line", "PASS" if passed else "FAIL"))}</p>',
        "<ul>" + "".join(f"<li>{_e(c)}</li>" for c in verdict.get("checks", [])) + "</ul>",
        f"<p>Server {_e(report.get('server', '?'))}; flow {_e(' → '.join(report.get('flow', [])))}; "
        f"{_e(results.get('workers', 1))} worker(s); ran {elapsed:.1f} s of {_e(report.get('duration_seconds'))} s planned. "
        + (f"Target {float(report['target_rate']):.1f}/s, achieved {float(report.get('achieved_rate') or 0):.1f}/s."
           if report.get("target_rate") else f"Achieved {float(report.get('achieved_rate') or 0):.1f}/s.")
        + "</p>",
    ]
    # Summary table.
    out.append("<h2>Operations</h2><table><tr><th>operation</th><th>ok</th><th>failed</th><th>ok/s</th>"
               "<th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>polls</th><th>errors</th></tr>")
    for op in flow:
        s = ops[op]
        q = s.get("latency_seconds") or {}
        cells = [_fmt_seconds(q[k]) if q.get(k) is not None else "–" for k in ("p50", "p90", "p99", "p99.9", "max")]
        errors = ", ".join(f"{k} {v}" for k, v in sorted((s.get("errors") or {}).items(), key=lambda kv: -kv[1]))
        fail = ", ".join(f"{k} {v}" for k, v in sorted((s.get("fail_info") or {}).items(), key=lambda kv: -kv[1]))
        warned = ", ".join(f"{k} {v}" for k, v in sorted((s.get("warnings") or {}).items(), key=lambda kv: -kv[1]))
        if warned:
            fail = (fail + "; " if fail else "") + "warnings: " + warned
        rate = s.get("ok", 0) / elapsed if elapsed else 0.0
        out.append(f"<tr><td>{_e(op)}</td><td>{_e(s.get('ok', 0))}</td><td>{_e(s.get('failed', 0))}</td><td>{rate:.1f}</td>"
                   + "".join(f"<td>{_e(c)}</td>" for c in cells)
                   + f"<td>{_e(s.get('polls', 0))}</td><td>{_e(errors + (f' [{fail}]' if fail else '') or '–')}</td></tr>")
    out.append("</table>")
    late = results.get("lateness_seconds") or {}
    out.append(f"<p>Arrivals: {_e(results.get('scheduled', 0))} scheduled, {_e(results.get('started', 0))} started, "
               f"{_e(results.get('dropped', 0))} dropped (max in flight), peak in flight {_e(results.get('in_flight_peak', 0))}"
               + (f", start lateness p99 {_e(_fmt_seconds(late['p99']))}" if late.get("p99") is not None else "") + ".</p>")
    coap = results.get("transport") or {}
    if coap:
        out.append(f"<p>CoAP: {_e(coap.get('sent', 0))} requests, {_e(coap.get('retransmissions', 0))} "
                   f"retransmissions, {_e(coap.get('lost_out', 0))}/{_e(coap.get('lost_in', 0))} datagrams "
                   f"lost out/in (link knob), {_e(coap.get('separate', 0))} separate responses, "
                   f"{_e(coap.get('gave_up', 0))} exchanges given up.</p>")
    per_second: dict[str, Any] = results.get("per_second", {})
    out.extend(_offered_and_losses(results, flow, per_second))
    if isinstance(results.get("announcements"), dict):
        out.extend(_announcements(results["announcements"], ops, per_second))
    # Throughput over time.
    out.append("<h2>Throughput over time</h2>")
    series: list[tuple[str, Sequence[float | None]]] = []
    for op in flow:
        ps = per_second.get(op) or {}
        series.append((f"{op} ok", [float(v) for v in ps.get("completed", [])]))
        if any(ps.get("failed", [])):
            series.append((f"{op} failed", [float(v) for v in ps.get("failed", [])]))
    out.append(line_chart(series, x_label="seconds since start", y_label="operations per second", chart="throughput"))
    # Latency over time.
    out.append("<h2>Latency over time</h2>")
    lat_series = []
    for op in flow:
        whole = (ops[op].get("latency") or {})  # the run's exact extremes for this operation
        for q in (0.5, 0.99):
            values = latency_over_time(per_second.get(op) or {}, q, _number(whole.get("min")), _number(whole.get("max")))
            if values is not None:
                lat_series.append((f"{op} p{q * 100:g}", values))
    if lat_series:
        out.append(line_chart(lat_series, x_label="seconds since start", y_label="latency", y_format=_fmt_seconds,
                              chart="latency"))
    else:
        out.append('<p class="note">This report has no per-second latency buckets; only the distribution over the whole run is known.</p>')
    # Distribution.
    out.append("<h2>Latency distribution</h2>")
    for op in flow:
        data = ops[op].get("latency")
        try:
            hist = LatencyHistogram.from_dict(data) if data else LatencyHistogram()
        except FleetError as exc:
            raise ReportError(f"operation {op}: {exc}") from None
        out.append(f"<h3>{_e(op)} ({hist.count} successful)</h3>")
        out.append(distribution_chart(hist))
    out.append('<p class="note">Latency is measured from each arrival\'s intended start (open model, no coordinated omission). '
               "Generated by fleet report.</p></body></html>")
    return "\n".join(out)
