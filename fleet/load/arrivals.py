"""The arrival driver: start one task per scheduled arrival, on time, with a cap on concurrency.

Arrival ``i`` is due at the absolute time ``t0 + offsets[i]`` on trio's clock. The driver sleeps
until each absolute time (never "sleep the gap"), so a late wake-up does not push later arrivals
back; everything that has fallen due by a wake-up is started in that one wake-up.

Open model: the schedule does not wait for the CA. When ``max_in_flight`` arrivals are already
running, a due arrival is dropped and counted, never queued (a queue would turn an overloaded CA
into a slower arrival rate and hide the overload). Each task is passed its intended start time,
which is what latency must be measured from (wrk2's coordinated omission). How late each task
really began (``actual start - intended``) goes into a ``LatencyHistogram``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import trio

from fleet.load.histogram import LatencyHistogram

__all__ = ["ArrivalDriver", "ArrivalStats", "DriverStatistics", "StartFn", "drive_arrivals"]

StartFn = Callable[[int, float], Awaitable[None]]
"""``start(index, intended_time)``: run arrival ``index``; ``intended_time`` is on trio's clock."""

OnLate = Callable[[int, float], None]
"""``on_late(index, lateness)``: told about each arrival that began later than the threshold."""

OnDrop = Callable[[float], None]
"""``on_drop(intended)``: told about each dropped arrival (its intended time, on trio's clock)."""

_CHUNK = 4096  # deadlines converted to Python floats this many at a time


@dataclass(frozen=True)
class DriverStatistics:
    """Live counters, cheap to read for progress display and metrics."""

    scheduled: int
    started: int
    dropped: int
    completed: int
    in_flight: int
    in_flight_peak: int

    @property
    def due(self) -> int:
        """Arrivals whose time has come so far (each one either started or dropped)."""
        return self.started + self.dropped


@dataclass(frozen=True)
class ArrivalStats:
    """What a driven schedule did. ``lateness`` holds one value per started arrival."""

    scheduled: int
    started: int
    dropped: int
    completed: int
    lateness: LatencyHistogram
    in_flight_peak: int

    @property
    def max_lateness(self) -> float:
        """Largest start lateness in seconds (0.0 when nothing started)."""
        return self.lateness.max if self.lateness.count else 0.0


class ArrivalDriver:
    """Drives one schedule once; ``statistics()`` may be read while ``run()`` is going.

    ``start`` must handle the failures it expects (a CA error is a result, not a crash): an
    exception escaping it cancels the whole run and propagates out of ``run()``.

    ``on_late(index, lateness)`` is called for each arrival that began more than
    ``late_threshold`` seconds late. ``slack`` trades lateness for CPU: the driver wakes ``slack``
    seconds after a due time and starts everything due by then in one go (a few milliseconds of
    slack cut the driver's CPU substantially at high rates; bench/README.md). Lateness stays recorded and latency is still measured from
    the intended time, so results stay honest. Default 0: wake at each due time.
    """

    def __init__(
        self,
        offsets: npt.ArrayLike,
        start: StartFn,
        *,
        max_in_flight: int,
        clock_t0: float | None = None,
        on_late: OnLate | None = None,
        late_threshold: float = 0.010,
        slack: float = 0.0,
        on_drop: OnDrop | None = None,
    ) -> None:
        arr = np.array(offsets, dtype=np.float64)  # a private copy
        if arr.ndim != 1:
            raise ValueError("offsets must be a one-dimensional array")
        if arr.size and (not np.all(np.isfinite(arr)) or arr[0] < 0 or np.any(np.diff(arr) < 0)):
            raise ValueError("offsets must be finite, non-negative and sorted")
        if (
            isinstance(max_in_flight, bool)
            or not isinstance(max_in_flight, int)
            or (max_in_flight < 1)
        ):
            raise ValueError(f"max_in_flight must be a positive integer, not {max_in_flight!r}")
        if not 0.0 <= slack < 1.0:
            raise ValueError(f"slack must be in [0, 1) seconds, not {slack!r}")
        self._offsets = arr
        self._start = start
        self._max_in_flight = max_in_flight
        self._clock_t0 = clock_t0
        self._on_late = on_late
        self._late_threshold = late_threshold
        self._slack = slack
        self._on_drop = on_drop
        self._lateness = LatencyHistogram()
        self._started = 0
        self._dropped = 0
        self._completed = 0
        self._in_flight = 0
        self._peak = 0
        self._ran = False

    def statistics(self) -> DriverStatistics:
        return DriverStatistics(
            scheduled=len(self._offsets),
            started=self._started,
            dropped=self._dropped,
            completed=self._completed,
            in_flight=self._in_flight,
            in_flight_peak=self._peak,
        )

    def stats(self) -> ArrivalStats:
        """A snapshot of the results so far (a copy of the lateness histogram)."""
        return ArrivalStats(
            scheduled=len(self._offsets),
            started=self._started,
            dropped=self._dropped,
            completed=self._completed,
            lateness=self._lateness.copy(),
            in_flight_peak=self._peak,
        )

    async def run(self) -> ArrivalStats:
        """Fire every arrival, then wait for the started ones to finish."""
        if self._ran:
            raise RuntimeError("an ArrivalDriver runs its schedule only once")
        self._ran = True
        t0 = trio.current_time() if self._clock_t0 is None else float(self._clock_t0)
        async with trio.open_nursery() as nursery:
            for base in range(0, len(self._offsets), _CHUNK):
                deadlines = (t0 + self._offsets[base : base + _CHUNK]).tolist()
                await self._fire_chunk(nursery, base, deadlines)
        return self.stats()

    async def _fire_chunk(self, nursery: trio.Nursery, base: int, deadlines: list[float]) -> None:
        m = len(deadlines)
        i = 0
        while i < m:
            # Absolute sleep; when already due just a checkpoint, so the started tasks still run.
            # (trio.sleep_until with a past deadline is a cancel scope that fires: it raises and
            # catches Cancelled, several times a plain checkpoint's CPU. A loaded worker finds
            # the next arrival already due at most wake-ups.)
            due = deadlines[i] + self._slack
            if due > trio.current_time():
                await trio.sleep_until(due)
            else:
                await trio.lowlevel.checkpoint()
            now = trio.current_time()
            j = i + 1
            while j < m and deadlines[j] <= now:
                j += 1
            room = self._max_in_flight - self._in_flight
            take = j - i if j - i <= room else max(room, 0)
            for k in range(i, i + take):
                nursery.start_soon(self._one, base + k, deadlines[k])
            self._in_flight += take
            self._started += take
            self._dropped += j - i - take
            if self._on_drop is not None:
                for k in range(i + take, j):
                    self._on_drop(deadlines[k])
            self._peak = max(self._peak, self._in_flight)
            i = j

    async def _one(self, index: int, intended: float) -> None:
        lateness = trio.current_time() - intended
        self._lateness.record(lateness)
        if self._on_late is not None and lateness > self._late_threshold:
            self._on_late(index, lateness)
        try:
            await self._start(index, intended)
        finally:
            self._in_flight -= 1
        self._completed += 1


async def drive_arrivals(
    offsets: npt.ArrayLike,
    start: StartFn,
    *,
    max_in_flight: int,
    clock_t0: float | None = None,
    on_late: OnLate | None = None,
    late_threshold: float = 0.010,
    slack: float = 0.0,
) -> ArrivalStats:
    """Run ``start(i, t0 + offsets[i])`` for every arrival; see ``ArrivalDriver``.

    ``clock_t0`` is a time on trio's clock (``trio.current_time()``), default: now. Workers that
    must share a start instant convert a wall-clock start to their own trio clock first.
    """
    driver = ArrivalDriver(
        offsets,
        start,
        max_in_flight=max_in_flight,
        clock_t0=clock_t0,
        on_late=on_late,
        late_threshold=late_threshold,
        slack=slack,
    )
    return await driver.run()
