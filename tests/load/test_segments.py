"""Execution segments: exact shares, every arrival in exactly one worker, even spread."""

from fractions import Fraction
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.errors import FleetError
from fleet.load.schedule import Constant
from fleet.load.segments import Segment, SegmentError, split


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64])
def test_fractions_add_up_to_exactly_one(n):
    segs = split(n)
    assert all(isinstance(s.fraction, Fraction) for s in segs)
    assert sum(s.fraction for s in segs) == 1
    assert [s.index for s in segs] == list(range(n))
    assert segs[0].start == 0 and segs[-1].end == 1
    assert all(a.end == b.start for a, b in pairwise(segs))


def _check_partition(segs: list[Segment], n: int) -> list[np.ndarray]:
    offsets = np.arange(n, dtype=np.float64) * 0.25
    parts = [s.select(offsets) for s in segs]
    idx = [s.indices(n) for s in segs]
    allidx = np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))  # each arrival exactly once
    for s, part, ix in zip(segs, parts, idx):
        np.testing.assert_array_equal(part, offsets[ix])
        assert np.all(np.diff(part) > 0)  # order kept
        assert s.count(n) == len(part)
    return parts


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=1, max_value=64), st.integers(min_value=0, max_value=5000))
def test_equal_split_covers_every_arrival_once_and_evenly(n_workers, n):
    segs = split(n_workers)
    parts = _check_partition(segs, n)
    sizes = [len(p) for p in parts]
    assert sum(sizes) == n
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=8),
    st.integers(min_value=0, max_value=3000),
)
def test_weighted_split_is_exact(weights, n):
    segs = split(len(weights), weights)
    assert sum(s.fraction for s in segs) == 1
    parts = _check_partition(segs, n)
    total = sum(weights)
    for w, part in zip(weights, parts):
        # Exact over whole blocks of D arrivals, never more than a block's share off in between.
        assert abs(len(part) - n * Fraction(w, total)) <= w
        blocks = n - n % total
        assert np.count_nonzero(part < blocks * 0.25) == blocks * w // total


def test_each_worker_gets_an_even_stream():
    offsets = Constant(1000).offsets(10)
    for s in split(4):
        part = s.select(offsets)
        assert len(part) == 2500
        np.testing.assert_allclose(np.diff(part), 0.004)  # four 250/s streams
        np.testing.assert_allclose(part[0], s.index / 1000)


def test_weighted_workers_are_interleaved_not_bunched():
    offsets = Constant(600).offsets(10)
    segs = split(3, [1, 2, 3])
    for s, w in zip(segs, [1, 2, 3]):
        part = s.select(offsets)
        assert len(part) == 6000 * w // 6
        # Per-second counts are exactly the share of 600/s: no bursts.
        counts = np.histogram(part, bins=np.arange(11))[0]
        assert np.all(counts == 100 * w)
        assert np.max(np.diff(part)) <= 2.5 / (100 * w)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=1, max_value=64), st.integers(min_value=0, max_value=100_000))
def test_device_ranges_are_disjoint_and_cover_all(n_workers, n_devices):
    ranges = [s.range(n_devices) for s in split(n_workers)]
    assert ranges[0].start == 0 and ranges[-1].stop == n_devices
    assert all(a.stop == b.start for a, b in pairwise(ranges))
    sizes = [len(r) for r in ranges]
    assert sum(sizes) == n_devices and max(sizes) - min(sizes) <= 1


def test_str_and_properties():
    segs = split(3, [1, 1, 2])
    assert [str(s) for s in segs] == ["0:1/4", "1/4:1/2", "1/2:1"]
    assert segs[2].fraction == Fraction(1, 2) and segs[2].workers == 3


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: split(0), "positive integer"),
        (lambda: split(2, [1]), "1 weights given for 2 workers"),
        (lambda: split(2, [1, 0]), "positive integers"),
        (lambda: split(2, [999_983, 1_000_003]), "pattern longer"),
        (lambda: Segment(2, (Fraction(0), Fraction(1))), "out of range"),
        (lambda: Segment(0, (Fraction(0), Fraction(1, 2))), "from 0 to 1"),
        (lambda: split(2)[0].range(-1), "negative"),
    ],
)
def test_errors(call, message):
    with pytest.raises(SegmentError, match=message) as info:
        call()
    assert isinstance(info.value, FleetError)
