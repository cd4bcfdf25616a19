"""What a run measured, in mergeable form: counts, error kinds, histograms and per-second series.

Worker processes each fill one ``RunResults``; the orchestrator merges them (histograms are
added bucket by bucket, never averaged) and derives percentiles and the verdict from the merge.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fleet.load.histogram import LatencyHistogram

QUANTILES = (50.0, 90.0, 99.0, 99.9)

# Per-second latency buckets (upper bounds, seconds; +Inf last): coarse on purpose, ~16 integers
# per operation per second, enough for p50/p99 over time in reports. Same bounds as /metrics.
SECOND_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


@dataclass
class OpStats:
    """One operation (ir, kur, ...): outcomes and latencies.

    ``latency`` is measured from the intended start (open model, no coordinated omission);
    ``service`` from when the request was actually sent.
    """

    ok: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # kind -> count (bounded set)
    fail_info: Counter[str] = field(default_factory=Counter)  # PKIFailureInfo name -> count
    polls: int = 0
    warnings: Counter[str] = field(default_factory=Counter)  # accepted CA habits (fleet.cmp.habits.WARNINGS)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    service: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def merge(self, other: OpStats) -> None:
        self.ok += other.ok
        self.failed += other.failed
        self.errors.update(other.errors)
        self.fail_info.update(other.fail_info)
        self.polls += other.polls
        self.warnings.update(other.warnings)
        self.latency.merge(other.latency)
        self.service.merge(other.service)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": self.failed,
            "errors": dict(self.errors),
            "fail_info": dict(self.fail_info),
            "polls": self.polls,
            "warnings": dict(self.warnings),
            "latency": self.latency.to_dict(),
            "service": self.service.to_dict(),
            "latency_seconds": _quantiles(self.latency),
            "service_seconds": _quantiles(self.service),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpStats:
        return cls(
            ok=data["ok"],
            failed=data["failed"],
            errors=Counter(data["errors"]),
            fail_info=Counter(data["fail_info"]),
            polls=data["polls"],
            warnings=Counter(data.get("warnings", {})),
            latency=LatencyHistogram.from_dict(data["latency"]),
            service=LatencyHistogram.from_dict(data["service"]),
        )


def _quantiles(h: LatencyHistogram) -> dict[str, float | None]:
    quantiles: dict[str, float | None]
    if not h.count:
        quantiles = {f"p{q:g}": None for q in QUANTILES}
        return quantiles | {"mean": None, "max": None}
    quantiles = {f"p{q:g}": float(v) for q, v in zip(QUANTILES, h.percentiles(QUANTILES))}
    return quantiles | {"mean": h.mean, "max": h.max}


@dataclass
class AnnouncementStats:
    """What a run's devices received of the announcements the CA pushed (``[announcements]``).

    ``delivery`` runs from the run's rr (the CA queues the rann as it accepts it) to the device's
    receipt of the rann: an upper bound of the CA's send-to-receipt time that needs no clock
    shared with the CA. The re-enrollments a rann triggers are the ``reenroll`` operation, and the
    run's revocations the ``revoke`` operation, in ``RunResults.ops``."""

    received: Counter[str] = field(default_factory=Counter)  # believed, by body (rann, ckuann, ...)
    refused: Counter[str] = field(default_factory=Counter)  # by PKIFailureInfo name
    delivery: LatencyHistogram = field(default_factory=LatencyHistogram)
    reenrollments: int = 0  # triggered by a rann of a device's current certificate
    trust_updates: int = 0  # ckuann believed: a new trust anchor for the worker's devices
    not_current: int = 0  # rann of a certificate no device holds any more
    unannounced: int = 0  # the run's revocations whose rann had not come at the end

    def merge(self, other: AnnouncementStats) -> None:
        self.received.update(other.received)
        self.refused.update(other.refused)
        self.delivery.merge(other.delivery)
        self.reenrollments += other.reenrollments
        self.trust_updates += other.trust_updates
        self.not_current += other.not_current
        self.unannounced += other.unannounced

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": dict(self.received), "refused": dict(self.refused), "delivery": self.delivery.to_dict(),
            "delivery_seconds": _quantiles(self.delivery), "reenrollments": self.reenrollments,
            "trust_updates": self.trust_updates, "not_current": self.not_current, "unannounced": self.unannounced,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnnouncementStats:
        return cls(Counter(data.get("received", {})), Counter(data.get("refused", {})),
                   LatencyHistogram.from_dict(data["delivery"]), int(data.get("reenrollments", 0)),
                   int(data.get("trust_updates", 0)), int(data.get("not_current", 0)), int(data.get("unannounced", 0)))


class SecondSeries:
    """Per-second counters (completions, errors) from the run's start; grows as needed.

    ``add`` appends the time to a list; the times are counted in batches of ``_BATCH`` with
    numpy, and before anything reads ``values``."""

    def __init__(self, seconds: int = 64) -> None:
        self._values = np.zeros(seconds, dtype=np.int64)
        self._pending: list[float] = []

    @property
    def values(self) -> npt.NDArray[np.int64]:
        if self._pending:
            self._count_pending()
        return self._values

    @values.setter
    def values(self, values: npt.NDArray[np.int64]) -> None:
        self._pending = []
        self._values = values

    def add(self, t: float, n: int = 1) -> None:
        if n != 1:
            self._pending.extend([t] * n)
        else:
            self._pending.append(t)
        if len(self._pending) >= _BATCH:
            self._count_pending()

    def _count_pending(self) -> None:
        seconds = _seconds(self._pending)
        self._pending = []
        self._values = _grown(self._values, int(seconds.max()) + 1)
        self._values += np.bincount(seconds, minlength=len(self._values))

    def merge(self, other: SecondSeries) -> None:
        mine, theirs = self.values, other.values
        merged = np.zeros(max(len(mine), len(theirs)), dtype=np.int64)
        merged[: len(mine)] += mine
        merged[: len(theirs)] += theirs
        self.values = merged

    def trimmed(self, seconds: int) -> list[int]:
        out = self.values[:seconds].tolist()
        return out + [0] * (seconds - len(out))


class SecondBuckets:
    """Per-second latency histograms with ``SECOND_BUCKETS`` bounds, and each second's exact
    smallest and largest latency (a percentile read from the coarse buckets is clamped to them,
    so it never claims more than was seen); rows add, minima and maxima combine, when merged.

    Batched like ``SecondSeries``: read ``counts``/``extremes``, never ``_counts``."""

    def __init__(self, seconds: int = 64) -> None:
        self._counts = np.zeros((seconds, len(SECOND_BUCKETS) + 1), dtype=np.int64)
        self._min = np.full(seconds, np.inf)
        self._max = np.full(seconds, -np.inf)
        self._times: list[float] = []
        self._latencies: list[float] = []

    @property
    def counts(self) -> npt.NDArray[np.int64]:
        if self._times:
            self._count_pending()
        return self._counts

    @counts.setter
    def counts(self, counts: npt.NDArray[np.int64]) -> None:
        """Replace the counts; each second's minimum and maximum become unknown (inf, -inf)."""
        self._times, self._latencies = [], []
        self._counts = counts
        self._min = np.full(len(counts), np.inf)
        self._max = np.full(len(counts), -np.inf)

    @property
    def extremes(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Each second's smallest and largest latency (inf and -inf where none is known)."""
        if self._times:
            self._count_pending()
        return self._min, self._max

    def record(self, t: float, latency: float) -> None:
        self._times.append(t)
        self._latencies.append(latency)
        if len(self._times) >= _BATCH:
            self._count_pending()

    def _count_pending(self) -> None:
        rows = _seconds(self._times)
        # side="left" as bisect_left: a latency equal to a bound counts in that bound's bucket
        latencies = np.array(self._latencies, dtype=np.float64)
        columns = np.searchsorted(_SECOND_BOUNDS, latencies, side="left")
        self._times, self._latencies = [], []
        size = int(rows.max()) + 1
        self._counts = _grown(self._counts, size)
        self._min = _grown(self._min, size, np.inf)
        self._max = _grown(self._max, size, -np.inf)
        np.add.at(self._counts, (rows, columns), 1)
        np.minimum.at(self._min, rows, latencies)
        np.maximum.at(self._max, rows, latencies)

    def merge(self, other: SecondBuckets) -> None:
        mine, theirs = self.counts, other.counts
        (my_min, my_max), (their_min, their_max) = self.extremes, other.extremes
        size = max(len(mine), len(theirs))
        merged = np.zeros((size, mine.shape[1]), dtype=np.int64)
        merged[: len(mine)] += mine
        merged[: len(theirs)] += theirs
        low, high = np.full(size, np.inf), np.full(size, -np.inf)
        low[: len(my_min)] = my_min
        high[: len(my_max)] = my_max
        np.minimum(low[: len(their_min)], their_min, out=low[: len(their_min)])
        np.maximum(high[: len(their_max)], their_max, out=high[: len(their_max)])
        self.counts = merged
        self._min, self._max = low, high

    def to_dict(self, seconds: int) -> dict[str, Any]:
        counts = self.counts
        rows = counts[:seconds].tolist()
        rows += [[0] * counts.shape[1]] * (seconds - len(rows))
        low, high = self.extremes
        return {
            "bounds": list(SECOND_BUCKETS), "counts": rows,
            "min": _finite_or_none(low, seconds), "max": _finite_or_none(high, seconds),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SecondBuckets:
        series = cls(1)
        if data and data.get("counts"):
            series.counts = np.array(data["counts"], dtype=np.int64)
            for name, unknown, target in (("min", np.inf, series._min), ("max", -np.inf, series._max)):
                values = (data.get(name) or [])[: len(target)]
                target[: len(values)] = [unknown if v is None else float(v) for v in values]
        return series


_BATCH = 1024  # per-second samples held before they are counted with numpy
_SECOND_BOUNDS = np.array(SECOND_BUCKETS, dtype=np.float64)


def _seconds(times: list[float]) -> npt.NDArray[np.intp]:
    """The whole second of each time since the run's start (negative times in second 0)."""
    return np.maximum(np.array(times, dtype=np.float64), 0.0).astype(np.intp)


def _grown(values: npt.NDArray[Any], rows: int, fill: float = 0) -> npt.NDArray[Any]:
    """``values`` with at least ``rows`` rows (doubling, new rows ``fill``), or itself."""
    if rows <= len(values):
        return values
    grown = np.full((max(rows, 2 * len(values)), *values.shape[1:]), fill, dtype=values.dtype)
    grown[: len(values)] = values
    return grown


def _finite_or_none(values: npt.NDArray[np.float64], seconds: int) -> list[float | None]:
    """The first ``seconds`` values for JSON, None where unknown (padded with None)."""
    out: list[float | None] = [float(v) if np.isfinite(v) else None for v in values[:seconds]]
    return out + [None] * (seconds - len(out))


CLIENT_LIMIT_SHARE = 0.01  # more requests than this queued for an HTTP connection: the client was a limit


def pool_wait_share(transport: dict[str, int]) -> float:
    """The share of HTTP requests that queued for a free connection (0 for CoAP or no requests)."""
    requests = transport.get("requests", 0)
    return transport.get("pool_waits", 0) / requests if requests else 0.0


def client_limit(transport: dict[str, int]) -> str:
    """``pool_note`` when more than ``CLIENT_LIMIT_SHARE`` of the requests queued for a connection
    (the client itself was a limit), else ""."""
    return pool_note(transport) if pool_wait_share(transport) > CLIENT_LIMIT_SHARE else ""


def pool_note(transport: dict[str, int]) -> str:
    """What the HTTP pool counters (summed over workers and shards) say, in one phrase."""
    waits = transport.get("pool_waits", 0)
    mean_ms = transport.get("pool_wait_us", 0) / waits / 1e3 if waits else 0.0
    return (f"{waits} of {transport.get('requests', 0)} requests ({pool_wait_share(transport):.1%}) queued "
            f"{mean_ms:.0f} ms on average for one of the client's {transport.get('max_connections', 0)} HTTP "
            "connections")


@dataclass
class RunResults:
    """Everything one worker (or the merge of all) measured."""

    ops: dict[str, OpStats] = field(default_factory=dict)
    scheduled: int = 0
    started: int = 0
    dropped: int = 0
    completed: int = 0
    lateness: LatencyHistogram = field(default_factory=LatencyHistogram)
    in_flight_peak: int = 0
    completions: dict[str, SecondSeries] = field(default_factory=dict)
    failures: dict[str, SecondSeries] = field(default_factory=dict)
    latency_series: dict[str, SecondBuckets] = field(default_factory=dict)
    elapsed: float = 0.0
    workers: int = 1
    interrupted: bool = False  # stopped by Ctrl-C/SIGTERM: what was measured is still valid
    interrupt_signal: int = 0  # the signal that stopped it (SIGINT, SIGTERM), 0 when none
    aborted: str = ""  # --abort-on-fail: the SLO check that broke (e.g. "errors 12.00% > 1.00%")
    aborted_at: float = 0.0  # seconds into the run when it broke
    cpu_seconds: float = 0.0  # the worker processes' CPU time (user + system) over the run, summed
    dropped_series: SecondSeries = field(default_factory=SecondSeries)  # dropped arrivals by intended second
    offered_series: SecondSeries = field(default_factory=SecondSeries)  # arrivals due in each second (open model)
    window_start: float = 0.0  # with ``steady``: arrivals due before this (warm-up) are left out of it
    steady: RunResults | None = None  # the same measures over the arrivals due from ``window_start`` on
    transport: dict[str, int] = field(default_factory=dict)  # the transport's counters (CoAP), summed
    announcements: AnnouncementStats | None = None  # [announcements]: what the devices were pushed
    prepared: dict[str, int] = field(default_factory=dict)  # [devices].prepared: requests prepared / keys made live

    def op(self, name: str) -> OpStats:
        stats = self.ops.get(name)
        if stats is None:
            stats = self.ops[name] = OpStats()
            self.completions[name] = SecondSeries()
            self.failures[name] = SecondSeries()
            self.latency_series[name] = SecondBuckets()
        return stats

    def succeeded(self, op: str, t: float, latency: float, service: float) -> None:
        """Record one successful operation finishing ``t`` seconds into the run."""
        stats = self.op(op)
        stats.ok += 1
        stats.latency.record(latency)
        stats.service.record(service)
        self.completions[op].add(t)
        self.latency_series[op].record(t, latency)
        if self.steady is not None and t - latency >= self.window_start:
            self.steady.succeeded(op, t, latency, service)

    def measure_from(self, seconds: float) -> None:
        """Keep ``steady``: the measures of the arrivals due ``seconds`` or later into the run
        (a warm-up left out, exactly: its own histograms, not a subtraction)."""
        self.window_start = seconds
        self.steady = RunResults()

    def failed(self, op: str, t: float, latency: float, kind: str, fail_names: tuple[str, ...]) -> None:
        """Record one failed operation finishing ``t`` seconds into the run, ``latency`` after its
        intended start."""
        stats = self.op(op)
        stats.failed += 1
        stats.errors[kind] += 1
        stats.fail_info.update(fail_names)
        self.failures[op].add(t)
        if self.steady is not None and t - latency >= self.window_start:
            self.steady.failed(op, t, latency, kind, fail_names)

    def dropped_at(self, t: float) -> None:
        """An arrival due ``t`` seconds into the run was dropped (``dropped`` is the driver's count)."""
        self.dropped_series.add(t)
        if self.steady is not None and t >= self.window_start:
            self.steady.dropped += 1

    def window_scheduled(self, offsets: npt.NDArray[np.float64]) -> None:
        """At the end of an open-model run: the arrivals offered in each second and the steady
        window's arrivals (``offsets``: this worker's schedule)."""
        offsets = np.asarray(offsets)
        if len(offsets):
            self.offered_series.values = np.bincount(np.maximum(offsets, 0.0).astype(np.intp)).astype(np.int64)
        steady = self.steady
        if steady is not None:
            steady.scheduled = int(np.count_nonzero(np.asarray(offsets) >= self.window_start))
            steady.started = steady.completed = steady.scheduled - steady.dropped

    def merge(self, other: RunResults) -> None:
        self.dropped_series.merge(other.dropped_series)
        self.offered_series.merge(other.offered_series)
        if other.steady is not None:
            if self.steady is None:
                self.measure_from(other.window_start)
            assert self.steady is not None
            self.steady.merge(other.steady)
        for name, stats in other.ops.items():
            self.op(name).merge(stats)
            self.completions[name].merge(other.completions[name])
            self.failures[name].merge(other.failures[name])
            self.latency_series[name].merge(other.latency_series[name])
        self.scheduled += other.scheduled
        self.started += other.started
        self.dropped += other.dropped
        self.completed += other.completed
        self.lateness.merge(other.lateness)
        self.in_flight_peak += other.in_flight_peak  # peaks of parallel workers add up at worst
        self.elapsed = max(self.elapsed, other.elapsed)
        self.interrupted = self.interrupted or other.interrupted
        self.interrupt_signal = self.interrupt_signal or other.interrupt_signal
        if other.aborted and (not self.aborted or other.aborted_at < self.aborted_at):
            self.aborted, self.aborted_at = other.aborted, other.aborted_at  # the first to break
        self.cpu_seconds += other.cpu_seconds
        for key, value in other.transport.items():
            self.transport[key] = self.transport.get(key, 0) + value
        if other.announcements is not None:
            if self.announcements is None:
                self.announcements = AnnouncementStats()
            self.announcements.merge(other.announcements)
        for key, value in other.prepared.items():
            self.prepared[key] = self.prepared.get(key, 0) + value

    def to_dict(self) -> dict[str, Any]:
        seconds = max(1, int(np.ceil(self.elapsed)))
        extra: dict[str, Any] = {"dropped_per_second": self.dropped_series.trimmed(seconds),
                                 "offered_per_second": self.offered_series.trimmed(seconds)}
        if self.steady is not None:
            self.steady.elapsed = self.elapsed
            extra["steady"] = {"from_seconds": self.window_start, **self.steady.to_dict()}
        if self.announcements is not None:
            extra["announcements"] = self.announcements.to_dict()
        return extra | {
            "scheduled": self.scheduled,
            "started": self.started,
            "dropped": self.dropped,
            "completed": self.completed,
            "in_flight_peak": self.in_flight_peak,
            "elapsed_seconds": self.elapsed,
            "workers": self.workers,
            "interrupted": self.interrupted,
            "interrupt_signal": self.interrupt_signal,
            "aborted": self.aborted,
            "aborted_at_seconds": self.aborted_at,
            "cpu_seconds": self.cpu_seconds,
            "transport": dict(self.transport),
            "prepared": dict(self.prepared),
            "lateness": self.lateness.to_dict(),
            "lateness_seconds": _quantiles(self.lateness),
            "operations": {name: s.to_dict() for name, s in sorted(self.ops.items())},
            "per_second": {
                name: {
                    "completed": self.completions[name].trimmed(seconds),
                    "failed": self.failures[name].trimmed(seconds),
                    "latency_le": self.latency_series[name].to_dict(seconds),
                }
                for name in sorted(self.ops)
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResults:
        results = cls(
            scheduled=data["scheduled"],
            started=data["started"],
            dropped=data["dropped"],
            completed=data["completed"],
            lateness=LatencyHistogram.from_dict(data["lateness"]),
            in_flight_peak=data["in_flight_peak"],
            elapsed=data["elapsed_seconds"],
            workers=data.get("workers", 1),
            interrupted=data.get("interrupted", False),
            interrupt_signal=data.get("interrupt_signal", 0),
            aborted=data.get("aborted", ""),
            aborted_at=data.get("aborted_at_seconds", 0.0),
            cpu_seconds=data.get("cpu_seconds", 0.0),
            transport=dict(data.get("transport", {})),
            prepared=dict(data.get("prepared", {})),
        )
        for name, op in data["operations"].items():
            results.ops[name] = OpStats.from_dict(op)
            completions, failures = SecondSeries(), SecondSeries()
            series = data["per_second"][name]
            completions.values = np.array(series["completed"] or [0], dtype=np.int64)
            failures.values = np.array(series["failed"] or [0], dtype=np.int64)
            results.completions[name] = completions
            results.failures[name] = failures
            results.latency_series[name] = SecondBuckets.from_dict(series.get("latency_le"))
        results.dropped_series.values = np.array(data.get("dropped_per_second") or [0], dtype=np.int64)
        results.offered_series.values = np.array(data.get("offered_per_second") or [0], dtype=np.int64)
        if isinstance(data.get("announcements"), dict):
            results.announcements = AnnouncementStats.from_dict(data["announcements"])
        steady = data.get("steady")
        if isinstance(steady, dict):
            results.window_start = float(steady.get("from_seconds", 0.0))
            results.steady = cls.from_dict(steady)
        return results
