"""Arrival schedules: exact counts, achieved rates per window, Poisson statistics, parsing."""

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.errors import FleetError
from fleet.load.schedule import (
    Closed,
    Constant,
    Poisson,
    Ramp,
    ScheduleError,
    Sine,
    Spike,
    Steps,
    parse_shape,
)


def _check_offsets(o: np.ndarray, duration: float) -> None:
    assert o.dtype == np.float64 and o.ndim == 1
    assert np.all(np.diff(o) >= 0)
    if o.size:
        assert o[0] >= 0 and o[-1] < duration


def _window_counts(o: np.ndarray, duration: float, width: float) -> np.ndarray:
    edges = np.arange(0.0, duration + width / 2, width)
    return np.histogram(o, bins=edges)[0]


@pytest.mark.parametrize(
    ("shape", "duration", "count"),
    [
        (Constant(100), 60, 6_000),
        (Constant(0.5), 9, 5),  # 0, 2, 4, 6, 8
        (Constant(0), 60, 0),
        (Ramp(0, 100), 10, 500),
        (Ramp(100, 0), 10, 500),
        (Ramp(10, 500), 60, 15_300),
        (Steps(((60, 10), (60, 50))), 120, 3_600),
        (Steps(((60, 10), (60, 50))), 180, 6_600),  # the last rate holds
        (Steps(((60, 10), (60, 50))), 30, 300),  # cut short
        (Spike(10, 100, at=5, length=2), 10, 280),
        (Spike(10, 100, at=0, length=2), 10, 280),
        (Spike(10, 100, at=9, length=5), 10, 190),  # spike runs past the end
        (Sine(50, 50, period=10), 60, 3_000),
        (Sine(50, 20, period=7), 70, 3_500),
    ],
)
def test_counts_are_exact(shape, duration, count):
    o = shape.offsets(duration)
    _check_offsets(o, duration)
    assert len(o) == count
    # ceil: arrivals k = 0, 1, ... while k < N(duration) (4.5 expected -> 5 arrivals).
    assert math.ceil(shape.expected_count(duration) - 1e-9) == count


def test_constant_is_evenly_spaced_from_t0():
    o = Constant(100).offsets(60)
    np.testing.assert_allclose(o, np.arange(6000) / 100)
    assert np.all(_window_counts(o, 60, 1.0) == 100)


def _cumulative(shape, t: np.ndarray, duration: float) -> np.ndarray:
    """Expected arrivals by time t, written out independently of the implementation."""
    if isinstance(shape, Ramp):
        a, b = shape.start_rate, shape.end_rate
        return a * t + (b - a) * t * t / (2 * duration)
    if isinstance(shape, Sine):
        w = 2 * math.pi / shape.period
        return shape.mean_rate * t + shape.amplitude / w * (1 - np.cos(w * t))
    return np.array([shape.expected_count(x) if x > 0 else 0.0 for x in t])


@pytest.mark.parametrize(
    ("shape", "duration"),
    [
        (Ramp(0, 100), 10),
        (Ramp(300, 20), 30),
        (Steps(((5, 10), (5, 0), (5, 40), (5, 3))), 20),
        (Spike(20, 400, at=3, length=1.5), 10),
        (Sine(100, 100, period=4), 20),
        (Sine(80, 30, period=3), 12),
    ],
)
def test_arrival_k_is_where_the_expected_count_reaches_k(shape, duration):
    o = shape.offsets(duration)
    cum = _cumulative(shape, o, duration)
    np.testing.assert_allclose(cum, np.arange(len(o)), atol=1e-6)
    # Achieved rate per window: every window of 0.5 s holds its expected count, within one.
    edges = np.arange(0.0, duration + 0.25, 0.5)
    got = np.histogram(o, bins=edges)[0]
    expected = np.diff(_cumulative(shape, edges, duration))
    assert np.all(np.abs(got - expected) < 1 + 1e-9)


def test_pause_gets_no_arrivals_and_each_step_its_exact_share():
    o = Steps(((1, 10), (1, 0), (1, 10))).offsets(3)
    np.testing.assert_allclose(o, np.r_[np.arange(10) / 10, 2 + np.arange(10) / 10])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=1, max_value=30), st.integers(min_value=0, max_value=50)),
        min_size=1,
        max_size=6,
    )
)
def test_integer_steps_give_exact_counts_per_step(steps):
    shape = Steps(tuple(steps))
    total = sum(d for d, _ in steps)
    o = shape.offsets(total)
    _check_offsets(o, total)
    assert len(o) == sum(d * r for d, r in steps)
    start = 0
    for d, r in steps:
        assert np.count_nonzero((o >= start) & (o < start + d)) == d * r
        start += d


def test_rate_at():
    assert Constant(5).rate_at(3) == 5
    assert Ramp(0, 100).rate_at(5, duration=10) == 50
    assert Ramp(0, 100).rate_at(20, duration=10) == 100
    with pytest.raises(ValueError, match="duration"):
        Ramp(0, 100).rate_at(5)
    steps = Steps(((60, 10), (60, 50)))
    assert [steps.rate_at(t) for t in (0, 59.9, 60, 500)] == [10, 10, 50, 50]
    spike = Spike(10, 100, at=5, length=2)
    assert [spike.rate_at(t) for t in (4.9, 5, 6.9, 7)] == [10, 100, 100, 10]
    sine = Sine(50, 20, period=8)
    assert sine.rate_at(2) == pytest.approx(70) and sine.rate_at(6) == pytest.approx(30)


def test_poisson_count_and_gaps_are_within_statistical_bounds():
    rate, duration = 200.0, 600.0
    o = Poisson(rate).offsets(duration, np.random.default_rng(12345))
    _check_offsets(o, duration)
    mean = rate * duration  # the count is Poisson(120,000): sd about 346
    assert abs(len(o) - mean) < 5 * math.sqrt(mean)
    gaps = np.diff(o)
    assert np.mean(gaps) == pytest.approx(1 / rate, rel=0.02)
    assert np.std(gaps) == pytest.approx(1 / rate, rel=0.02)  # exponential: sd == mean
    # Per-second counts are Poisson(200): their variance matches their mean.
    per_second = _window_counts(o, duration, 1.0)
    assert per_second.mean() == pytest.approx(rate, rel=0.02)
    assert per_second.var() == pytest.approx(rate, rel=0.2)


def test_poisson_is_reproducible():
    a = Poisson(50).offsets(100)
    np.testing.assert_array_equal(a, Poisson(50).offsets(100))
    assert not np.array_equal(a, Poisson(50, seed=1).offsets(100))
    np.testing.assert_array_equal(
        Poisson(50).offsets(100, np.random.default_rng(3)),
        Poisson(50, seed=3).offsets(100),
    )
    assert len(Poisson(0).offsets(100)) == 0


def test_a_million_arrivals_are_placed_quickly():
    for shape, duration in [(Ramp(0, 1000), 2000), (Sine(500, 400, period=60), 2000)]:
        t = time.perf_counter()
        o = shape.offsets(duration)
        elapsed = time.perf_counter() - t
        assert len(o) >= 1_000_000
        _check_offsets(o, duration)
        assert elapsed < 3.0  # measured: 0.01 s (ramp), 0.3 s (sine)


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        ({"shape": "constant", "rate": 100}, Constant(100)),
        ({"shape": "poisson", "rate": 5.5}, Poisson(5.5)),
        ({"shape": "poisson", "rate": 5, "seed": 9}, Poisson(5, seed=9)),
        ({"shape": "ramp", "start_rate": 10, "end_rate": 500}, Ramp(10, 500)),
        ({"shape": "steps", "steps": [[60, 10], [60, 50]]}, Steps(((60, 10), (60, 50)))),
        (
            {"shape": "steps", "steps": [{"duration": 60, "rate": 10}, {"rate": 5, "duration": 1}]},
            Steps(((60, 10), (1, 5))),
        ),
        (
            {"shape": "spike", "base_rate": 10, "spike_rate": 90, "at": 30, "length": 5},
            Spike(10, 90, 30, 5),
        ),
        ({"shape": "sine", "mean_rate": 50, "amplitude": 10, "period": 60}, Sine(50, 10, 60)),
        ({"shape": "closed", "devices": 1000, "think_time": 2}, Closed(1000, 2.0)),
    ],
)
def test_parse_shape(mapping, expected):
    assert parse_shape(mapping) == expected


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({}, "needs a 'shape' key .*constant, poisson, ramp, steps, spike, sine, closed"),
        ({"shape": "rmp"}, "unknown arrival shape 'rmp' .*allowed: constant"),
        ({"shape": 3}, "unknown arrival shape 3"),
        ({"shape": "ramp", "start_rate": 1}, "ramp shape needs 'end_rate'"),
        ({"shape": "constant", "rate": 1, "rat": 2}, "unknown key 'rat' .*allowed: rate"),
        ({"shape": "constant", "rate": -1}, "rate must be a non-negative"),
        ({"shape": "constant", "rate": "100"}, "rate must be a number, not '100'"),
        ({"shape": "constant", "rate": True}, "rate must be a number"),
        ({"shape": "constant", "rate": float("inf")}, "finite"),
        ({"shape": "sine", "mean_rate": 10, "amplitude": 20, "period": 5}, "amplitude 20 exceeds"),
        ({"shape": "sine", "mean_rate": 10, "amplitude": 2, "period": 0}, "period must be a pos"),
        ({"shape": "spike", "base_rate": 1, "spike_rate": 2, "at": 0, "length": 0}, "length"),
        ({"shape": "steps", "steps": []}, "non-empty"),
        ({"shape": "steps", "steps": [[1, 2, 3]]}, r"steps\[0\] must be"),
        ({"shape": "steps", "steps": [{"duration": 1}]}, r"steps\[0\] must have exactly"),
        ({"shape": "steps", "steps": [[1, 2], [0, 2]]}, r"\[1\] duration must be a positive"),
        ({"shape": "poisson", "rate": 1, "seed": -1}, "seed"),
        ({"shape": "closed", "devices": 0, "think_time": 1}, "devices must be a positive int"),
        ({"shape": "closed", "devices": 2.5, "think_time": 1}, "devices"),
    ],
)
def test_parse_shape_errors_name_the_problem(mapping, message):
    with pytest.raises(ScheduleError, match=message) as info:
        parse_shape(mapping)
    assert isinstance(info.value, FleetError)
    assert "\n" not in str(info.value)


def test_parse_shape_refuses_non_mappings():
    with pytest.raises(ScheduleError, match="must be a mapping"):
        parse_shape([("shape", "constant")])  # type: ignore[arg-type]


def test_bad_durations_and_absurd_sizes_are_refused():
    with pytest.raises(ScheduleError, match="duration"):
        Constant(10).offsets(0)
    with pytest.raises(ScheduleError, match="duration"):
        Ramp(1, 2).offsets(float("nan"))
    with pytest.raises(ScheduleError, match="arrivals, more than"):
        Constant(1e6).offsets(3600)
    with pytest.raises(ScheduleError, match="arrivals, more than"):
        Poisson(1e6).offsets(3600)


def test_closed_has_no_schedule():
    assert not hasattr(Closed(10, 1.0), "offsets")


# -- scaling for command-line overrides (--rate scales rates, --duration stretches scenarios) ---

SCALABLE = [
    Constant(40), Poisson(40, seed=3), Ramp(10, 3000), Steps(((15, 50), (30, 800), (15, 50))),
    Spike(20, 600, 10, 20), Sine(150, 100, 30),
]


@pytest.mark.parametrize("shape", SCALABLE, ids=lambda s: type(s).__name__)
def test_scaled_multiplies_every_rate(shape) -> None:  # type: ignore[no-untyped-def]
    scaled = shape.scaled(300 / shape.peak_rate)
    assert scaled.peak_rate == pytest.approx(300)
    for t in (0.0, 7.5, 20.0, 33.3, 59.0):
        assert scaled.rate_at(t, 60) == pytest.approx(shape.rate_at(t, 60) * 300 / shape.peak_rate)
    assert scaled.expected_count(60) == pytest.approx(shape.expected_count(60) * 300 / shape.peak_rate)
    assert type(scaled) is type(shape)


def test_scaled_sine_keeps_its_form() -> None:
    assert Sine(150, 100, 30).scaled(1.2) == Sine(180, 120, 30)


@pytest.mark.parametrize("factor", [0.2, 1.0, 2.5])
def test_stretched_scenarios_play_whole_in_the_new_duration(factor: float) -> None:
    """Steps and spike: the shape at factor * t is the original at t (same rates, same counts
    per part of the scenario), so a short run still shows the wave."""
    for shape, duration in ((Steps(((15, 50), (30, 800), (15, 50))), 60.0), (Spike(20, 600, 10, 20), 60.0)):
        stretched = shape.stretched(factor)
        for t in (0.0, 5.0, 12.0, 29.0, 41.0, 59.0):
            assert stretched.rate_at(t * factor, duration * factor) == shape.rate_at(t, duration)
        assert stretched.expected_count(duration * factor) == pytest.approx(shape.expected_count(duration) * factor)
    # A ramp spans the run by definition; steady shapes have no timeline.
    for steady in (Constant(5), Poisson(5), Sine(10, 5, 30), Ramp(1, 9)):
        assert steady.stretched(factor) == steady


def test_scale_factor_must_be_positive() -> None:
    with pytest.raises(ScheduleError, match="factor"):
        Constant(5).scaled(0)
    with pytest.raises(ScheduleError, match="factor"):
        Steps(((1, 2),)).stretched(-1)
