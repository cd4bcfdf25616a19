"""The capacity dashboard (dashboards/fleet-capacity.json), proven against a real Prometheus:
a short ``fleet capacity --metrics-port`` search against the embedded CA saturating at 100/s, then
every panel query and the step annotation evaluated through the HTTP API must return data, and
the annotation must name every step the search took, with its outcome."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_prometheus_e2e import RATE_INTERVAL, Prometheus, _free_run, _queries, _values

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus package")

PROFILE = """
name = "capacity-e2e"
[run]
duration = 10
flow = ["ir"]
max_in_flight = 1000
[arrivals]
shape = "constant"
rate = 50
[devices]
count = 2000
key_types = "ec:P-256"
[slo]
p99_seconds = { ir = 8.0 }
max_error_rate = 0.01
[ca]
latency = "fixed:1"
max_transactions = 100
"""


def test_capacity_dashboard_queries_and_step_annotations_return_data(tmp_path: Path) -> None:
    base = _free_run(2)  # the search's gauges, the embedded CA
    prom = Prometheus(tmp_path, [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"])
    try:
        prom.wait_scraping(2)
        profile = tmp_path / "p.toml"
        profile.write_text(PROFILE)
        report = tmp_path / "capacity.json"
        t_start = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "fleet.cli.main", "capacity", str(profile), "--min-rate", "50", "--max-rate", "200",
             "--step-duration", "4", "--warmup", "1.5", "--cool-down", "1", "--tolerance", "0.5",
             "--metrics-port", str(base), "--report", str(report)],
            capture_output=True, text=True, timeout=180, cwd=ROOT, check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT), "FLEET_METRICS_HOST": "127.0.0.1"},
        )
        t_end = time.time()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        steps = json.loads(report.read_text())["steps"]
        assert any(not s["assessment"]["passed"] for s in steps) and any(s["assessment"]["passed"] for s in steps)
        window = t_end - t_start + 2
        start, end = t_start - 1, t_end + 1
        failures = [f"{name}: no data for {expr}" for name, expr in _queries(ROOT / "dashboards" / "fleet-capacity.json", window)
                    if not _values(prom.range(expr, start, end))]
        assert not failures, "\n".join(failures)
        dash = json.loads((ROOT / "dashboards" / "fleet-capacity.json").read_text())
        (annotation,) = dash["annotations"]["list"]
        expr = annotation["expr"].replace("$job", ".*").replace("$__rate_interval", RATE_INTERVAL)
        series = prom.range(expr, start, end)
        outcomes = {(s["metric"]["step"], s["metric"]["outcome"]) for s in series}
        for n, step in enumerate(steps, 1):
            assert (str(n), "held" if step["assessment"]["passed"] else "failed") in outcomes, (n, outcomes)
    finally:
        prom.stop()
