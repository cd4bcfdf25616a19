"""Prometheus plumbing shared by every fleet endpoint (load workers, provisioning, the CA).

A registry is served from prometheus-client's HTTP server in a daemon thread, so a scrape never
blocks the trio loop. /metrics binds to loopback unless told otherwise: the counters of a run or
a CA are not for the whole network by default. Label values that are not from a fixed set go
through ``bounded`` so a series count cannot grow without limit.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.exposition import generate_latest, start_http_server

from fleet.errors import FleetError

__all__ = ["LABEL_LIMIT", "Endpoint", "MetricsError", "bounded", "metrics_host", "serve_registry"]

LABEL_LIMIT = 64
"""Distinct values a free-form label (error kind) may take before new ones become ``other``."""

_HOST_ENV = "FLEET_METRICS_HOST"

# No ``*_created`` series: they double the series count and no dashboard reads them.
disable_created_metrics()


class MetricsError(FleetError):
    """The metrics endpoint cannot be served (port in use, bad address)."""


def metrics_host() -> str:
    """Address /metrics binds to: ``$FLEET_METRICS_HOST``, else loopback (``--metrics-host``
    exposes it by choice)."""
    return os.environ.get(_HOST_ENV) or "127.0.0.1"


def serve_registry(registry: CollectorRegistry, port: int, host: str | None = None) -> Any:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread; returns the server
    (``shutdown()`` stops it)."""
    host = host or metrics_host()
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None
    return server


def bounded(seen: set[str], value: str, limit: int = LABEL_LIMIT) -> str:
    """``value`` while fewer than ``limit`` distinct values were seen, then ``other`` for new ones
    (a safety net: error kinds come from a fixed set of exception classes)."""
    if value in seen:
        return value
    if len(seen) >= limit:
        return "other"
    seen.add(value)
    return value


class Endpoint:
    """A registry that may be served: ``listen(port)``, ``close()``, ``exposition()``.

    Without ``listen`` (tests) nothing is served and ``exposition()`` renders what a scrape
    would read.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.server: Any = None

    def listen(self, port: int, host: str | None = None) -> None:
        """Serve ``/metrics`` on ``host:port`` (default host ``metrics_host()``)."""
        self.server = serve_registry(self.registry, port, host)

    def close(self) -> None:
        """Stop serving (the daemon thread would also end with the process)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def exposition(self) -> bytes:
        """The text exposition Prometheus would scrape."""
        return generate_latest(self.registry)
