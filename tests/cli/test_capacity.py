"""Issue 16's proof: ``fleet capacity`` against the embedded CA whose knobs make it saturate at a
known rate (every response held 0.5 s, at most 50 live transactions: 100 enrollments/s) finds
that rate within 5 %, in short steps so the test stays within about a minute."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cli_helpers import fleet, one_error_line

from fleet.load.results import RunResults

PROFILE = """
name = "knob-capacity"
[run]
duration = 10
flow = ["ir"]
max_in_flight = 2000
transaction_timeout = 10
[arrivals]
shape = "constant"
rate = 100
[devices]
count = 5000
key_types = "ec:P-256"
[slo]
p99_seconds = { ir = 3.0 }
max_error_rate = 0.01
min_rate_ratio = 0.95
[ca]
latency = "fixed:0.5"
max_transactions = 50
"""

KNOWN = 50 / 0.5  # live transactions / seconds each one lives


def test_capacity_finds_the_knobs_rate_within_5_percent(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(PROFILE)
    report = tmp_path / "capacity.json"
    began = time.monotonic()
    result = fleet("capacity", str(profile), "--min-rate", "40", "--max-rate", "400", "--step-duration", "3",
                   "--warmup", "1", "--cool-down", "0.5", "--require", "120", "--report", str(report), timeout=300)
    took = time.monotonic() - began
    assert result.returncode == 1, result.stdout + result.stderr  # 120/s is more than this CA sustains
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "required 120/s: NOT MET"
    assert lines[-2].startswith("capacity ") and "first to break at" in lines[-2]
    doc = json.loads(report.read_text())
    found = doc["answer"]
    assert abs(found["capacity"] - KNOWN) <= 0.05 * KNOWN, found
    low, high = found["interval"]
    assert low <= KNOWN and high >= 0.95 * KNOWN and (high - low) / low <= 0.03
    assert "systemUnavail" in found["first_break"]["fail_info"]  # why it broke: the transaction cap
    assert found["knee"] is not None and found["knee"] <= found["capacity"]
    assert doc["require_met"] is False
    steps = doc["steps"]
    assert 4 <= len(steps) <= 12
    coarse = [s["assessment"]["rate"] for s in steps[:3]]
    assert coarse == [40, 80, 160]
    merged = RunResults()
    for step in steps:
        results = step["report"]["results"]
        assert results["steady"]["from_seconds"] == 1
        assert results["steady"]["scheduled"] < results["scheduled"]  # the warm-up is left out
        assert step["assessment"]["steady"] or not step["assessment"]["passed"]
        merged.merge(RunResults.from_dict(results))  # every step's histograms stay mergeable
    assert merged.ops["ir"].latency.count == sum(s["report"]["results"]["operations"]["ir"]["ok"] for s in steps)
    assert took < 150, took


def test_require_met_exits_0_and_bad_bounds_are_usage_errors(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(PROFILE)
    ok = fleet("capacity", str(profile), "--min-rate", "30", "--max-rate", "30", "--step-duration", "3",
               "--warmup", "1", "--require", "30", timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == "required 30/s: MET"
    assert "capacity at least 30/s" in ok.stdout
    bad = fleet("capacity", str(profile), "--min-rate", "50", "--max-rate", "10")
    assert bad.returncode == 2 and "must satisfy 0 < min <= max" in bad.stderr and "Traceback" not in bad.stderr
    closed = tmp_path / "closed.toml"
    closed.write_text(PROFILE.replace('shape = "constant"\nrate = 100', 'shape = "closed"\ndevices = 5\nthink_time = 0.1'))
    refused = fleet("capacity", str(closed))
    assert refused.returncode == 1 and "closed-model profile" in one_error_line(refused.stderr)
