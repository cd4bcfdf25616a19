"""Arrival schedules: when each virtual device starts, as absolute offsets from t0.

Open-model shapes say how many arrivals per second the CA should see, whatever its latency. Each
turns into a sorted float64 array of offsets (arrival ``i`` fires at ``t0 + offsets[i]``); the
driver sleeps until each absolute time, so timing errors never accumulate (k6, vegeta).

Deterministic shapes place arrival ``k`` (0-based) where the cumulative expected count
``N(t) = integral of rate`` reaches ``k``, so the count is exact: ``ceil(N(duration))``, e.g.
100/s over 60 s gives 6,000 arrivals at 0, 0.01, ..., 59.99 s, and a ramp 0 -> 100/s over 10 s
gives 500. Inversion is vectorised (closed forms, or a grid plus Newton steps for ``Sine``).

Two transformations serve command-line overrides (``fleet run --rate/--duration``):
``scaled(factor)`` multiplies every rate of a shape (``peak_rate`` is what ``--rate`` sets), and
``stretched(factor)`` multiplies the timeline of the scenario shapes (ramp, steps, spike) so the
whole scenario plays in a longer or shorter run; steady shapes (constant, Poisson, sine) have no
timeline to stretch and simply run for the new duration.

The closed model (``Closed``) is only a description: a fixed number of devices that loop with a
think time; the orchestrator runs it, there is no schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields, replace
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fleet.errors import FleetError

__all__ = [
    "MAX_ARRIVALS",
    "SHAPES",
    "ArrivalShape",
    "Closed",
    "Constant",
    "OpenShape",
    "Poisson",
    "Ramp",
    "ScheduleError",
    "Shape",
    "Sine",
    "Spike",
    "Steps",
    "parse_shape",
]

Offsets = npt.NDArray[np.float64]

MAX_ARRIVALS = 50_000_000
"""More arrivals than this in one schedule (400 MB of offsets) is refused as a likely mistake."""


class ScheduleError(FleetError):
    """An arrival shape that is malformed or impossible (bad key, negative rate, ...)."""


class ArrivalShape(Protocol):
    """What every open-model shape offers."""

    def offsets(self, duration: float, rng: np.random.Generator | None = None) -> Offsets: ...

    def rate_at(self, t: float, duration: float | None = None) -> float: ...

    def expected_count(self, duration: float) -> float: ...

    @property
    def peak_rate(self) -> float: ...

    def scaled(self, factor: float) -> OpenShape: ...

    def stretched(self, factor: float) -> OpenShape: ...


# -- validation helpers --------------------------------------------------------------------


def _number(owner: str, name: str, value: object, *, positive: bool = False) -> float:
    """A finite, non-negative (or positive) real; bools and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScheduleError(f"{owner} {name} must be a number, not {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        need = "a positive" if positive else "a non-negative"
        raise ScheduleError(f"{owner} {name} must be {need} finite number, not {value!r}")
    return v


def _factor(factor: float) -> float:
    return _number("scale", "factor", factor, positive=True)


def _set_number(obj: object, name: str, *, positive: bool = False) -> None:
    owner = type(obj).__name__.lower()
    object.__setattr__(obj, name, _number(owner, name, getattr(obj, name), positive=positive))


def _duration(duration: float) -> float:
    return _number("schedule", "duration", duration, positive=True)


def _count(total: float, owner: str) -> int:
    """Number of arrivals k = 0, 1, ... with k < total, forgiving float noise in total."""
    nearest = round(total)
    if abs(total - nearest) <= 1e-9 * max(1.0, total):
        total = float(nearest)
    n = math.ceil(total)
    if n > MAX_ARRIVALS:
        raise ScheduleError(
            f"{owner} schedule would have {n:,} arrivals, more than {MAX_ARRIVALS:,}; "
            "lower the rate or shorten the duration"
        )
    return n


def _finish(t: Offsets, duration: float) -> Offsets:
    """Guard against float noise: sorted and strictly inside [0, duration)."""
    np.maximum.accumulate(t, out=t)
    np.clip(t, 0.0, np.nextafter(duration, 0.0), out=t)
    return t


class _PiecewiseConstant:
    """A rate that is constant on [starts[j], starts[j+1]) and holds the last rate forever."""

    def __init__(self, starts: list[float], rates: list[float]) -> None:
        self.starts = np.asarray(starts, dtype=np.float64)
        self.rates = np.asarray(rates, dtype=np.float64)
        self.cum = np.concatenate(([0.0], np.cumsum(self.rates[:-1] * np.diff(self.starts))))

    def rate_at(self, t: float) -> float:
        j = int(np.searchsorted(self.starts, t, side="right")) - 1
        return float(self.rates[max(j, 0)])

    def cumulative(self, t: float) -> float:
        j = max(int(np.searchsorted(self.starts, t, side="right")) - 1, 0)
        return float(self.cum[j] + self.rates[j] * (t - self.starts[j]))

    def offsets(self, duration: float, owner: str) -> Offsets:
        n = _count(self.cumulative(duration), owner)
        k = np.arange(n, dtype=np.float64)
        # side="right": an arrival due exactly where a pause begins goes after the pause, so
        # each step gets exactly rate * length arrivals.
        j = np.searchsorted(self.cum, k, side="right") - 1
        rate = self.rates[j]
        safe = np.where(rate > 0, rate, 1.0)
        t = self.starts[j] + np.where(rate > 0, (k - self.cum[j]) / safe, 0.0)
        return _finish(t, duration)


# -- open-model shapes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Constant:
    """``rate`` arrivals per second, evenly spaced; the first at t0."""

    rate: float

    def __post_init__(self) -> None:
        _set_number(self, "rate")

    @property
    def peak_rate(self) -> float:
        return self.rate

    def scaled(self, factor: float) -> Constant:
        return replace(self, rate=self.rate * _factor(factor))

    def stretched(self, factor: float) -> Constant:
        return self

    def rate_at(self, t: float, duration: float | None = None) -> float:
        return self.rate

    def expected_count(self, duration: float) -> float:
        return self.rate * _duration(duration)

    def offsets(self, duration: float, rng: np.random.Generator | None = None) -> Offsets:
        duration = _duration(duration)
        n = _count(self.rate * duration, "constant")
        return _finish(np.arange(n, dtype=np.float64) / self.rate, duration) if n else _empty()


@dataclass(frozen=True)
class Poisson:
    """A Poisson process of mean ``rate``/s: exponential gaps drawn from a seeded generator.

    Without an explicit ``rng`` the generator is seeded with ``seed``, so every worker process
    computes the same global schedule and a run can be repeated.
    """

    rate: float
    seed: int = 0

    def __post_init__(self) -> None:
        _set_number(self, "rate")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ScheduleError(f"poisson seed must be a non-negative integer, not {self.seed!r}")

    @property
    def peak_rate(self) -> float:
        return self.rate

    def scaled(self, factor: float) -> Poisson:
        return replace(self, rate=self.rate * _factor(factor))

    def stretched(self, factor: float) -> Poisson:
        return self

    def rate_at(self, t: float, duration: float | None = None) -> float:
        return self.rate

    def expected_count(self, duration: float) -> float:
        return self.rate * _duration(duration)

    def offsets(self, duration: float, rng: np.random.Generator | None = None) -> Offsets:
        duration = _duration(duration)
        if self.rate == 0:
            return _empty()
        _count(self.rate * duration, "poisson")  # refuse absurd sizes before drawing
        gen = rng if rng is not None else np.random.default_rng(self.seed)
        parts: list[Offsets] = []
        last = 0.0
        while True:
            # Enough gaps to pass the end with overwhelming probability; loop if not.
            remaining = self.rate * (duration - last)
            size = int(remaining + 6 * math.sqrt(remaining) + 16)
            times = last + np.cumsum(gen.exponential(1.0 / self.rate, size))
            if times[-1] >= duration:
                parts.append(times[times < duration])
                break
            parts.append(times)
            last = float(times[-1])
        return np.concatenate(parts)


@dataclass(frozen=True)
class Ramp:
    """Rate changes linearly from ``start_rate`` at t0 to ``end_rate`` at the end of the run."""

    start_rate: float
    end_rate: float

    def __post_init__(self) -> None:
        _set_number(self, "start_rate")
        _set_number(self, "end_rate")

    @property
    def peak_rate(self) -> float:
        return max(self.start_rate, self.end_rate)

    def scaled(self, factor: float) -> Ramp:
        f = _factor(factor)
        return replace(self, start_rate=self.start_rate * f, end_rate=self.end_rate * f)

    def stretched(self, factor: float) -> Ramp:
        """A ramp spans the whole run by definition: any duration already stretches it."""
        return self

    def rate_at(self, t: float, duration: float | None = None) -> float:
        if duration is None:
            raise ValueError("a ramp's rate depends on the run's duration; pass duration=")
        duration = _duration(duration)
        frac = min(max(t / duration, 0.0), 1.0)
        return self.start_rate + (self.end_rate - self.start_rate) * frac

    def expected_count(self, duration: float) -> float:
        return (self.start_rate + self.end_rate) / 2 * _duration(duration)

    def offsets(self, duration: float, rng: np.random.Generator | None = None) -> Offsets:
        duration = _duration(duration)
        n = _count(self.expected_count(duration), "ramp")
        if n == 0:
            return _empty()
        k = np.arange(n, dtype=np.float64)
        a = self.start_rate
        slope = (self.end_rate - a) / duration
        # Solve a*t + slope*t^2/2 = k in the cancellation-free form t = 2k / (a + sqrt(...)).
        root = np.sqrt(np.maximum(a * a + 2.0 * slope * k, 0.0))
        denom = a + root
        t = np.divide(2.0 * k, denom, out=np.zeros_like(k), where=denom > 0)
        return _finish(t, duration)


@dataclass(frozen=True)
class Steps:
    """A staircase: ``((length, rate), ...)`` in order; the last rate holds past the last step."""

    steps: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.steps, (tuple, list)) or not self.steps:
            raise ScheduleError("steps must be a non-empty list of (duration, rate) pairs")
        clean = []
        for i, step in enumerate(self.steps):
            if not isinstance(step, (tuple, list)) or len(step) != 2:
                raise ScheduleError(f"steps[{i}] must be a (duration, rate) pair, not {step!r}")
            clean.append(
                (
                    _number("steps", f"[{i}] duration", step[0], positive=True),
                    _number("steps", f"[{i}] rate", step[1]),
                )
            )
        object.__setattr__(self, "steps", tuple(clean))

    @property
    def total_duration(self) -> float:
        """Sum of the step lengths: the run length this shape was written for."""
        return math.fsum(d for d, _ in self.steps)

    @property
    def peak_rate(self) -> float:
        return max(r for _, r in self.steps)

    def scaled(self, factor: float) -> Steps:
        f = _factor(factor)
        return Steps(tuple((d, r * f) for d, r in self.steps))

    def stretched(self, factor: float) -> Steps:
        f = _factor(factor)
        return Steps(tuple((d * f, r) for d, r in self.steps))

    @cached_property
    def _pieces(self) -> _PiecewiseConstant:
        starts = [0.0]
        for length, _ in self.steps[:-1]:
            starts.append(starts[-1] + length)
        return _PiecewiseConstant(starts, [r for _, r in self.steps])

    def rate_at(self, t: float, duration: float | None = None) -> float:
        return self._pieces.rate_at(t)

    def expected_count(self, duration: float) -> float:
        return self._pieces.cumulative(_duration(duration))

    def offsets(self, duration: float, rng: np.random.Generator | None = None) -> Offsets:
        return self._pieces.offsets(_duration(duration), "steps")


@dataclass(frozen=True)
class Spike:
    """``base_rate``, except ``spike_rate`` for ``length`` seconds starting at ``at``."""

    base_rate: float
    spike_rate: float
    at: float
    length: float

    def __post_init__(self) -> None:
        _set_number(self, "base_rate")
        _set_number(self, "spike_rate")
        _set_number(self, "at")
        _set_number(self, "length", positive=True)

    @property
    def peak_rate(self) -> float:
        return max(self.base_rate, self.spike_rate)

    def scaled(self, factor: float) -> Spike:
        f = _factor(factor)
        return Spike(self.base_rate * f, self.spike_rate * f, self.at, self.length)

    def stretched(self, factor: float) -> Spike:
        f = _factor(factor)
        return Spike(self.base_rate, self.spike_rate, self.at * f, self.length * f)

    @cached_property
    def _pieces(self) -> _PiecewiseConstant:
        if self.at == 0:
            return _PiecewiseConstant([0.0, self.length], [self.spike_rate, self.base_rate])
        return _PiecewiseConstant(
            [0.0, self.at, self.at + self.length], [self.base_rate, self.spike_rate, self.base_rate]
        )

    def rate_at(self, t: float, duration: float | None = None) -> float:
        return self.spike_rate if self.at <= t < self.at + self.length else self.base_rate

    def expected_count(self, duration: float) -> float:
        return self._pieces.cumulative(_duration(duration))

    def offsets(self, duration: float, rng: np.random.Generator | None = None) -> Offsets:
        return self._pieces.offsets(_duration(duration), "spike")


@dataclass(frozen=True)
class Sine:
    """``mean_rate + amplitude * sin(2 pi t / period)``; amplitude may not exceed the mean."""

    mean_rate: float
    amplitude: float
    period: float

    def __post_init__(self) -> None:
        _set_number(self, "mean_rate")
        _set_number(self, "amplitude")
        _set_number(self, "period", positive=True)
        if self.amplitude > self.mean_rate:
            raise ScheduleError(
                f"sine amplitude {self.amplitude:g} exceeds mean_rate {self.mean_rate:g}: "
                "the rate would go negative"
            )

    @property
    def peak_rate(self) -> float:
        return self.mean_rate + self.amplitude

    def scaled(self, factor: float) -> Sine:
        f = _factor(factor)
        return Sine(self.mean_rate * f, self.amplitude * f, self.period)

    def stretched(self, factor: float) -> Sine:
        """Periodic: a longer run shows more periods, not slower ones."""
        return self

    def rate_at(self, t: float, duration: float | None = None) -> float:
        return float(self._rate(np.float64(t)))

    def _rate(self, t: Any) -> Any:
        return self.mean_rate + self.amplitude * np.sin(2 * np.pi * t / self.period)

    def _cumulative(self, t: Any) -> Any:
        w = 2 * np.pi / self.period
        return self.mean_rate * t + self.amplitude / w * (1 - np.cos(w * t))

    def expected_count(self, duration: float) -> float:
        return float(self._cumulative(np.float64(_duration(duration))))

    def offsets(self, duration: float, rng: np.random.Generator | None = None) -> Offsets:
        duration = _duration(duration)
        n = _count(self.expected_count(duration), "sine")
        if n == 0:
            return _empty()
        # 64 grid cells per period (at least 1,024) bracket every target; Newton refines.
        cells = int(min(max(1024, 64 * duration / self.period), 4_000_000))
        return _finish(
            _invert(self._cumulative, self._rate, np.arange(n, dtype=np.float64), duration, cells),
            duration,
        )


def _invert(
    cumulative: Callable[[Any], Any],
    rate: Callable[[Any], Any],
    k: Offsets,
    duration: float,
    cells: int,
) -> Offsets:
    """Times where a non-decreasing ``cumulative`` reaches each target ``k``, vectorised."""
    grid = np.linspace(0.0, duration, cells + 1)
    cum = cumulative(grid)
    j = np.clip(np.searchsorted(cum, k, side="right") - 1, 0, cells - 1)
    lo, hi = grid[j], grid[j + 1]
    span = cum[j + 1] - cum[j]
    frac = np.divide(k - cum[j], span, out=np.zeros_like(k), where=span > 0)
    t = lo + np.clip(frac, 0.0, 1.0) * (hi - lo)
    for _ in range(4):
        r = rate(t)
        step = np.divide(cumulative(t) - k, r, out=np.zeros_like(k), where=r > 1e-12)
        t = np.clip(t - step, lo, hi)
    return np.asarray(t, dtype=np.float64)


def _empty() -> Offsets:
    return np.zeros(0, dtype=np.float64)


# -- closed model --------------------------------------------------------------------------


@dataclass(frozen=True)
class Closed:
    """A closed model: ``devices`` loop forever, waiting ``think_time`` s between enrollments.

    Only a description: the arrival rate follows the CA's latency, so there is no schedule.
    """

    devices: int
    think_time: float

    def __post_init__(self) -> None:
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices < 1:
            raise ScheduleError(f"closed devices must be a positive integer, not {self.devices!r}")
        _set_number(self, "think_time")


OpenShape = Constant | Poisson | Ramp | Steps | Spike | Sine
Shape = OpenShape | Closed

SHAPES: dict[str, type[Shape]] = {
    "constant": Constant,
    "poisson": Poisson,
    "ramp": Ramp,
    "steps": Steps,
    "spike": Spike,
    "sine": Sine,
    "closed": Closed,
}


def _parse_steps(value: object) -> tuple[tuple[object, object], ...]:
    """Accept ``[[60, 10], ...]`` or ``[{"duration": 60, "rate": 10}, ...]``."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ScheduleError("steps must be a non-empty list of [duration, rate] pairs")
    out = []
    for i, step in enumerate(value):
        if isinstance(step, Mapping):
            extra = set(step) - {"duration", "rate"}
            if extra or len(step) != 2:
                raise ScheduleError(
                    f"steps[{i}] must have exactly the keys 'duration' and 'rate', "
                    f"not {sorted(map(str, step))}"
                )
            out.append((step["duration"], step["rate"]))
        elif isinstance(step, (list, tuple)) and len(step) == 2:
            out.append((step[0], step[1]))
        else:
            raise ScheduleError(f"steps[{i}] must be a [duration, rate] pair, not {step!r}")
    return tuple(out)


def parse_shape(mapping: Mapping[str, Any]) -> Shape:
    """Build a shape from a profile mapping like ``{"shape": "ramp", "start_rate": 10, ...}``."""
    if not isinstance(mapping, Mapping):
        raise ScheduleError(f"an arrival shape must be a mapping, not {type(mapping).__name__}")
    allowed_shapes = ", ".join(SHAPES)
    if "shape" not in mapping:
        raise ScheduleError(f"arrival shape needs a 'shape' key (one of: {allowed_shapes})")
    name = mapping["shape"]
    cls = SHAPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ScheduleError(f"unknown arrival shape {name!r} (allowed: {allowed_shapes})")
    params = {f.name: f for f in fields(cls)}
    required = [n for n, f in params.items() if f.default is MISSING]
    for key in mapping:
        if key != "shape" and key not in params:
            raise ScheduleError(
                f"unknown key {key!r} for the {name} shape (allowed: {', '.join(params)})"
            )
    missing = [k for k in required if k not in mapping]
    if missing:
        raise ScheduleError(f"the {name} shape needs {', '.join(repr(k) for k in missing)}")
    kwargs = {k: v for k, v in mapping.items() if k != "shape"}
    if cls is Steps:
        kwargs["steps"] = _parse_steps(kwargs["steps"])
    return cls(**kwargs)
