"""``fleet capacity --metrics-port``: the search's progress for Prometheus and Grafana (the
dashboards draw each step as an annotation and the offered, achieved and held rates as lines)."""

from __future__ import annotations

import time

from prometheus_client import Gauge

from fleet.load.capacity import StepAssessment
from fleet.load.metrics import _Scrapes
from fleet.prometheus import Endpoint

__all__ = ["CapacityMetrics"]


class CapacityMetrics(Endpoint):
    """Gauges of the running search. ``fleet_capacity_step_info`` has one series per step (at
    most ``--max-steps``), labelled with its number, rate and outcome, for annotations."""

    def __init__(self) -> None:
        super().__init__()
        self._scrapes = _Scrapes()
        self.registry.register(self._scrapes)
        r = self.registry
        self.step = Gauge("fleet_capacity_step", "Number of the capacity-search step running or last run.", registry=r)
        self.offered = Gauge("fleet_capacity_offered_rate", "Arrival rate the running step offers (0 between steps).", registry=r)
        self.achieved = Gauge("fleet_capacity_step_achieved_rate", "First operation's successes per second in the last step's steady window.", registry=r)
        self.held = Gauge("fleet_capacity_rate", "Highest offered rate held so far: the capacity found until now.", registry=r)
        self.info = Gauge("fleet_capacity_step_info", "One series per step: its number, offered rate and outcome (running, held, failed).",
                          ("step", "rate", "outcome"), registry=r)
        self._running: tuple[str, str] | None = None

    def step_started(self, number: int, rate: float) -> None:
        self.step.set(number)
        self.offered.set(rate)
        self._running = (str(number), f"{rate:g}")
        self.info.labels(*self._running, "running").set(1)

    def step_done(self, assessed: StepAssessment, highest_held: float | None) -> None:
        self.offered.set(0)
        self.achieved.set(assessed.achieved_rate)
        self.held.set(highest_held or 0)
        if self._running is not None:
            self.info.remove(*self._running, "running")
            self.info.labels(*self._running, "held" if assessed.passed else "failed").set(1)
            self._running = None

    def finish(self) -> bool:
        """Wait (at most 2.5 scrape intervals, 60 s) until a scrape has read the last step's
        outcome; no wait when nobody scrapes regularly. True when such a scrape was seen."""
        scrapes = self._scrapes
        interval = scrapes.interval()
        if self.server is None or interval is None:
            return False
        deadline = time.monotonic() + min(60.0, 2.5 * interval + 0.5)
        with scrapes.cond:
            seen = scrapes.count
            while scrapes.count <= seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                scrapes.cond.wait(left)
        time.sleep(0.05)  # let the server thread send the response it just rendered
        return True
