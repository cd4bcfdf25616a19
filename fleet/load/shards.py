"""Load beyond one machine: shard I of N plays exactly its share of the run, and the shards'
reports merge into the report of the whole.

A shard is a group of workers of one big split: shard ``I`` of ``N`` with ``W`` local workers
runs workers ``I*W .. I*W+W-1`` of ``split(N*W)`` (``fleet.load.segments``), so the shards
together play every arrival of the single-run schedule exactly once and device identities in
disjoint contiguous ranges, whatever ``W`` each machine uses. Shards start at one wall-clock
instant (``--start-at``, UTC) so their arrivals interleave as one schedule.

Merging adds counts and histogram buckets (percentiles are never averaged) and gives the
verdict from the SLO every report carries.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleet.errors import FleetError
from fleet.load.results import RunResults
from fleet.load.verdict import Verdict, report_document, slo_from_dict, slo_verdict

__all__ = ["MergeError", "Shard", "ShardError", "merge_reports", "parse_shard", "parse_start_at", "shard_from_env"]

INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by a Kubernetes Indexed Job in every pod
COUNT_ENV = "FLEET_SHARDS"  # the Job's completions, set by the manifest


class ShardError(FleetError):
    """A shard specification or start time that cannot be used."""


class MergeError(FleetError):
    """Reports that cannot be merged into one run."""


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def segment_indices(self, workers: int) -> range:
        """This shard's workers among the ``count * workers`` segments of the whole run."""
        return range(self.index * workers, (self.index + 1) * workers)


def parse_shard(text: str) -> Shard:
    """``I/N`` with 0 <= I < N."""
    index, sep, count = text.partition("/")
    try:
        shard = Shard(int(index), int(count)) if sep else None
    except ValueError:
        shard = None
    if shard is None:
        raise ShardError(f"shard must be I/N (e.g. 0/3), not {text!r}")
    return _checked(shard)


def _checked(shard: Shard) -> Shard:
    if shard.count < 1:
        raise ShardError(f"the shard count must be at least 1, not {shard.count}")
    if not 0 <= shard.index < shard.count:
        raise ShardError(f"shard index {shard.index} is outside 0..{shard.count - 1}")
    return shard


def shard_from_env(count: int | None, env: Mapping[str, str] = os.environ) -> Shard | None:
    """The shard of an Indexed Job's pod: the index from ``JOB_COMPLETION_INDEX``, the count from
    ``count`` (``--shards``, or ``FLEET_SHARDS``). None when no count is given (not sharded)."""
    if count is None:
        raw = env.get(COUNT_ENV)
        if not raw:
            return None
        try:
            count = int(raw)
        except ValueError:
            raise ShardError(f"{COUNT_ENV} must be a whole number, not {raw!r}") from None
    raw_index = env.get(INDEX_ENV)
    if raw_index is None:
        raise ShardError(f"--shards {count} needs {INDEX_ENV} (set by a Kubernetes Indexed Job) or --shard I/N")
    try:
        index = int(raw_index)
    except ValueError:
        raise ShardError(f"{INDEX_ENV} must be a whole number, not {raw_index!r}") from None
    return _checked(Shard(index, count))


def parse_start_at(text: str, now: float, *, tolerance: float = 1.0) -> float:
    """The common start instant (seconds since the epoch) from ISO 8601 UTC
    (``2026-12-05T13:00:00Z``) or epoch seconds. A time already past by more than ``tolerance``
    is refused: that shard would run out of step with the others."""
    value: float | None = None
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ShardError(f"start time must be ISO 8601 UTC (2026-12-05T13:00:00Z) or epoch seconds, not {text!r}") from None
        if parsed.tzinfo is None:
            raise ShardError(f"start time {text!r} has no time zone: end it with Z (UTC)")
        value = parsed.astimezone(UTC).timestamp()
    if not math.isfinite(value):
        raise ShardError(f"start time must be a finite time, not {text!r}")
    if value < now - tolerance:
        raise ShardError(f"start time {text} passed {now - value:.0f} s ago: shards would not be in step")
    return value


# -- merging ---------------------------------------------------------------------------------------


_SAME = ("profile", "flow", "duration_seconds", "slo", "closed_model")


def merge_reports(reports: Sequence[tuple[Path | str, dict[str, Any]]]) -> tuple[dict[str, Any], Verdict]:
    """One report (and its verdict) from the reports of one run's shards or separate workers.

    Every report must be of the same profile and SLO; shard reports must be the complete set
    0..N-1 of one run (same count, same start), each once."""
    if not reports:
        raise MergeError("no reports to merge")
    first_name, first = reports[0]
    if "slo" not in first:
        raise MergeError(f"{first_name} carries no SLO (written by an older fleet); it cannot be merged")
    for name, report in reports[1:]:
        for key in _SAME:
            if report.get(key) != first.get(key):
                raise MergeError(f"{name} differs from {first_name} in {key.replace('_', ' ')}: not one run")
    shards = [(name, report.get("shard")) for name, report in reports]
    if any(s is not None for _, s in shards):
        _check_shards(shards)
    merged = RunResults()
    for name, report in reports:
        try:
            merged.merge(RunResults.from_dict(report["results"]))
        except (KeyError, TypeError, ValueError, FleetError) as exc:
            raise MergeError(f"{name}: results cannot be read: {exc}") from None
    merged.workers = sum(int(r["results"].get("workers", 1)) for _, r in reports)
    slo = slo_from_dict(first["slo"])
    flow = list(first["flow"])
    closed = bool(first.get("closed_model"))
    duration = float(first["duration_seconds"])
    verdict = slo_verdict(slo, flow, closed, duration, merged)
    servers = sorted({str(r.get("server")) for _, r in reports})
    extra: dict[str, Any] = {"merged_from": [str(name) for name, _ in reports]}
    if first.get("start_at") is not None:
        extra["start_at"] = first["start_at"]
    doc = report_document(name=first["profile"], server=", ".join(servers), duration=duration, flow=flow,
                          slo=slo, closed=closed, results=merged, verdict=verdict, extra=extra)
    return doc, verdict


def _check_shards(shards: list[tuple[Path | str, Any]]) -> None:
    counts: set[int] = set()
    starts = set()
    seen: dict[int, Path | str] = {}
    for name, shard in shards:
        if not isinstance(shard, dict):
            raise MergeError(f"{name} is not a shard report, the others are")
        index, count = shard.get("index"), shard.get("count")
        if not isinstance(index, int) or not isinstance(count, int):  # not int(None) further on
            raise MergeError(f"{name}: its shard lacks a whole-number index or count"
                             f" (index {index!r}, count {count!r})")
        counts.add(count)
        starts.add(shard.get("start_at"))
        if index in seen:
            raise MergeError(f"{name} and {seen[index]} are both shard {index}")
        seen[index] = name
    if len(counts) != 1:
        raise MergeError(f"the reports are shards of runs of different sizes ({sorted(map(str, counts))})")
    if len(starts) != 1:
        raise MergeError("the shard reports have different start times: not one run")
    count = counts.pop()
    missing = sorted(set(range(int(count))) - set(seen))
    if missing:
        raise MergeError(f"shard(s) {', '.join(map(str, missing))} of {count} missing: the merge would not be the whole run")
