"""Issue 16's charts, checked as a browser renders them: the run page's offered-vs-achieved and
dropped/errors charts and the capacity page's knee chart, loaded in headless Chromium (Debian's
``chromium``; ``.ci/run`` installs it) and read back from the rendered DOM (``--dump-dom``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from fleet.capacity_report import render_capacity_html
from fleet.load.capacity import CapacitySearch, answer, assess_step
from fleet.load.profiles import Slo
from fleet.load.results import RunResults
from fleet.load.verdict import slo_dict
from fleet.report import fmt_rate, fmt_seconds, render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


class _Svg(HTMLParser):
    """Every rendered <svg class="chart">: its data-chart name, and the tags and texts inside."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, list[str]]] = {}
        self._current: str | None = None
        self._tag = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg" and a.get("data-chart"):
            self._current = str(a["data-chart"])
            self.charts[self._current] = {"tags": [], "texts": [], "classes": []}
        elif self._current is not None:
            self.charts[self._current]["tags"].append(tag)
            self.charts[self._current]["classes"].append(a.get("class") or "")
        self._tag = tag

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None and self._tag == "text" and data.strip():
            self.charts[self._current]["texts"].append(data.strip())


def _rendered(page: str, tmp: Path) -> dict[str, dict[str, list[str]]]:
    path = tmp / "page.html"
    path.write_text(page)
    assert CHROMIUM is not None
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120, check=True, stdin=subprocess.DEVNULL,
    ).stdout
    assert "<svg" in dom, dom[:500]
    parser = _Svg()
    parser.feed(dom)
    return parser.charts


def _overloaded_run() -> dict[str, object]:
    """A 10 s run offered 100/s whose CA keeps up with 60/s from second 4 on: drops and errors."""
    results = RunResults()
    offsets = np.arange(1000) / 100.0
    for i, t in enumerate(offsets):
        if t >= 4 and i % 5 == 0:
            results.dropped_at(float(t))
        elif t >= 4 and i % 5 == 1:
            results.failed("ir", float(t) + 0.2, 0.2, "error_message", ("systemUnavail",))
        else:
            results.succeeded("ir", float(t) + 0.05, 0.05 + t / 100, 0.04)
    results.window_scheduled(offsets)
    results.scheduled, results.elapsed = 1000, 10.0
    return {"fleet_report": 1, "profile": "overload", "server": "http://127.0.0.1:1/", "duration_seconds": 10.0,
            "flow": ["ir"], "target_rate": 100.0, "achieved_rate": 70.0,
            "verdict": {"passed": False, "status": "FAIL", "line": "FAIL: errors", "checks": []},
            "results": results.to_dict()}


@needs_chromium
def test_run_page_shows_offered_vs_achieved_and_losses_in_a_browser(tmp_path: Path) -> None:
    charts = _rendered(render_html(_overloaded_run()), tmp_path)
    assert {"offered-achieved", "losses", "throughput", "latency"} <= set(charts)
    offered = charts["offered-achieved"]
    assert offered["tags"].count("polyline") == 2  # offered and achieved on one chart
    assert "offered (arrivals due)" in offered["texts"] and "achieved (ir ok)" in offered["texts"]
    losses = charts["losses"]
    assert losses["tags"].count("polyline") == 2 and "dropped arrivals" in losses["texts"] and "ir errors" in losses["texts"]
    for chart in charts.values():  # readable units: no long fractions on any axis
        assert not [t for t in chart["texts"] if re.search(r"\d\.\d{4,}", t)], chart["texts"]


def _capacity_doc() -> dict[str, object]:
    """A search over a synthetic CA that holds 437/s: every step's results as ``fleet capacity`` writes them."""
    slo = Slo(p99_seconds={"ir": 0.5}, max_error_rate=0.01, min_rate_ratio=0.95)
    search = CapacitySearch(50, 2000, tolerance=0.05)
    steps, assessed = [], []
    while (rate := search.next_rate()) is not None:
        results = RunResults()
        results.measure_from(2.0)
        over = rate > 437
        for i, t in enumerate(np.arange(int(rate * 10)) / rate):
            latency = 0.01 + (0.6 if over else 0.1 * rate / 437) * (i % 100) / 100
            if over and i % 10 == 0:
                results.failed("ir", float(t) + latency, latency, "error_message", ("systemUnavail",))
            else:
                results.succeeded("ir", float(t) + latency, latency, latency)
        results.window_scheduled(np.arange(int(rate * 10)) / rate)
        results.elapsed = 10.0
        a = assess_step(rate, slo, ["ir"], 10.0, 2.0, results)
        search.record(rate, a.passed, a.broken)
        assessed.append(a)
        steps.append({"assessment": a.to_dict(), "report": {"results": results.to_dict()}})
    found = answer(assessed, search)
    return {"fleet_capacity": 1, "profile": "synthetic", "server": "http://127.0.0.1:1/", "flow": ["ir"],
            "slo": slo_dict(slo), "search": {"step_seconds": 10, "warmup_seconds": 2}, "answer": found.to_dict(),
            "require": 400, "require_met": True, "steps": steps}


@needs_chromium
def test_capacity_page_draws_the_knee_chart_with_capacity_marked(tmp_path: Path) -> None:
    doc = _capacity_doc()
    found = doc["answer"]
    assert isinstance(found, dict) and 0.95 * 437 <= found["capacity"] <= 437
    (tmp_path / "capacity.json").write_text(json.dumps(doc))
    charts = _rendered(render_capacity_html(doc), tmp_path)
    knee = charts["knee"]
    assert knee["tags"].count("polyline") == 3  # p50, p90 and p99 against offered rate
    assert knee["tags"].count("circle") == 3 * len(doc["steps"])  # type: ignore[arg-type]
    assert f"capacity {fmt_rate(found['capacity'])}" in knee["texts"]
    assert "p99 limit 500 ms" in knee["texts"] and "level" in knee["classes"] and "mark" in knee["classes"]
    ticks = [t for t in knee["texts"] if re.fullmatch(r"[\d.]+ (s|ms|µs)", t)]
    assert len(ticks) >= 2  # a latency axis with units on its ticks
    assert not [t for t in knee["texts"] if re.search(r"\d\.\d{4,}|^0 µs$", t)], knee["texts"]
    rates = charts["offered-achieved"]
    assert rates["tags"].count("polyline") == 2 and "/s" in " ".join(rates["texts"])


def test_units_read_well() -> None:
    assert fmt_seconds(3.16251) == "3.16 s" and fmt_seconds(0.25) == "250 ms" and fmt_seconds(1.25e-5) == "12.5 µs"
    assert fmt_seconds(0) == "0" and fmt_rate(1250) == "1.25k/s" and fmt_rate(97.5) == "97.5/s"
