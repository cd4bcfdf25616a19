"""The live progress line, the verdict of runs stopped early and the summary table's empty cells."""

from __future__ import annotations

import io
import re
import signal
from typing import Any

from fleet.load.orchestrator import ProgressPrinter, report_dict, summary_table, verdict
from fleet.load.profiles import Profile, Slo
from fleet.load.results import RunResults
from fleet.load.schedule import Closed, Constant, Ramp


def _profile(**changes: Any) -> Profile:
    base = Profile(
        name="t", path=None, duration=60.0, shape=Constant(rate=100.0), flow=("ir", "kur"),
        slo=Slo(p99_seconds={"ir": 0.5}, max_error_rate=0.01, min_rate_ratio=0.95),
    )
    return base.with_overrides(**changes) if changes else base


def _snapshot(elapsed: float, due: int, ok: int, failed: int = 0, dropped: int = 0) -> dict[str, Any]:
    return {"elapsed": elapsed, "ok": ok, "failed": failed, "in_flight": 3, "due": due, "dropped": dropped,
            "errors": {}, "ops": {}}


def _rates(line: str) -> tuple[float, str, float]:
    m = re.search(r"arrivals (\d+)/s \(([^)]*)\) \| operations (\d+)/s ", line)
    assert m, line
    return float(m[1]), m[2], float(m[3])


def test_progress_compares_arrivals_with_the_target_and_shows_operations_apart() -> None:
    """ir + kur at 100 arrivals/s: 100 arrivals/s against a target of 100/s, 200 operations/s
    shown on their own (not "200 ops/s, target 100/s")."""
    progress = ProgressPrinter(_profile(), io.StringIO(), enabled=True)
    line = progress.line({0: _snapshot(5.0, due=500, ok=1000)})
    assert line is not None
    assert _rates(line) == (100.0, "target 100/s", 200.0)
    # The next line covers the time since the last one; across two workers the counts add up
    # (and there is no line until both have reported).
    progress = ProgressPrinter(_profile(workers=2), io.StringIO(), enabled=True)
    assert progress.line({0: _snapshot(5.0, due=250, ok=500)}) is None
    assert progress.line({0: _snapshot(5.0, due=250, ok=500), 1: _snapshot(5.0, due=250, ok=500)}) is not None
    line = progress.line({0: _snapshot(10.0, due=750, ok=1400), 1: _snapshot(9.9, due=250, ok=400, dropped=50)})
    assert line is not None
    assert _rates(line) == (90.0, "target 100/s", 160.0)
    assert "dropped 50" in line
    assert progress.line({0: _snapshot(10.0, due=750, ok=1400)}) is None  # no time has passed


def test_progress_target_follows_the_schedule_over_the_window() -> None:
    progress = ProgressPrinter(_profile(shape=Ramp(start_rate=0.0, end_rate=600.0), duration=60.0), io.StringIO(), True)
    line = progress.line({0: _snapshot(10.0, due=500, ok=500)})
    assert line is not None
    assert _rates(line)[1] == "target 50/s"  # the ramp's mean over 0..10 s: 0 -> 100/s
    closed = ProgressPrinter(_profile(shape=Closed(devices=2, think_time=0.0)), io.StringIO(), True)
    line = closed.line({0: _snapshot(2.0, due=40, ok=80)})
    assert line is not None
    assert _rates(line) == (20.0, "closed model, 2 loops", 40.0)


def _results(ok: int, failed: int = 0, *, started: int, scheduled: int) -> RunResults:
    results = RunResults()
    for i in range(ok):
        results.succeeded("ir", i / 20, 0.01, 0.01)
        results.succeeded("kur", i / 20, 0.01, 0.01)
    stats = results.op("ir")
    stats.failed = failed
    stats.errors["rejected"] = failed
    results.scheduled, results.started, results.completed = scheduled, started, started
    results.elapsed = started / 20
    return results


def test_interrupted_run_says_interrupted_with_what_was_measured() -> None:
    """Stopped by SIGINT after 6 s of 60: no FAIL for a low share of the whole schedule, the
    achieved share is of the arrivals due by then; exit code 128 + the signal."""
    results = _results(120, started=120, scheduled=1200)
    results.interrupted, results.interrupt_signal = True, signal.SIGINT
    v = verdict(_profile(), results)
    assert v.status == "INTERRUPTED" and not v.passed and v.exit_code == 130
    line = v.line()
    assert line.startswith("INTERRUPTED by SIGINT at t=6.0s of 60s; until then: ")
    assert "achieved 100.0% of the 120 arrivals due >= 95%" in line
    assert "FAIL" not in line
    results.interrupt_signal = signal.SIGTERM
    assert verdict(_profile(), results).exit_code == 143
    report = report_dict(_profile(), results, v, "http://127.0.0.1:1/")
    assert report["verdict"]["status"] == "INTERRUPTED" and report["verdict"]["line"] == line


def test_aborted_run_says_which_slo_broke_and_when() -> None:
    results = _results(10, 60, started=70, scheduled=1200)
    results.aborted, results.aborted_at = "errors 85.71% > 1.00%", 2.04
    v = verdict(_profile(), results)
    assert v.status == "ABORTED" and v.exit_code == 1
    assert v.line().startswith("ABORTED: errors 85.71% > 1.00% at t=2.0s (--abort-on-fail); until then: ")
    # Merged from workers: the first worker to break names the check.
    other = RunResults(aborted="errors 50.00% > 1.00%", aborted_at=1.5)
    results.merge(other)
    assert (results.aborted, results.aborted_at) == ("errors 50.00% > 1.00%", 1.5)
    back = RunResults.from_dict(results.to_dict())
    assert (back.aborted, back.aborted_at) == (results.aborted, results.aborted_at)


def test_complete_runs_still_pass_or_fail() -> None:
    assert verdict(_profile(), _results(1200, started=1200, scheduled=1200)).line().startswith("PASS: ")
    v = verdict(_profile(), _results(600, started=1200, scheduled=1200))
    assert v.line().startswith("FAIL: ") and "achieved 50.0% of target < 95%" in v.line() and v.exit_code == 1


def test_summary_table_has_no_nan_when_nothing_succeeded() -> None:
    results = RunResults()
    stats = results.op("ir")
    stats.failed = 5
    stats.errors["rejected"] = 5
    results.started = results.completed = 5
    results.elapsed = 1.0
    table = summary_table(_profile(flow=("ir",)), results)
    assert "nan" not in table.lower()
    row = next(line for line in table.splitlines() if line.startswith("ir "))
    assert row.split()[1:8] == ["0", "5", "0.0", "-", "-", "-", "-"]
