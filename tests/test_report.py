"""fleet report: the HTML page from a run report (RunResults.to_dict + report_dict shape)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fleet.cli.report_cmd import app
from fleet.load.results import RunResults
from fleet.report import ReportError, latency_over_time, load_report, render_html


def _report(tmp: Path, *, passed: bool = True, profile: str = "smoke") -> Path:
    results = RunResults()
    stats = results.op("ir")
    rng = np.random.default_rng(1)
    for i, v in enumerate(rng.lognormal(np.log(0.02), 0.6, 400)):
        results.succeeded("ir", i / 80, float(v), float(v) / 2)
    stats.failed = 3
    stats.errors["rejected"] = 3
    stats.fail_info["badPOP"] = 3
    results.failures["ir"].add(2.5, 3)
    results.scheduled = results.started = results.completed = 403
    results.elapsed = 5.0
    data = {
        "fleet_report": 1, "profile": profile, "server": "http://127.0.0.1:1/.well-known/cmp", "duration_seconds": 5.0,
        "flow": ["ir"], "target_rate": 80.0, "achieved_rate": 80.0,
        "verdict": {"passed": passed, "line": "PASS: ir p99 60 ms <= 1000 ms" if passed else "FAIL: errors 0.74% > 0.00%",
                    "checks": ["ir p99 60 ms <= 1000 ms"]},
        "results": results.to_dict(),
    }
    path = tmp / "run.json"
    path.write_text(json.dumps(data))
    return path


def test_page_is_self_contained_with_charts_and_verdict(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, [str(_report(tmp_path)), "--html", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "PASS: ir p99 60 ms" in page and 'class="verdict pass"' in page
    assert not re.search(r"""(src|href)\s*=|<script|@import|url\(""", page)  # no external assets, no scripts
    svgs = re.findall(r"<svg.*?</svg>", page, re.DOTALL)
    # The rate and loss charts of issue 16 are checked in tests/test_report_charts.py.
    svgs = [svg for svg in svgs if 'data-chart="losses"' not in svg and 'data-chart="offered-achieved"' not in svg]
    assert len(svgs) == 3  # throughput over time, latency over time, latency distribution
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    assert "polyline" in svgs[0] and "polyline" in svgs[1] and "<rect" in svgs[2]
    assert "rejected 3 [badPOP 3]" in page and "no per-second latency" not in page
    bars = sum(int(m) for m in re.findall(r": (\d+)</title>", svgs[2]))
    assert bars == 400  # every successful operation is in the distribution


def test_values_from_the_report_are_escaped(tmp_path: Path) -> None:
    page = render_html(load_report(_report(tmp_path, passed=False, profile="<script>x</script>")))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert 'class="verdict fail"' in page


def test_latency_over_time_from_per_second_buckets() -> None:
    per_second = {"latency_le": {"bounds": [0.01, 0.1, 1.0], "counts": [[10, 0, 0, 0], [0, 10, 0, 0], [0, 0, 0, 0]]}}
    p50 = latency_over_time(per_second, 0.5)
    assert p50 == [pytest.approx(0.005), pytest.approx(0.055), None]
    assert latency_over_time({}, 0.5) is None


@pytest.mark.parametrize("content,message", [
    (None, "cannot read report"), ("{", "is not JSON"), ('{"x": 1}', "is not a fleet run report"),
])
def test_bad_reports_are_one_line_errors(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ReportError, match=message):
        load_report(path)


_MANY = ("genm", "ir", "cr", "p10cr", "kur", "rr")


def _many_report(tmp: Path) -> tuple[Path, float]:
    """Six operations, each with failures (12 series per chart); from second 10 to 20 every
    latency lies in 0.26-0.30 s, inside the coarse 0.25-0.5 s per-second bucket."""
    results = RunResults()
    rng = np.random.default_rng(3)
    for k, op in enumerate(_MANY):
        results.op(op)
        for s in range(30):
            for j in range(40):
                slow = 10 <= s < 20
                v = float(rng.uniform(0.26, 0.30)) if slow else float(rng.lognormal(np.log(0.01 * (k + 1)), 0.3))
                results.succeeded(op, s + j / 40, v, v / 2)
            results.failures[op].add(s + 0.5, 1 + s % 3)
            results.ops[op].failed += 1 + s % 3
    results.scheduled = results.started = results.completed = 1200
    results.elapsed = 30.0
    data = {
        "fleet_report": 1, "profile": "many", "server": "http://127.0.0.1:1/", "duration_seconds": 60.0,
        "flow": list(_MANY), "target_rate": 40.0, "achieved_rate": 40.0,
        "verdict": {"passed": False, "status": "INTERRUPTED", "line": "INTERRUPTED by SIGINT at t=30.0s of 60s; until then: x",
                    "checks": []},
        "results": results.to_dict(),
    }
    path = tmp / "many.json"
    path.write_text(json.dumps(data))
    return path, max(results.ops[op].latency.max for op in _MANY)


def _line_charts(page: str) -> list[ET.Element]:
    svgs = [ET.fromstring(s) for s in re.findall(r"<svg.*?</svg>", page, re.DOTALL)]
    return [svg for svg in svgs if svg.find(f"{{{_SVG}}}rect[@class='plot-area']") is not None
            and svg.get("data-chart") in ("throughput", "latency")]  # the rate/loss charts: test_report_charts.py


_SVG = "http://www.w3.org/2000/svg"
_GLYPH = 7.0  # px: wider than any average glyph of the 11px chart font


def test_legend_holds_every_series_inside_the_chart_and_off_the_plot(tmp_path: Path) -> None:
    """12 series per chart: every legend entry is there, inside the viewBox, clear of the other
    entries and above the plot area (the old legend ran off the right edge after 5 entries,
    over the lines)."""
    path, _ = _many_report(tmp_path)
    charts = _line_charts(render_html(load_report(path)))
    assert len(charts) == 2  # throughput and latency over time
    expected = [{f"{op} {kind}" for op in _MANY for kind in ("ok", "failed")},
                {f"{op} {q}" for op in _MANY for q in ("p50", "p99")}]
    for svg, names in zip(charts, expected):
        _, _, width, height = (float(v) for v in svg.get("viewBox", "").split())
        plot = svg.find(f"{{{_SVG}}}rect[@class='plot-area']")
        assert plot is not None
        plot_top = float(plot.get("y", "nan"))
        assert plot_top + float(plot.get("height", "nan")) <= height
        entries = svg.findall(f".//{{{_SVG}}}g[@class='legend-entry']")
        boxes = []
        for entry in entries:
            swatch, text = entry.find(f"{{{_SVG}}}line"), entry.find(f"{{{_SVG}}}text")
            assert swatch is not None and text is not None and text.text
            left, top = float(swatch.get("x1", "nan")), float(text.get("y", "nan")) - 10
            right, bottom = float(text.get("x", "nan")) + len(text.text) * _GLYPH, float(text.get("y", "nan")) + 3
            assert 0 <= left and right <= width and 0 <= top and bottom <= plot_top, (text.text, left, right, top, bottom)
            boxes.append((left, top, right, bottom))
        assert sorted(e.find(f"{{{_SVG}}}text").text for e in entries) == sorted(names)  # type: ignore[union-attr]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def _points(svg: ET.Element) -> list[float]:
    """The y pixel of every plotted point."""
    ys = [float(p.split(",")[1]) for line in svg.iter(f"{{{_SVG}}}polyline") for p in line.get("points", "").split()]
    return ys + [float(c.get("cy", "nan")) for c in svg.iter(f"{{{_SVG}}}circle")]


def test_latency_over_time_never_rises_above_the_measured_maximum(tmp_path: Path) -> None:
    """Interpolating in the 0.25-0.5 s bucket put the slow seconds' p99 near 0.5 s though
    nothing took more than 0.3 s: each second is clamped to its exact min and max."""
    path, run_max = _many_report(tmp_path)
    report = load_report(path)
    assert run_max <= 0.30
    for op in _MANY:
        per_second = report["results"]["per_second"][op]
        highs = per_second["latency_le"]["max"]
        for q in (0.5, 0.99):
            values = latency_over_time(per_second, q)
            assert values is not None and len(values) == 30
            assert all(v is not None and v <= hi for v, hi in zip(values, highs)), (op, q)
        assert max(latency_over_time(per_second, 0.99) or []) > 0.25  # the slow phase still shows
    chart = _line_charts(render_html(report))[1]
    plot = chart.find(f"{{{_SVG}}}rect[@class='plot-area']")
    assert plot is not None
    top, h, y_max = (float(plot.get(k, "nan")) for k in ("y", "height", "data-y-max"))
    ys = _points(chart)
    assert len(ys) == 12 * 30
    assert max(y_max * (top + h - y) / h for y in ys) <= run_max + y_max * 0.15 / h  # within rounding to 0.1 px


def test_latency_over_time_of_an_older_report_is_clamped_to_the_run() -> None:
    """Reports without per-second extremes: clamped to the run's exact min and max."""
    per_second = {"latency_le": {"bounds": [0.25, 0.5], "counts": [[0, 10, 0]]}}
    assert latency_over_time(per_second, 0.99) == [pytest.approx(0.4975)]
    assert latency_over_time(per_second, 0.99, 0.26, 0.3) == [0.3]
    assert latency_over_time(per_second, 0.01, 0.28, 0.3) == [0.28]


def test_stopped_runs_are_neither_pass_nor_fail(tmp_path: Path) -> None:
    path, _ = _many_report(tmp_path)
    page = render_html(load_report(path))
    assert 'class="verdict stopped">INTERRUPTED by SIGINT' in page
