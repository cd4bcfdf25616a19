"""Prometheus metrics of a fleet worker: what a capacity test needs to be watched in Grafana.

Each worker process serves its own ``/metrics`` (prometheus-client's HTTP server in a daemon
thread, so a scrape never blocks the trio loop); one Prometheus job scrapes every worker and the
dashboards sum across them. Every series carries a ``worker`` label, and labels stay bounded:
operation, result, error kind, PKIFailureInfo name, request body type, key type. Never a device,
serial number or transaction ID.

Two feeds:

* the ``Observer`` calls from the runner (per operation and per HTTP exchange) go to cached
  labelled children: a cached child's ``observe()`` costs about a third of a labelled one;
* everything the run already counts (arrivals due/started/dropped, start lateness, in flight,
  key pools, elapsed time) is read at scrape time by a collector, so it costs nothing per
  operation.

Latency histograms are measured from the arrival's intended start (no coordinated omission) and,
separately, from when the request was sent (service time); buckets run from 1 ms to 60 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fleet.cmp.habits import WARNINGS
from fleet.load.histogram import BUCKET_UPPER_S, LatencyHistogram
from fleet.load.runner import WorkerRun
from fleet.prometheus import Endpoint, bounded

__all__ = [
    "LATENCY_BUCKETS",
    "LATE_THRESHOLD",
    "FleetMetrics",
    "histogram_buckets",
    "transport_metrics",
]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
"""Histogram bucket upper bounds in seconds: 1 ms to 60 s (then +Inf)."""

LATE_THRESHOLD = 0.010
"""An arrival that starts more than this many seconds after its intended time counts as late."""


def histogram_buckets(hist: LatencyHistogram, bounds: Iterable[float] = LATENCY_BUCKETS) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets of a fleet ``LatencyHistogram`` (and its sum).

    A fleet bucket counts under ``le`` when its upper edge is at most ``le``; fleet buckets are at
    most 1/128 of their value wide, so a count is off by at most the values within 0.8 % below
    a bound. ``+Inf`` is the total, taken from the same copy of the counts.
    """
    counts = hist.counts
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1]) if len(cumulative) else 0
    out: list[tuple[str, float]] = []
    for b in bounds:
        i = int(np.searchsorted(BUCKET_UPPER_S, b, side="right"))  # buckets with upper edge <= b
        out.append((_le(b), float(cumulative[i - 1]) if i > 0 else 0.0))
    out.append(("+Inf", float(total)))
    return out, hist.mean * hist.count if hist.count else 0.0


def _le(b: float) -> str:
    return repr(float(b))


class _Scrapes(Collector):
    """Counts scrapes (a collector's ``collect`` runs once per scrape) so a finished worker can
    wait for Prometheus to read its final numbers."""

    def __init__(self) -> None:
        self.count = 0
        self.times: list[float] = []
        self.cond = threading.Condition()

    def collect(self) -> Iterator[Metric]:
        with self.cond:
            self.count += 1
            self.times.append(time.monotonic())
            del self.times[:-8]
            self.cond.notify_all()
        return iter(())

    def interval(self) -> float | None:
        """Median gap between recent scrapes, None before two scrapes."""
        with self.cond:
            gaps = [b - a for a, b in zip(self.times, self.times[1:])]
        return float(np.median(gaps)) if gaps else None


class _RunCollector(Collector):
    """Reads the run's own counters at scrape time (integers only; safe from another thread)."""

    def __init__(self, owner: FleetMetrics) -> None:
        self.owner = owner

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families are created at collect time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        owner = self.owner
        w = owner.worker
        run = owner.run
        wl = ["worker"]

        info = GaugeMetricFamily("fleet_run_info", "The run this worker belongs to (always 1).",
                                 labels=["worker", "profile", "workers"])
        if run is not None:
            info.add_metric([w, run.profile.name, str(run.plan.segment.workers)], 1.0)
        yield info

        elapsed = GaugeMetricFamily("fleet_run_elapsed_seconds", "Seconds since this worker's run started (frozen at its end).", labels=wl)
        start = GaugeMetricFamily("fleet_run_start_time_seconds", "Unix time this worker's run started.", labels=wl)
        finished = GaugeMetricFamily("fleet_run_finished", "1 once this worker's run has ended.", labels=wl)
        in_flight = GaugeMetricFamily("fleet_transactions_in_flight", "Arrivals (device flows) in progress.", labels=wl)
        planned = GaugeMetricFamily("fleet_arrivals_planned", "Arrivals this worker's schedule holds for the whole run.", labels=wl)
        target = GaugeMetricFamily("fleet_arrival_rate_target", "Arrivals per second the profile asks of this worker now.", labels=wl)
        due = CounterMetricFamily("fleet_arrivals_due", "Arrivals whose intended start has come (started or dropped).", labels=wl)
        started = CounterMetricFamily("fleet_arrivals_started", "Arrivals started.", labels=wl)
        dropped = CounterMetricFamily("fleet_arrivals_dropped", "Arrivals dropped because max_in_flight were running.", labels=wl)
        late = CounterMetricFamily("fleet_arrivals_late", f"Arrivals started more than {LATE_THRESHOLD * 1e3:g} ms after their intended time.", labels=wl)
        lateness = HistogramMetricFamily("fleet_arrival_lateness_seconds", "How late arrivals started after their intended time.", labels=wl)
        pool = GaugeMetricFamily("fleet_key_pool_keys", "Never-used keys left in the worker's key pool.", labels=["worker", "key_type"])
        pool_taken = CounterMetricFamily("fleet_key_pool_taken", "Keys handed out by the pool (fresh, reused or generated).", labels=["worker", "key_type"])
        pool_reused = CounterMetricFamily("fleet_key_pool_reused", "Pool keys handed out again after the pool ran dry.", labels=["worker", "key_type"])
        pool_generated = CounterMetricFamily("fleet_key_pool_generated", "Keys generated on the fly after the pool ran dry.", labels=["worker", "key_type"])

        if run is not None and run.t0 and owner.clock_offset is not None:
            now = owner.finished_at if owner.finished_at is not None else time.perf_counter() + owner.clock_offset
            elapsed.add_metric([w], max(0.0, now - run.t0))
            start.add_metric([w], owner.start_wall or 0.0)
            finished.add_metric([w], 1.0 if owner.finished_at is not None else 0.0)
            in_flight.add_metric([w], float(run.live.in_flight))
            shape = run.profile.shape
            driver = run.driver
            if driver is not None:
                s = driver.statistics()
                planned.add_metric([w], float(s.scheduled))
                due.add_metric([w], float(s.due))
                started.add_metric([w], float(s.started))
                dropped.add_metric([w], float(s.dropped))
                hist = driver.stats().lateness
                buckets, total = histogram_buckets(hist)
                lateness.add_metric([w], buckets, total)
                below = histogram_buckets(hist, (LATE_THRESHOLD,))[0][0][1]
                late.add_metric([w], float(buckets[-1][1] - below))
                if owner.finished_at is None and hasattr(shape, "rate_at"):
                    t = min(max(0.0, now - run.t0), run.profile.duration)
                    rate = float(shape.rate_at(t, run.profile.duration)) * float(run.plan.segment.fraction)
                    target.add_metric([w], rate)
                else:
                    target.add_metric([w], 0.0)
            else:  # closed model: every arrival starts when its device is free
                started.add_metric([w], float(run.results.started))
                due.add_metric([w], float(run.results.started))
                dropped.add_metric([w], 0.0)
            for spec, kp in list(run.devices.pools.items()):
                ps = kp.statistics()
                pool.add_metric([w, spec], float(ps.remaining))
                pool_taken.add_metric([w, spec], float(ps.taken))
                pool_reused.add_metric([w, spec], float(ps.reused))
                pool_generated.add_metric([w, spec], float(ps.generated))
        yield from (elapsed, start, finished, in_flight, planned, target, due, started, dropped, late,
                    lateness, pool, pool_taken, pool_reused, pool_generated)
        counters = getattr(getattr(run, "transport", None), "counters", None)
        if counters is not None:
            yield from transport_metrics(w, counters())


def transport_metrics(w: str, counts: dict[str, int]) -> Iterator[Metric]:
    """The transport's counters: HTTP's connection pool (is the client itself a limit?), or
    CoAP's events (what the lossy link cost), by a fixed set of events."""
    if "pool_waits" in counts:
        waits = CounterMetricFamily(
            "fleet_http_pool_waits", "HTTP requests that found all of the worker's max_connections busy and queued.",
            labels=["worker"])
        waits.add_metric([w], float(counts["pool_waits"]))
        waited = CounterMetricFamily(
            "fleet_http_pool_wait_seconds", "Time HTTP requests spent queued for a free connection, summed.",
            labels=["worker"])
        waited.add_metric([w], counts["pool_wait_us"] / 1e6)
        size = GaugeMetricFamily("fleet_http_max_connections", "The worker's HTTP connection pool size.",
                                 labels=["worker"])
        size.add_metric([w], float(counts["max_connections"]))
        yield from (waits, waited, size)
        return
    coap = CounterMetricFamily(
        "fleet_coap_datagrams", "CoAP client events: requests sent, retransmissions, datagrams "
        "lost to the link knob (out/in), separate responses, exchanges given up.",
        labels=["worker", "event"])
    for event, count in counts.items():
        coap.add_metric([w, event], float(count))
    yield coap


class FleetMetrics(Endpoint):
    """The Prometheus side of one worker (or of ``fleet provision``): a ``fleet.observe.Observer``.

    ``FleetMetrics.serve(port, worker="0")`` starts serving; ``attach(run)`` gives the scrape-time
    collector the ``WorkerRun``; ``finish()`` after the run waits (bounded) for one more scrape so
    Prometheus holds the final counts. Without ``serve`` (tests) read ``exposition()``.
    """

    def __init__(self, worker: str = "0", *, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        super().__init__(registry)
        self.worker = worker
        self.run: WorkerRun | None = None
        self.start_wall: float | None = None
        self.clock_offset: float | None = None  # trio.current_time() - time.perf_counter()
        self.finished_at: float | None = None
        self._scrapes = _Scrapes()
        self.registry.register(self._scrapes)
        labels = ("worker", "operation")
        r = self.registry
        self.started = Counter("fleet_transactions_started", "CMP transactions (operations) started.", labels, registry=r)
        self.completed = Counter("fleet_transactions_completed", "CMP transactions ended, by result (ok or failed).", (*labels, "result"), registry=r)
        self.errors = Counter("fleet_transaction_errors", "Failed transactions by error kind (CMP status, protocol or transport).", (*labels, "kind"), registry=r)
        self.fail_info = Counter("fleet_transaction_fail_info", "PKIFailureInfo bits in the CA's rejections and errors.", (*labels, "fail_info"), registry=r)
        self.polls = Counter("fleet_polls", "pollReq round trips while the CA answered 'waiting'.", labels, registry=r)
        self.latency = Histogram("fleet_transaction_latency_seconds", "Transaction latency from the arrival's intended start (includes start lateness).", (*labels, "result"), buckets=LATENCY_BUCKETS, registry=r)
        self.service = Histogram("fleet_transaction_service_seconds", "Transaction latency from when its first request was sent.", (*labels, "result"), buckets=LATENCY_BUCKETS, registry=r)
        self.warnings = Counter("fleet_transaction_warnings", "Habits of the CA accepted in successful transactions (caPubs ignored, clock skew, ...).", (*labels, "warning"), registry=r)
        self.exchanges = Histogram("fleet_exchange_seconds", "One HTTP request/response round trip, by request body type.", (*labels, "body"), buckets=LATENCY_BUCKETS, registry=r)
        self.announcements = Counter("fleet_announcements", "Announcements pushed to this worker's devices, by body (rann, ckuann, cann, crlann; - when refused) and result (believed, or the failInfo it was refused with).", ("worker", "body", "result"), registry=r)
        self.announce_delivery = Histogram("fleet_announcement_delivery_seconds", "From the run's rr to its device's receipt of the rann the CA pushed.", ("worker",), buckets=LATENCY_BUCKETS, registry=r)
        self._announce_results: set[str] = set()
        self.registry.register(_RunCollector(self))
        if process:
            ProcessCollector(registry=r)
        self._done: dict[tuple[str, bool], tuple[Any, Any, Any, Any]] = {}
        self._started: dict[str, Any] = {}
        self._errors: dict[tuple[str, str], Any] = {}
        self._fail: dict[tuple[str, str], Any] = {}
        self._exchange: dict[tuple[str, str], Any] = {}
        self._warning: dict[tuple[str, str], Any] = {}
        self._warning_codes: set[str] = set()
        self._kinds: set[str] = set()
        self._ops: set[str] = set()
        self._bodies: set[str] = set()
        self._fail_names: set[str] = set()

    @classmethod
    def serve(cls, port: int, *, worker: str = "0", host: str | None = None) -> FleetMetrics:
        """A ``FleetMetrics`` serving ``/metrics`` on ``host:port`` (default ``metrics_host()``)."""
        metrics = cls(worker)
        metrics.listen(port, host)
        return metrics

    # -- wiring ---------------------------------------------------------------------------

    def attach(self, run: WorkerRun) -> None:
        """Read the run's live counters at scrape time (call before ``run.run()``)."""
        self.run = run

    def _clock_sync(self) -> None:
        """From the trio thread, at the first operation: the scrape thread cannot call
        trio.current_time(), but trio's clock is perf_counter() plus an offset fixed for the
        whole trio.run, so remember that offset and the run's start in wall time."""
        if self.run is None:
            return
        try:
            now = trio.current_time()
        except RuntimeError:  # not inside trio.run (a unit test feeding the observer directly)
            return
        self.clock_offset = now - time.perf_counter()
        if self.run is not None and self.run.t0:
            self.start_wall = time.time() - (now - self.run.t0)

    def finish(self, timeout: float | None = None) -> bool:
        """Freeze the run's clock-derived gauges and wait until a scrape reads the final values.

        Waits only when this worker was scraped at least twice (nobody watching, or a one-off
        curl: no wait), for at most ``timeout`` seconds (default: 2.5 scrape intervals as
        observed, capped at 60 s). True when a scrape after the end was seen.
        """
        run = self.run
        if run is not None and self.finished_at is None:
            self.finished_at = run.t0 + run.results.elapsed if run.t0 else 0.0
        scrapes = self._scrapes
        with scrapes.cond:
            seen = scrapes.count
        interval = scrapes.interval()
        if self.server is None or interval is None:  # not scraped regularly (a curl or nothing)
            return False
        if timeout is None:
            timeout = min(60.0, 2.5 * interval + 0.5)
        deadline = time.monotonic() + timeout
        with scrapes.cond:
            # Counters were final before finished_at was set, and _Scrapes.collect() runs first
            # in a scrape, so any scrape it counts from now on renders the final values.
            while scrapes.count <= seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                scrapes.cond.wait(left)
        time.sleep(0.05)  # let the server thread send the response it just rendered
        return True

    # -- Observer (the runner's hot path) ----------------------------------------------

    def operation_started(self, op: str) -> None:
        child = self._started.get(op)
        if child is None:
            if self.clock_offset is None:
                self._clock_sync()
            child = self._started[op] = self.started.labels(self.worker, bounded(self._ops, op))
            for code in WARNINGS:  # at 0 from the start: "none" is an answer, "no data" is not
                self._warning[(op, code)] = self.warnings.labels(self.worker, bounded(self._ops, op), code)
        child.inc()

    def operation_done(
        self, op: str, ok: bool, kind: str, fail_info: tuple[str, ...], latency: float, service: float, polls: int
    ) -> None:
        children = self._done.get((op, ok))
        if children is None:
            children = self._done_children(op, ok)
        completed, lat, svc, poll = children
        completed.inc()
        lat.observe(latency)
        svc.observe(service)
        if polls:
            poll.inc(polls)
        if not ok:
            err = self._errors.get((op, kind))
            if err is None:
                err = self._errors[(op, kind)] = self.errors.labels(self.worker, bounded(self._ops, op), bounded(self._kinds, kind))
            err.inc()
            for name in fail_info:
                child = self._fail.get((op, name))
                if child is None:
                    child = self._fail[(op, name)] = self.fail_info.labels(self.worker, bounded(self._ops, op), bounded(self._fail_names, name))
                child.inc()

    def _done_children(self, op: str, ok: bool) -> tuple[Any, Any, Any, Any]:
        if self.clock_offset is None:
            self._clock_sync()
        w, o, result = self.worker, bounded(self._ops, op), "ok" if ok else "failed"
        children = (
            self.completed.labels(w, o, result),
            self.latency.labels(w, o, result),
            self.service.labels(w, o, result),
            self.polls.labels(w, o),
        )
        self._done[(op, ok)] = children
        return children

    def warning(self, op: str, code: str) -> None:
        child = self._warning.get((op, code))
        if child is None:
            child = self._warning[(op, code)] = self.warnings.labels(self.worker, bounded(self._ops, op), bounded(self._warning_codes, code))
        child.inc()

    def announcement(self, body: str, result: str, delivery: float | None) -> None:
        """One announcement a device received (``fleet.load.announcements``)."""
        self.announcements.labels(self.worker, body, bounded(self._announce_results, result)).inc()
        if delivery is not None:
            self.announce_delivery.labels(self.worker).observe(delivery)

    def exchange(self, op: str, body: str, seconds: float) -> None:
        child = self._exchange.get((op, body))
        if child is None:
            child = self._exchange[(op, body)] = self.exchanges.labels(self.worker, bounded(self._ops, op), bounded(self._bodies, body))
        child.observe(seconds)
