"""Prometheus metrics of the RA (``fleet ra serve --metrics-port``): ``fleet_ra_*``.

Labels are the request body type, what the RA did with it (forwarded, refused, injected,
upstream_error, upstream_refused), the PKIFailureInfo name, the upstream exchange kind (single
or nested) and transport error kind: never a subject, reference or transactionID. The process
collector gives the RA's CPU seconds, so CPU per enrollment is a ratio of two series.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from fleet.ca.metrics import PROCESSING_BUCKETS
from fleet.prometheus import Endpoint, bounded

if TYPE_CHECKING:
    from fleet.ra.service import RaService

__all__ = ["BATCH_BUCKETS", "RaMetrics"]

BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


class RaMetrics(Endpoint):
    """The RA's metrics: a ``fleet.ra.service.RaObserver``."""

    def __init__(self, *, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        super().__init__(registry)
        r = self.registry
        self.requests = Counter("fleet_ra_requests", "CMP requests answered by the RA, by body type and what the RA did.", ("body", "outcome"), registry=r)
        self.failures = Counter("fleet_ra_failures", "PKIFailureInfo bits of the RA's own error answers, by body type.", ("body", "fail_info"), registry=r)
        self.processing = Histogram("fleet_ra_request_seconds", "Time from receiving a request to its answer (verification, batching wait, upstream), without added latency.", ("body",), buckets=PROCESSING_BUCKETS, registry=r)
        self.upstream_requests = Counter("fleet_ra_upstream_requests", "Messages posted upstream: single messages or nested envelopes.", ("kind",), registry=r)
        self.upstream_errors = Counter("fleet_ra_upstream_errors", "Upstream posts that brought no CMP answer, by transport error kind.", ("kind", "error"), registry=r)
        self.upstream_seconds = Histogram("fleet_ra_upstream_seconds", "Round trip of one upstream post.", ("kind",), buckets=PROCESSING_BUCKETS, registry=r)
        self.batch_size = Histogram("fleet_ra_batch_size", "Messages per nested envelope sent upstream.", buckets=BATCH_BUCKETS, registry=r)
        self.responses = Counter("fleet_ra_http_responses", "HTTP responses by status code ('dropped' for dropped connections).", ("code",), registry=r)
        self.in_progress = Gauge("fleet_ra_requests_in_progress", "HTTP requests received and not yet answered.", registry=r)
        self.transactions = Gauge("fleet_ra_transactions", "Transactions the RA remembers (to check follow-ups).", registry=r)
        if process:
            ProcessCollector(registry=r)
        self._children: dict[tuple[str, ...], Any] = {}
        self._seen: dict[str, set[str]] = {"body": set(), "outcome": set(), "fail": set(), "code": set(), "error": set()}

    @classmethod
    def serve(cls, port: int, *, host: str | None = None) -> RaMetrics:
        metrics = cls()
        metrics.listen(port, host)
        return metrics

    def _label(self, kind: str, value: str) -> str:
        return bounded(self._seen[kind], value)

    def request(self, body: str, outcome: str, fail: str, seconds: float) -> None:
        key = ("r", body, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(self._label("body", body), self._label("outcome", outcome))
        child.inc()
        hkey = ("h", body)
        hist = self._children.get(hkey)
        if hist is None:
            hist = self._children[hkey] = self.processing.labels(self._label("body", body))
        hist.observe(seconds)
        if fail:
            self.failures.labels(self._label("body", body), self._label("fail", fail)).inc()

    def upstream(self, kind: str, seconds: float, error: str) -> None:
        self.upstream_requests.labels(kind).inc()
        self.upstream_seconds.labels(kind).observe(seconds)
        if error:
            self.upstream_errors.labels(kind, self._label("error", error)).inc()

    def batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def response(self, code: int | str) -> None:
        self.responses.labels(self._label("code", str(code))).inc()

    def http_started(self) -> None:
        self.in_progress.inc()

    def http_done(self) -> None:
        self.in_progress.dec()

    def sample(self, service: RaService) -> None:
        self.transactions.set(service.relay.live_transactions)
