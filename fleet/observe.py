"""What an operation reports while it runs: the ``Observer`` protocol.

Load workers and the provisioner both drive CMP transactions and tell an observer about each
one; the Prometheus exporter (``fleet.load.metrics.FleetMetrics``) implements it. It sits below
both so neither imports the other to name it.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Observer"]


class Observer(Protocol):
    """Told about every operation (one CMP transaction) and every HTTP exchange within it.

    Called on the trio thread, on the hot path: implementations keep each call cheap.
    """

    def operation_started(self, op: str) -> None: ...

    def operation_done(
        self,
        op: str,
        ok: bool,
        kind: str,
        fail_info: tuple[str, ...],
        latency: float,
        service: float,
        polls: int,
    ) -> None:
        """``kind`` is the error kind (``"ok"`` on success), ``fail_info`` the PKIFailureInfo
        names; ``latency`` runs from the intended start, ``service`` from the first request."""

    def exchange(self, op: str, body: str, seconds: float) -> None:
        """One request/response round trip of ``op``, by the request's body type."""

    def warning(self, op: str, code: str) -> None:
        """A habit of the CA accepted in a successful ``op`` (a ``fleet.cmp.fleet.cmp.habits.WARNINGS``
        code), such as caPubs ignored under signature protection."""
