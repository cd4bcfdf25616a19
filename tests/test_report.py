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
