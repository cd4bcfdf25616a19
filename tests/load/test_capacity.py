"""fleet capacity's search without I/O (fleet.load.capacity): synthetic steps with a known limit,
steady-state detection over synthetic per-second results, and the answer's parts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fleet.load.capacity import (
    CapacitySearch,
    SearchError,
    StepAssessment,
    answer,
    assess_step,
    steadiness,
)
from fleet.load.profiles import Slo
from fleet.load.results import RunResults


def _search_against(limit: float, **kw: float) -> CapacitySearch:
    search = CapacitySearch(**{"min_rate": 10.0, "max_rate": 5000.0, **kw})  # type: ignore[arg-type]
    while (rate := search.next_rate()) is not None:
        search.record(rate, rate <= limit)
    return search


@pytest.mark.parametrize("limit", [12.0, 97.0, 437.0, 1000.0, 4321.0])
def test_search_brackets_a_known_limit_within_tolerance(limit: float) -> None:
    search = _search_against(limit, tolerance=0.03)
    assert search.highest_pass is not None and search.lowest_fail is not None
    assert search.highest_pass <= limit < search.lowest_fail
    assert (search.lowest_fail - search.highest_pass) / search.highest_pass <= 0.03
    assert limit - search.highest_pass <= 0.05 * limit  # the answer is within 5 %
    assert len(search.steps) <= 16
    assert search.stop_reason == "bracketed within 3%"
    coarse = [r for r, _ in search.steps[: search.steps.index(next(s for s in search.steps if not s[1])) + 1]]
    assert coarse == sorted(coarse)  # the coarse phase only climbs


def test_search_stops_at_the_bounds() -> None:
    held = _search_against(1e9)
    assert held.highest_pass == 5000.0 and held.lowest_fail is None
    assert "held at --max-rate 5000/s" in held.stop_reason
    failed = _search_against(1.0)
    assert failed.highest_pass is None and failed.steps == [(10.0, False)]
    assert "failed already at --min-rate 10/s" in failed.stop_reason


def test_clearly_broken_first_step_stops_and_step_limit_holds() -> None:
    search = CapacitySearch(10, 1000)
    rate = search.next_rate()
    assert rate == 10
    search.record(rate, False, broken=True)
    assert search.next_rate() is None and "clearly broken already at 10/s" in search.stop_reason
    limited = _search_against(437.0, max_steps=3)
    assert len(limited.steps) == 3 and "step limit (3)" in limited.stop_reason


def test_a_higher_rate_holding_after_a_lower_failed_resumes_the_search() -> None:
    search = CapacitySearch(10, 1000)
    search.record(100, True)
    search.record(200, False)
    search.record(150, False)
    search.record(160, True)  # noise: 150 failed, 160 held
    assert search.lowest_fail is None and search.highest_pass == 160
    assert search.next_rate() == 320


@pytest.mark.parametrize("bad", [{"min_rate": 0}, {"min_rate": 50, "max_rate": 10}, {"factor": 1.0},
                                 {"tolerance": 0}, {"max_rate": float("inf")}])
def test_bad_bounds_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(SearchError):
        CapacitySearch(**{"min_rate": 10.0, "max_rate": 100.0, **bad})  # type: ignore[arg-type]


def _step(rate: float, seconds: int, latency: callable, finished: callable, warmup: float = 2.0,  # type: ignore[valid-type]
          fail_every: int = 0) -> RunResults:
    """A synthetic step: ``finished(s)`` operations end in second ``s``, each ``latency(s)`` late."""
    results = RunResults()
    results.measure_from(warmup)
    n = 0
    for s in range(seconds):
        for k in range(finished(s)):
            t = s + (k + 0.5) / max(finished(s), 1)
            lat = latency(s)
            n += 1
            if fail_every and n % fail_every == 0:
                results.failed("ir", t, lat, "error_message", ("systemUnavail",))
            else:
                results.succeeded("ir", t, lat, lat)
    results.elapsed = float(seconds)
    assert results.steady is not None
    results.steady.scheduled = results.steady.started = int(rate * (seconds - warmup))
    return results


def test_steadiness_sees_a_queue_building_and_a_falling_rate() -> None:
    flat = _step(100, 10, lambda s: 0.02, lambda s: 100)
    assert steadiness(flat, "ir", 2, 10, 1.0) == (True, "steady from 2 s: 100/s then 100/s finished")
    rising = _step(100, 10, lambda s: 0.05 * (s + 1), lambda s: 100)
    ok, note = steadiness(rising, "ir", 2, 10, 1.0)
    assert not ok and "median latency rose" in note and "a queue is building" in note
    falling = _step(100, 10, lambda s: 0.02, lambda s: 100 if s < 6 else 60)
    ok, note = steadiness(falling, "ir", 2, 10, 1.0)
    assert not ok and "completions fell from 100/s to 60/s" in note
    noisy = _step(100, 10, lambda s: 0.004 if s < 6 else 0.012, lambda s: 100)  # 3x, but 8 ms: noise
    assert steadiness(noisy, "ir", 2, 10, 1.0)[0]
    short = _step(100, 3, lambda s: 0.02, lambda s: 100)
    assert not steadiness(short, "ir", 2, 3, 1.0)[0]


def test_assess_step_uses_the_steady_window_only() -> None:
    slo = Slo(p99_seconds={"ir": 0.5}, max_error_rate=0.01, min_rate_ratio=0.95)
    # Warm-up is slow (2 s latency in seconds 0-1); the steady window is fast: the step holds.
    results = _step(100, 10, lambda s: 2.0 if s < 2 else 0.02, lambda s: 100)
    assert results.ops["ir"].latency.percentile(99) > 1.0
    held = assess_step(100, slo, ["ir"], 10, 2, results)
    assert held.passed and held.steady and held.p99["ir"] == pytest.approx(0.02, rel=0.01)
    assert held.achieved_rate == pytest.approx(100, rel=0.01)
    errors = _step(100, 10, lambda s: 0.02, lambda s: 100, fail_every=20)
    failed = assess_step(100, slo, ["ir"], 10, 2, errors)
    assert not failed.passed and failed.reasons[0].startswith("errors 5.0")
    assert failed.fail_info == {"systemUnavail": 40} and failed.errors == {"error_message": 40}
    assert not failed.broken  # failing, but not clearly broken: the search goes on around it
    assert not failed.client_limit and not held.client_limit


def test_a_step_whose_requests_queued_for_the_clients_connections_names_the_client() -> None:
    """Seen against a CA holding each answer 0.2 s: one worker's 200 connections carry at most
    500 ir + certConf pairs a second, the certConfs queue behind new irs, transactions live
    longer at the CA and it answers systemUnavail. The CA is blamed unless the client says so."""
    slo = Slo(p99_seconds={"ir": 2.0}, max_error_rate=0.01, min_rate_ratio=0.95)
    results = _step(100, 10, lambda s: 0.4, lambda s: 100, fail_every=20)
    results.transport = {"requests": 2000, "pool_waits": 300, "pool_wait_us": 300 * 150_000, "max_connections": 200}
    failed = assess_step(100, slo, ["ir"], 10, 2, results)
    assert failed.client_limit == ("300 of 2000 requests (15.0%) queued 150 ms on average for one of the client's "
                                   "200 HTTP connections")
    assert failed.to_dict()["client_limit"] == failed.client_limit
    search = CapacitySearch(50, 100)
    held = _assessed(50, True, 0.4)
    for s in (held, failed):
        search.record(s.rate, s.passed)
    found = answer([held, failed], search)
    assert found.first_break is not None and found.first_break["client_limit"] == failed.client_limit
    assert "but the client was a limit too: 300 of 2000 requests" in found.line()
    assert "raise [run] max_connections or workers, or --shards: the CA may sustain more" in found.line()
    assert not found.caveat  # the step that held had no queue
    queued = replace(held, client_limit="90 of 1000 requests (9.0%) queued")
    limited = answer([queued, failed], search)
    assert limited.caveat == "a lower bound: the client was a limit at 50/s: 90 of 1000 requests (9.0%) queued"
    assert limited.line().startswith("capacity 50/s (the limit lies in [50, 100) /s); a lower bound: ")
    assert limited.to_dict()["caveat"] == limited.caveat
    results.transport["pool_waits"] = 20  # 1%: a few requests queue now and then
    assert not assess_step(100, slo, ["ir"], 10, 2, results).client_limit


def _assessed(rate: float, passed: bool, p99: float, achieved: float | None = None, **kw: object) -> StepAssessment:
    return StepAssessment(rate, passed, [(passed, "check")], True, "steady", achieved if achieved is not None else rate,
                          {"ir": p99}, dict(kw.get("errors", {})), dict(kw.get("fail_info", {})))  # type: ignore[arg-type]


def test_answer_names_capacity_interval_knee_and_first_break() -> None:
    search = CapacitySearch(10, 1000)
    steps = [_assessed(50, True, 0.010), _assessed(100, True, 0.012), _assessed(150, True, 0.030),
             _assessed(200, False, 0.9, achieved=150, errors={"error_message": 9}, fail_info={"systemUnavail": 9})]
    for s in steps:
        search.record(s.rate, s.passed)
    found = answer(steps, search)
    assert found.capacity == 150 and found.interval == (150, 200)
    assert found.knee == 100  # p99 more than doubled at 150/s
    assert found.first_break is not None and found.first_break["rate"] == 200
    assert "failInfo: systemUnavail 9" in found.first_break["why"]
    line = found.line()
    assert "capacity 150/s" in line and "[150, 200)" in line and "knee at 100/s" in line


def test_a_few_ms_of_jitter_on_a_fast_ca_is_not_a_knee() -> None:
    # Seen against a CA capped at 1,000/s by its token bucket: p99 3 -> 8 -> 11 ms is doubling but
    # not a bend; the curve bends where the CA starts refusing.
    search = CapacitySearch(250, 2000)
    steps = [_assessed(250, True, 0.003), _assessed(500, True, 0.008), _assessed(1000, True, 0.011),
             _assessed(2000, False, 0.024, achieved=1000)]
    for s in steps:
        search.record(s.rate, s.passed)
    assert answer(steps, search).knee == 1000
