"""``fleet capacity``'s search, without I/O: which rate to try next, whether a step held, and the
answer (capacity with its interval, the knee, the first SLO to break and why).

A step runs the profile at one constant offered rate. Its first ``warmup`` seconds of arrivals
are measured apart (``RunResults.steady`` holds the rest, in histograms of its own), and the
steady window is checked for a steady state rather than assumed to be one: when completions fall
behind or latency keeps rising from the window's first half to its second, the CA is building a
queue, so the rate is not sustained even if the SLO checks still pass over a short step.

The search is a coarse step search (multiply the rate by ``factor`` from ``min_rate`` until a step
fails or ``max_rate`` holds), then bisection between the highest rate that held and the lowest
that failed until they are within ``tolerance`` of each other. The capacity is the highest rate
that held; the CA's true limit lies in ``[capacity, lowest failed rate)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet.errors import FleetError
from fleet.load.profiles import Profile, Slo
from fleet.load.results import SECOND_BUCKETS, RunResults, client_limit
from fleet.load.schedule import Constant, Poisson
from fleet.load.verdict import slo_verdict

__all__ = ["CapacityAnswer", "CapacitySearch", "SearchError", "StepAssessment", "answer", "assess_step", "steadiness",
           "step_profile"]


class SearchError(FleetError):
    """Search bounds that cannot be searched."""


# -- one step ----------------------------------------------------------------------------------------


def step_profile(profile: Profile, rate: float, duration: float) -> Profile:
    """The profile at one steady offered rate: constant arrivals (Poisson ones stay Poisson)."""
    shape = Poisson(rate, seed=profile.shape.seed) if isinstance(profile.shape, Poisson) else Constant(rate)
    return profile.with_overrides(shape=shape, duration=duration)


@dataclass
class StepAssessment:
    """What one step at ``rate`` showed, over its steady window."""

    rate: float
    passed: bool
    checks: list[tuple[bool, str]]  # the SLO checks over the steady window
    steady: bool
    steady_note: str
    achieved_rate: float  # first operation's successes per second in the steady window
    p99: dict[str, float | None]  # per operation, steady window
    errors: dict[str, int]  # error kind -> count, steady window, all operations
    fail_info: dict[str, int]  # PKIFailureInfo name -> count
    aborted: str = ""
    broken: bool = False  # clearly broken: no point going higher
    client_limit: str = ""  # the client itself was a limit (its HTTP connections all busy): what showed it

    @property
    def reasons(self) -> list[str]:
        """Why the step failed (empty when it held)."""
        out = [text for ok, text in self.checks if not ok]
        if not self.steady:
            out.append(self.steady_note)
        if self.aborted:
            out.insert(0, f"stopped early: {self.aborted}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate, "passed": self.passed, "steady": self.steady, "steady_note": self.steady_note,
            "checks": [{"ok": ok, "text": text} for ok, text in self.checks], "reasons": self.reasons,
            "achieved_rate": self.achieved_rate, "p99_seconds": self.p99, "errors": self.errors,
            "fail_info": self.fail_info, "aborted": self.aborted, "broken": self.broken,
            "client_limit": self.client_limit,
        }


def _quantile(counts: Sequence[int], q: float) -> float | None:
    """A quantile from per-second coarse buckets (``SECOND_BUCKETS``, +Inf last), interpolated."""
    total = sum(counts)
    if not total:
        return None
    rank, cum = q * total, 0
    for i, c in enumerate(counts):
        if c and cum + c >= rank:
            if i >= len(SECOND_BUCKETS):
                return SECOND_BUCKETS[-1]
            lower = SECOND_BUCKETS[i - 1] if i else 0.0
            return lower + (SECOND_BUCKETS[i] - lower) * (rank - cum) / c
        cum += c
    return SECOND_BUCKETS[-1]


def steadiness(results: RunResults, op: str, warmup: float, duration: float, latency_limit: float | None,
               ) -> tuple[bool, str]:
    """Whether the arrivals of ``[warmup, duration)`` reached a steady state: the median latency
    of the window's second half did not climb over its first half's (grew by half *and* by over
    a tenth of the p99 limit, or 50 ms without one: noise on a loaded machine is neither) and,
    when each half is 2 s or more, the second half finished as many operations per second as the
    first (within 20 %; shorter halves are too noisy: responses finish in bunches). The
    per-second series count by finish time, so the window is read shifted by the steady window's
    median latency."""
    steady = results.steady.ops.get(op) if results.steady is not None else None
    lag = steady.latency.percentile(50) if steady is not None and steady.latency.count else 0.0
    start, end = round(warmup + lag), round(min(duration + lag, results.elapsed))
    if end - start < 2 or op not in results.ops:
        return False, "not steady: the steady window is under 2 s or nothing finished in it"
    mid = (start + end) // 2
    done = results.completions[op].trimmed(end)
    failed = results.failures[op].trimmed(end)
    finished = [d + f for d, f in zip(done, failed)]
    first_rate = sum(finished[start:mid]) / (mid - start)
    second_rate = sum(finished[mid:end]) / (end - mid)
    if min(mid - start, end - mid) >= 2 and first_rate and second_rate < 0.8 * first_rate:
        return False, f"not steady: completions fell from {first_rate:.0f}/s to {second_rate:.0f}/s within the step"
    counts = results.latency_series[op].counts
    width = counts.shape[1]

    def half(a: int, b: int) -> list[int]:
        rows = counts[a:b]
        return rows.sum(axis=0).tolist() if len(rows) else [0] * width

    p50_first, p50_second = _quantile(half(start, mid), 0.5), _quantile(half(mid, end), 0.5)
    if p50_first is not None and p50_second is not None:
        floor = 0.1 * latency_limit if latency_limit else 0.05
        if p50_second > 1.5 * p50_first and p50_second - p50_first > floor:
            return False, (f"not steady: median latency rose from {p50_first * 1e3:.0f} ms to "
                           f"{p50_second * 1e3:.0f} ms within the step (a queue is building)")
    return True, f"steady from {warmup:g} s: {first_rate:.0f}/s then {second_rate:.0f}/s finished"


def assess_step(rate: float, slo: Slo, flow: Sequence[str], duration: float, warmup: float,
                results: RunResults) -> StepAssessment:
    """The step's verdict over its steady window, and its steadiness."""
    steady = results.steady if results.steady is not None else results
    verdict = slo_verdict(slo, flow, False, duration - warmup, steady)
    first = flow[0]
    ok_first = steady.ops[first].ok if first in steady.ops else 0
    window = max(min(results.elapsed, duration) - warmup, 1e-9)
    limit = slo.p99_seconds.get(first)
    is_steady, note = steadiness(results, first, warmup, duration, limit)
    errors: dict[str, int] = {}
    fail_info: dict[str, int] = {}
    for stats in steady.ops.values():
        for k, v in stats.errors.items():
            errors[k] = errors.get(k, 0) + v
        for k, v in stats.fail_info.items():
            fail_info[k] = fail_info.get(k, 0) + v
    p99 = {op: (steady.ops[op].latency.percentile(99) if steady.ops[op].latency.count else None)
           for op in dict.fromkeys(flow) if op in steady.ops}  # flow order: the first operation first
    passed = verdict.passed and is_steady and not results.aborted
    total = sum(s.total for s in steady.ops.values())
    failed = sum(s.failed for s in steady.ops.values())
    error_rate = failed / total if total else 1.0
    achieved = ok_first / window
    # Clearly broken: most operations fail, or under half the offered rate gets through.
    broken = bool(results.aborted) or error_rate > 0.5 or achieved < 0.5 * rate
    # Requests that queued for one of the client's own connections: what failed may be the client.
    return StepAssessment(rate, passed, verdict.checks, is_steady, note, achieved, p99, errors, fail_info,
                          results.aborted, broken and not passed, client_limit(results.transport))


# -- the search -----------------------------------------------------------------------------------------


@dataclass
class CapacitySearch:
    """Coarse steps up by ``factor`` from ``min_rate``, then bisection to ``tolerance``:
    ``while (rate := search.next_rate()) is not None: search.record(rate, passed, broken)``."""

    min_rate: float
    max_rate: float
    factor: float = 2.0
    tolerance: float = 0.03
    max_steps: int = 24
    highest_pass: float | None = None
    lowest_fail: float | None = None
    steps: list[tuple[float, bool]] = field(default_factory=list)
    stop_reason: str = ""

    def __post_init__(self) -> None:
        if not (0 < self.min_rate <= self.max_rate and math.isfinite(self.max_rate)):
            raise SearchError(f"--min-rate {self.min_rate:g} and --max-rate {self.max_rate:g} must satisfy 0 < min <= max")
        if self.factor <= 1:
            raise SearchError(f"the step factor must be above 1, not {self.factor:g}")
        if not 0 < self.tolerance < 1:
            raise SearchError(f"the tolerance must be between 0 and 1, not {self.tolerance:g}")

    @property
    def phase(self) -> str:
        return "coarse" if self.lowest_fail is None else "bisect"

    def next_rate(self) -> float | None:
        """The next rate to try, or None when the answer is known (``stop_reason`` says why)."""
        if self.stop_reason:
            return None
        if len(self.steps) >= self.max_steps:
            self.stop_reason = f"step limit ({self.max_steps}) reached"
            return None
        lo, hi = self.highest_pass, self.lowest_fail
        if hi is None:  # coarse: up by factor
            if lo is None:
                return self.min_rate
            if lo >= self.max_rate:
                self.stop_reason = f"held at --max-rate {self.max_rate:g}/s: the capacity is at least that"
                return None
            return min(lo * self.factor, self.max_rate)
        if lo is None:
            self.stop_reason = f"failed already at --min-rate {self.min_rate:g}/s"
            return None
        if (hi - lo) / lo <= self.tolerance:
            self.stop_reason = f"bracketed within {self.tolerance:.0%}"
            return None
        return _round_rate((lo + hi) / 2)

    def record(self, rate: float, passed: bool, broken: bool = False) -> None:
        self.steps.append((rate, passed))
        if passed:
            if self.highest_pass is None or rate > self.highest_pass:
                self.highest_pass = rate
            if self.lowest_fail is not None and rate >= self.lowest_fail:
                self.lowest_fail = None  # noise: a higher rate held after a lower one failed; search on
        elif self.lowest_fail is None or rate < self.lowest_fail:
            self.lowest_fail = rate
        if not passed and broken and self.highest_pass is None:
            self.stop_reason = f"clearly broken already at {rate:g}/s"


def _round_rate(rate: float) -> float:
    """Rates to 3 significant figures (readable step names, no 97.65625/s)."""
    digits = 2 - math.floor(math.log10(rate))
    return round(rate, max(digits, 0))


# -- the answer -----------------------------------------------------------------------------------------


@dataclass
class CapacityAnswer:
    capacity: float | None  # the highest rate that held (None: none did)
    interval: tuple[float | None, float | None]  # the limit lies in [low, high)
    knee: float | None
    knee_note: str
    first_break: dict[str, Any] | None  # the lowest failing step: rate, reasons, errors, failInfo
    stop_reason: str
    caveat: str = ""  # the step that set the capacity was client-limited: the CA may sustain more

    def to_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "interval": list(self.interval), "knee": self.knee,
                "knee_note": self.knee_note, "first_break": self.first_break, "stop_reason": self.stop_reason,
                "caveat": self.caveat}

    def line(self) -> str:
        low, high = self.interval
        if self.capacity is None:
            cap = f"capacity below {high:g}/s" if high is not None else "no capacity measured"
        elif high is None:
            cap = f"capacity at least {self.capacity:g}/s (the highest rate tried)"
        else:
            cap = f"capacity {self.capacity:g}/s (the limit lies in [{low:g}, {high:g}) /s)"
        out = [cap]
        if self.caveat:
            out.append(self.caveat)
        if self.knee is not None:
            out.append(f"knee at {self.knee:g}/s")
        if self.first_break:
            out.append(f"first to break at {self.first_break['rate']:g}/s: {self.first_break['why']}")
        return "; ".join(out)


def answer(steps: Sequence[StepAssessment], search: CapacitySearch) -> CapacityAnswer:
    """The capacity, its interval, the knee and the first SLO to break, from the steps taken."""
    ordered = sorted(steps, key=lambda s: s.rate)
    failed = [s for s in ordered if not s.passed]
    first_break = None
    if failed:
        low = failed[0]
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(low.errors.items(), key=lambda kv: -kv[1])[:3])
        fail = ", ".join(f"{k} {v}" for k, v in sorted(low.fail_info.items(), key=lambda kv: -kv[1])[:3])
        why = "; ".join(low.reasons) or "failed"
        if kinds:
            why += f" (errors: {kinds}" + (f"; failInfo: {fail}" if fail else "") + ")"
        if low.client_limit:
            why += (f"; but the client was a limit too: {low.client_limit} (raise [run] max_connections or "
                    "workers, or --shards: the CA may sustain more)")
        first_break = {"rate": low.rate, "why": why, "reasons": low.reasons, "errors": low.errors,
                       "fail_info": low.fail_info, "client_limit": low.client_limit}
    knee, note = _knee(ordered)
    held = next((s for s in ordered if s.passed and s.rate == search.highest_pass), None)
    caveat = (f"a lower bound: the client was a limit at {held.rate:g}/s: {held.client_limit}"
              if held is not None and held.client_limit else "")
    return CapacityAnswer(search.highest_pass, (search.highest_pass, search.lowest_fail), knee, note, first_break,
                          search.stop_reason, caveat)


KNEE_MIN_RISE = 0.010  # seconds of p99 rise below which a doubling is jitter, not a bend


def _knee(steps: Sequence[StepAssessment]) -> tuple[float | None, str]:
    """The last offered rate before the latency/throughput curve bends: before the first step
    whose first-operation p99 is over twice the lowest step's (and at least ``KNEE_MIN_RISE``
    above it, so loopback jitter of a few ms on a fast CA is not a bend), whose achieved rate
    falls under 98 % of the offered, or that fails."""
    if not steps:
        return None, "no steps"
    base = next((s for s in steps if s.p99 and next(iter(s.p99.values())) is not None), None)
    base_p99 = next(iter(base.p99.values())) if base is not None else None
    knee = None
    for s in steps:
        p99 = next(iter(s.p99.values()), None) if s.p99 else None
        bent = (not s.passed or s.achieved_rate < 0.98 * s.rate
                or (base_p99 is not None and p99 is not None and p99 > max(2 * base_p99, base_p99 + KNEE_MIN_RISE)))
        if bent:
            if knee is None:
                return None, f"bent already at the lowest rate tried ({s.rate:g}/s)"
            return knee, f"latency or throughput bends above {knee:g}/s (at {s.rate:g}/s)"
        knee = s.rate
    return knee, "no bend up to the highest rate tried"
