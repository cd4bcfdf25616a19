"""The SLO verdict of a run: PASS, FAIL, ABORTED or INTERRUPTED, with one line per check.

Computed from mergeable results only (histograms and counts), so a verdict over merged worker
or shard results is exact: percentiles come from the merged histograms, never averaged."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleet.load.profiles import Slo
from fleet.load.results import RunResults

__all__ = ["Verdict", "report_document", "slo_dict", "slo_from_dict", "slo_verdict"]


@dataclass
class Verdict:
    """The SLO checks of a run. ``stopped`` says why a run did not run to its end: then there is
    no PASS or FAIL, only what was measured until then."""

    passed: bool
    checks: list[tuple[bool, str]]
    stopped: str = ""  # "ABORTED: <check> at t=..s" or "INTERRUPTED at t=..s of ..s"
    exit_code: int = -1  # -1: 0 when passed, else 1

    def __post_init__(self) -> None:
        if self.exit_code < 0:
            self.exit_code = 0 if self.passed else 1

    @property
    def status(self) -> str:
        """PASS, FAIL, ABORTED or INTERRUPTED."""
        if self.stopped:
            return self.stopped.split(":")[0].split()[0]
        return "PASS" if self.passed else "FAIL"

    def line(self) -> str:
        parts = "; ".join(text for _, text in self.checks)
        if self.stopped:
            return f"{self.stopped}; until then: {parts or 'no SLO thresholds set'}"
        if not self.checks:
            return "PASS: no SLO thresholds set" if self.passed else "FAIL"
        return f"{self.status}: {parts}"




def slo_verdict(slo: Slo, flow: Sequence[str], closed: bool, duration: float, results: RunResults) -> Verdict:
    """The SLO checks over ``results``: from a profile after a run, or from the SLO a report
    carries when shard reports are merged (the same checks either way)."""
    checks: list[tuple[bool, str]] = []
    for op, limit in sorted(slo.p99_seconds.items()):
        stats = results.ops.get(op)
        if stats is None or not stats.latency.count:
            checks.append((False, f"{op} p99: no successful {op}"))
            continue
        p99 = stats.latency.percentile(99)
        checks.append((p99 <= limit, f"{op} p99 {p99 * 1e3:.0f} ms {'<=' if p99 <= limit else '>'} {limit * 1e3:.0f} ms"))
    total = sum(s.total for s in results.ops.values())
    failed = sum(s.failed for s in results.ops.values())
    if slo.max_error_rate is not None and not total:
        checks.append((False, "errors: no operation finished"))
    elif slo.max_error_rate is not None:
        rate = failed / total
        ok = rate <= slo.max_error_rate
        checks.append((ok, f"errors {rate:.2%} {'<=' if ok else '>'} {slo.max_error_rate:.2%}"))
    stopped_early = results.interrupted or bool(results.aborted)
    if slo.min_rate_ratio is not None and not closed:
        first = results.ops.get(flow[0])
        # A run stopped early is measured against the arrivals that had fallen due by then.
        target = results.started + results.dropped if stopped_early else results.scheduled
        achieved = (first.ok if first else 0) / target if target else 0.0
        ok = achieved >= slo.min_rate_ratio
        of = f"the {target} arrivals due" if stopped_early else "target"
        checks.append((ok, f"achieved {achieved:.1%} of {of} {'>=' if ok else '<'} {slo.min_rate_ratio:.0%}"))
    passed = all(ok for ok, _ in checks)
    if results.aborted:
        stopped = f"ABORTED: {results.aborted} at t={results.aborted_at:.1f}s (--abort-on-fail)"
        return Verdict(False, checks, stopped, 1)
    if results.interrupted:
        sig = results.interrupt_signal or signal.SIGINT
        stopped = f"INTERRUPTED by {signal.Signals(sig).name} at t={results.elapsed:.1f}s of {duration:g}s"
        return Verdict(False, checks, stopped, 128 + sig)
    return Verdict(passed, checks)


def slo_dict(slo: Slo) -> dict[str, Any]:
    """The SLO as a report carries it, so merged shard reports get the same verdict."""
    return {"p99_seconds": dict(slo.p99_seconds), "max_error_rate": slo.max_error_rate,
            "min_rate_ratio": slo.min_rate_ratio}


def slo_from_dict(data: dict[str, Any]) -> Slo:
    return Slo(p99_seconds={str(k): float(v) for k, v in (data.get("p99_seconds") or {}).items()},
               max_error_rate=data.get("max_error_rate"), min_rate_ratio=data.get("min_rate_ratio"))


def report_document(
    *, name: str, server: str, duration: float, flow: Sequence[str], slo: Slo, closed: bool,
    results: RunResults, verdict: Verdict, extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report of a run (``fleet run --report``) or of merged shards (``fleet report merge``)."""
    target_rate = None if closed else results.scheduled / duration if duration else None
    first = results.ops.get(flow[0])
    return {
        "fleet_report": 1,
        "profile": name,
        "server": server,
        "duration_seconds": duration,
        "flow": list(flow),
        "closed_model": closed,
        "slo": slo_dict(slo),
        "target_rate": target_rate,
        "achieved_rate": (first.ok / results.elapsed) if first and results.elapsed else 0.0,
        "verdict": {
            "passed": verdict.passed, "status": verdict.status, "line": verdict.line(),
            "checks": [t for _, t in verdict.checks],
        },
        **(extra or {}),
        "results": results.to_dict(),
    }
