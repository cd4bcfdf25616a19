"""Exact work splitting across worker processes (k6 execution segments).

Every worker computes the same global schedule and keeps only its share. Shares are exact
fractions that add up to 1, and the split of arrivals is exact too: every arrival goes to exactly
one worker, and each worker's arrivals are spread evenly over the run, so a constant 1,000/s over
four workers is four constant 250/s streams, not four bursts.

How arrivals are dealt: with all boundaries over a common denominator ``D``, worker ``s`` owns
``D * fraction_s`` of every ``D`` consecutive arrivals, and arrival ``i`` belongs to
``pattern[i % D]``. The pattern deals the ``D`` positions in the order of each worker's ideal,
evenly spaced positions, which interleaves workers as evenly as possible. For ``split(n)`` it is
simply ``0, 1, ..., n-1``: worker ``w`` gets arrivals ``w, w + n, w + 2n, ...``.

Device indices, by contrast, are split into contiguous shards (``Segment.range``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from itertools import pairwise
from math import lcm

import numpy as np
import numpy.typing as npt

from fleet.errors import FleetError

__all__ = ["MAX_PATTERN", "Segment", "SegmentError", "split"]

MAX_PATTERN = 1_000_000
"""Largest common denominator accepted (length of the dealing pattern)."""


class SegmentError(FleetError):
    """A worker split that cannot be made (no workers, bad weights)."""


@dataclass(frozen=True)
class Segment:
    """Worker ``index``'s share ``[boundaries[index], boundaries[index + 1])`` of the run."""

    index: int
    boundaries: tuple[Fraction, ...] = field(repr=False)

    def __post_init__(self) -> None:
        b = self.boundaries
        if len(b) < 2 or b[0] != 0 or b[-1] != 1 or any(x >= y for x, y in pairwise(b)):
            raise SegmentError("segment boundaries must rise strictly from 0 to 1")
        if not 0 <= self.index < len(b) - 1:
            raise SegmentError(f"segment index {self.index} out of range 0..{len(b) - 2}")

    @property
    def start(self) -> Fraction:
        return self.boundaries[self.index]

    @property
    def end(self) -> Fraction:
        return self.boundaries[self.index + 1]

    @property
    def fraction(self) -> Fraction:
        return self.end - self.start

    @property
    def workers(self) -> int:
        return len(self.boundaries) - 1

    def __str__(self) -> str:
        return f"{self.start}:{self.end}"

    @cached_property
    def _positions(self) -> npt.NDArray[np.int64]:
        """This worker's positions within one block of ``denominator`` arrivals."""
        return np.flatnonzero(_pattern(self.boundaries) == self.index)

    def select(self, offsets: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """This worker's share of a global schedule (a copy; order kept)."""
        offsets = np.asarray(offsets)
        return offsets[self.indices(len(offsets))]

    def indices(self, n: int) -> npt.NDArray[np.int64]:
        """Positions of this worker's arrivals among ``n`` global arrivals, ascending."""
        d = _denominator(self.boundaries)
        blocks = -(-n // d)
        idx = (np.arange(blocks, dtype=np.int64)[:, None] * d + self._positions[None, :]).ravel()
        return idx[idx < n]

    def count(self, n: int) -> int:
        """How many of ``n`` global arrivals this worker gets, without building arrays."""
        d = _denominator(self.boundaries)
        full, rest = divmod(n, d)
        pos = self._positions
        return full * len(pos) + int(np.count_nonzero(pos < rest))

    def range(self, n_devices: int) -> range:
        """This worker's contiguous shard of device indices ``0..n_devices-1``."""
        if n_devices < 0:
            raise SegmentError(f"device count must not be negative, not {n_devices}")
        return range(int(n_devices * self.start), int(n_devices * self.end))


def _denominator(boundaries: tuple[Fraction, ...]) -> int:
    return lcm(*(b.denominator for b in boundaries))


_PATTERNS: dict[tuple[Fraction, ...], npt.NDArray[np.int64]] = {}


def _pattern(boundaries: tuple[Fraction, ...]) -> npt.NDArray[np.int64]:
    """Owner of each position in a block of D arrivals."""
    cached = _PATTERNS.get(boundaries)
    if cached is not None:
        return cached
    d = _denominator(boundaries)
    weights = np.asarray([int((b - a) * d) for a, b in pairwise(boundaries)])
    # Each owner's ideal positions are the midpoints of w equal slices of the block; dealing
    # positions in order of those ideals spreads every owner evenly (ties: lower index first).
    owner = np.repeat(np.arange(len(weights), dtype=np.int64), weights)
    nth = np.arange(d) - np.repeat(np.cumsum(weights) - weights, weights)
    ideal = (2 * nth + 1) * d / (2.0 * weights[owner])
    pattern = owner[np.lexsort((owner, ideal))]
    _PATTERNS[boundaries] = pattern
    return pattern


def split(n_workers: int, weights: Sequence[int] | None = None) -> list[Segment]:
    """Cut the run into ``n_workers`` segments, equal or proportional to integer ``weights``."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise SegmentError(f"number of workers must be a positive integer, not {n_workers!r}")
    if weights is None:
        weights = [1] * n_workers
    weights = list(weights)
    if len(weights) != n_workers:
        raise SegmentError(f"{len(weights)} weights given for {n_workers} workers")
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in weights):
        raise SegmentError(f"worker weights must be positive integers, not {weights}")
    total = sum(weights)
    bounds = [Fraction(0)]
    running = 0
    for w in weights:
        running += w
        bounds.append(Fraction(running, total))
    boundaries = tuple(bounds)
    if _denominator(boundaries) > MAX_PATTERN:
        raise SegmentError(
            f"worker weights {weights} need a pattern longer than {MAX_PATTERN:,}; "
            "use smaller weights"
        )
    return [Segment(i, boundaries) for i in range(n_workers)]
