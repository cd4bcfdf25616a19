"""Prometheus metrics of the embedded CA (``fleet ca serve --metrics-port``): ``fleet_ca_*``.

The service calls ``request()`` for every CMP answer (and for outcomes its periodic tick
produces), ``http_started()``/``http_done()`` around every HTTP request, and ``sample()`` from its
tick: gauges that need the CMP server's transaction table are sampled on the trio thread (the
table is a dict the scrape thread must not iterate while trio changes it). Labels are the request
body type, CMP status, PKIFailureInfo name, HTTP status and transaction state: never a serial
number, subject or transaction ID.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleet.ca.service import CaStatistics
from fleet.cmp.server import Outcome
from fleet.http.server import HttpServerStats
from fleet.prometheus import Endpoint, bounded

__all__ = ["PROCESSING_BUCKETS", "CaMetrics"]

PROCESSING_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
)
"""Processing time buckets in seconds: 100 µs (below one CMP answer's CPU) up to 60 s."""

_SERVER_COUNTERS = (  # ServerStatistics field, metric name (``_total`` added), help
    ("issued", "fleet_ca_certificates_issued", "Certificates issued (implicitly confirmed or not)."),
    ("confirmed", "fleet_ca_certificates_confirmed", "Issued certificates confirmed (certConf or implicit confirmation)."),
    ("expired_unconfirmed", "fleet_ca_certificates_unconfirmed", "Issued certificates rejected because no certConf came in time."),
    ("hung_closed", "fleet_ca_transactions_abandoned", "Waiting transactions closed because the client stopped polling."),
)


class _Sampled(Collector):
    """Values the service's tick copied from the CMP servers (plain numbers, thread-safe reads)."""

    def __init__(self, owner: CaMetrics) -> None:
        self.owner = owner

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        o = self.owner
        tx = GaugeMetricFamily("fleet_ca_transactions", "Open CMP transactions by state (their sum is the concurrency).", labels=["state"])
        for state, value in o.transactions.items():
            tx.add_metric([state], float(value))
        yield tx
        for name, metric, help_text in _SERVER_COUNTERS:
            c = CounterMetricFamily(metric, help_text)
            c.add_metric([], float(o.server_counts.get(name, 0)))
            yield c
        http = o.http_stats
        if http is not None:
            g = GaugeMetricFamily("fleet_ca_http_connections_open", "HTTP connections open now.")
            g.add_metric([], float(http.connections_open))
            yield g
            c = CounterMetricFamily("fleet_ca_http_connections", "HTTP connections accepted.")
            c.add_metric([], float(http.connections_total))
            yield c
            c = CounterMetricFamily("fleet_ca_http_connections_rejected", "HTTP connections refused (connection cap).")
            c.add_metric([], float(http.connections_rejected))
            yield c


class CaMetrics(Endpoint):
    """The CA's metrics: a ``fleet.ca.service.ServiceObserver``. ``CaMetrics.serve(port)`` serves
    them; the service feeds them."""

    def __init__(self, *, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        super().__init__(registry)
        r = self.registry
        self.requests = Counter("fleet_ca_requests", "CMP requests answered, by request body type and CMP status.", ("body", "status"), registry=r)
        self.failures = Counter("fleet_ca_failures", "PKIFailureInfo bits the CA answered with, by request body type.", ("body", "fail_info"), registry=r)
        self.revoked = Counter("fleet_ca_certificates_revoked", "Certificates revoked by rr.", registry=r)
        self.responses = Counter("fleet_ca_http_responses", "HTTP responses by status code (CMP answers are all 200; 'dropped' for dropped connections).", ("code",), registry=r)
        self.processing = Histogram("fleet_ca_request_processing_seconds", "Time to process one CMP request (decode, checks, issue, encode), without added latency.", ("body",), buckets=PROCESSING_BUCKETS, registry=r)
        self.announcements = Counter("fleet_ca_announcements", "Announcements pushed to devices (rann on revocation, cann on issue, ckuann on a root key rollover, crlann on a new CRL) by result: queued, dropped (queue full), retried, failed (given up), delivered.", ("result",), registry=r)
        self.announce_seconds = Histogram("fleet_ca_announcement_delivery_seconds", "From the event (revocation, issue, rollover, CRL) to the device's 2xx answer.", buckets=PROCESSING_BUCKETS, registry=r)
        self.in_progress = Gauge("fleet_ca_requests_in_progress", "HTTP requests received and not yet answered (the CA's queue, added latency included).", registry=r)
        self.transactions: dict[str, int] = {"in_progress": 0, "awaiting_confirm": 0, "waiting": 0}
        self.server_counts: dict[str, int] = {}
        self.http_stats: HttpServerStats | None = None
        r.register(_Sampled(self))
        if process:
            ProcessCollector(registry=r)
        self._requests: dict[tuple[str, str], Any] = {}
        self._processing: dict[str, Any] = {}
        self._failures: dict[tuple[str, str], Any] = {}
        self._responses: dict[str, Any] = {}
        self._bodies: set[str] = set()
        self._statuses: set[str] = set()
        self._fail_names: set[str] = set()
        self._codes: set[str] = set()

    @classmethod
    def serve(cls, port: int, *, host: str | None = None) -> CaMetrics:
        """Serve ``/metrics`` on ``host:port`` (default: ``$FLEET_METRICS_HOST`` or all interfaces)."""
        metrics = cls()
        metrics.listen(port, host)
        return metrics

    # -- fed by the service (trio thread) --------------------------------------------------

    def request(self, outcome: Outcome, seconds: float | None = None) -> None:
        """One CMP answer (``seconds``: processing time, None for answers made by the tick)."""
        body = outcome.request
        key = (body, outcome.status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(bounded(self._bodies, body), bounded(self._statuses, outcome.status))
        child.inc()
        if seconds is not None:
            hist = self._processing.get(body)
            if hist is None:
                hist = self._processing[body] = self.processing.labels(bounded(self._bodies, body))
            hist.observe(seconds)
        if outcome.fail_info:
            for name in outcome.fail_names:
                fkey = (body, name)
                fchild = self._failures.get(fkey)
                if fchild is None:
                    fchild = self._failures[fkey] = self.failures.labels(bounded(self._bodies, body), bounded(self._fail_names, name))
                fchild.inc()
        if body == "rr" and outcome.status == "accepted":
            self.revoked.inc()

    def response(self, code: int | str) -> None:
        """One HTTP response (or ``"dropped"``)."""
        key = str(code)
        child = self._responses.get(key)
        if child is None:
            child = self._responses[key] = self.responses.labels(bounded(self._codes, key))
        child.inc()

    def announcement(self, result: str, seconds: float | None = None) -> None:
        """One pushed announcement's step (``fleet.ca.announcer.Announcer``'s observer)."""
        self.announcements.labels(result).inc()
        if seconds is not None:
            self.announce_seconds.observe(seconds)

    def http_started(self) -> None:
        self.in_progress.inc()

    def http_done(self) -> None:
        self.in_progress.dec()

    def sample(self, stats: CaStatistics) -> None:
        """Keep the service's transaction tables and counters for scrapes (call from the trio
        thread: the scrape thread reads only what is kept here)."""
        live = confirm = waiting = 0
        counts: dict[str, int] = {}
        for s in stats.servers.values():
            live += s.live
            confirm += s.awaiting_confirm
            waiting += s.waiting
            for name, _, _ in _SERVER_COUNTERS:
                counts[name] = counts.get(name, 0) + int(getattr(s, name))
        self.transactions = {"in_progress": live - confirm - waiting, "awaiting_confirm": confirm, "waiting": waiting}
        self.server_counts = counts
        self.http_stats = stats.connections
