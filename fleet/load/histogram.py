"""A mergeable HDR-style latency histogram.

Load tests run in several worker processes and report percentiles over the whole run. Percentiles
cannot be averaged, so every worker keeps a histogram of fixed log-linear buckets and the parent
adds the bucket counts: merging is exact and is the only way to combine results.

Buckets: values are counted in integer nanoseconds. Below 256 ns every nanosecond has its own
bucket; above that each power of two ``[2**k, 2**(k+1))`` is split into 128 equal sub-buckets, so a
bucket is at most 1/128 of its lower bound wide. Reporting the bucket midpoint bounds the relative
error by 1/256 (0.4 %) for anything from 1 µs up to the 3,600 s ceiling (4,562 buckets, 36 KiB).
Values above the ceiling are counted in the top bucket (``max`` still keeps the true value);
negative values (float noise in a clock difference) count as zero.

``record`` appends to a list and every ``_BATCH`` values are counted at once with numpy (a
per-value bucket update costs more than the append); anything that reads the histogram counts
the pending values first, so readers never see a stale histogram.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fleet.errors import FleetError

__all__ = [
    "BUCKET_COUNT",
    "BUCKET_MIDPOINT_S",
    "BUCKET_UPPER_S",
    "HIGHEST_TRACKABLE",
    "HistogramError",
    "LatencyHistogram",
]

_SUB_BITS = 7  # 128 linear sub-buckets per power of two
_NS_PER_S = 1e9
HIGHEST_TRACKABLE = 3600.0
"""Largest value (seconds) that gets its own bucket; larger values land in the top bucket."""
_T_MAX = int(HIGHEST_TRACKABLE * _NS_PER_S)
_FORMAT = "fleet-hdr-1"
_BATCH = 1024  # values held in the pending list before they are counted
_INF = math.inf


class HistogramError(FleetError):
    """A serialised histogram (from a report file or a worker) that cannot be loaded."""


def _index(ticks: int) -> int:
    """Bucket index of a non-negative nanosecond count (the scalar twin of ``_indices``)."""
    e = max(ticks.bit_length() - (_SUB_BITS + 1), 0)
    return (e << _SUB_BITS) + (ticks >> e)


BUCKET_COUNT = _index(_T_MAX) + 1


def _indices(ticks: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Vectorised ``_index``: the same integers for every element."""
    # frexp gives the exact bit length for integers below 2**53 (ours stop at 3.6e12).
    bit_length = np.frexp(ticks.astype(np.float64))[1].astype(np.int64)
    e = np.maximum(bit_length - (_SUB_BITS + 1), 0)
    return (e << _SUB_BITS) + (ticks >> e)


def _bucket_bounds() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Lower bound and width (in ns) of every bucket."""
    idx = np.arange(BUCKET_COUNT, dtype=np.int64)
    e = np.maximum((idx >> _SUB_BITS) - 1, 0)
    lower = (idx - (e << _SUB_BITS)) << e
    return lower.astype(np.float64), (np.int64(1) << e).astype(np.float64)


def _frozen(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    values.flags.writeable = False
    return values


_LOWER_NS, _WIDTH_NS = _bucket_bounds()
BUCKET_UPPER_S = _frozen((_LOWER_NS + _WIDTH_NS) / _NS_PER_S)
"""Upper edge of every bucket in seconds, read-only: ``counts[i]`` holds values below
``BUCKET_UPPER_S[i]`` (the top bucket also those above ``HIGHEST_TRACKABLE``). Exporters map
buckets onto their own bounds with it."""
BUCKET_MIDPOINT_S = _frozen((_LOWER_NS + _WIDTH_NS / 2) / _NS_PER_S)
"""The value reported for each bucket: its midpoint in seconds; read-only."""


class LatencyHistogram:
    """Counts of latencies (seconds) in fixed log-linear buckets; mergeable across processes."""

    __slots__ = ("_counts", "_max", "_min", "_n", "_pending", "_sum")

    def __init__(self) -> None:
        self._counts = np.zeros(BUCKET_COUNT, dtype=np.int64)
        self._n = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._pending: list[float] = []

    # -- recording ------------------------------------------------------------------------

    def record(self, value: float) -> None:
        """Count one value in seconds (cheap: appended, counted in batches); NaN
        raises ValueError, inf OverflowError, a negative value counts as zero."""
        if 0.0 <= value < _INF:  # the per-request hot path: one comparison and an append
            pending = self._pending
            pending.append(value)
            if len(pending) >= _BATCH:
                self._count_pending()
            return
        if value < 0:  # float noise in a clock difference; counts (and sums) as zero
            self._pending.append(0.0)
        elif value != value:  # noqa: PLR0124 - NaN
            raise ValueError("latency values must not be NaN")
        else:
            raise OverflowError("latency values must be finite")

    def _count_pending(self) -> None:
        """Count the values ``record`` appended (all finite and >= 0)."""
        pending = self._pending
        if pending:
            self._pending = []
            self._add(np.array(pending, dtype=np.float64))

    def record_many(self, values: npt.ArrayLike) -> None:
        """Count every value of an array (seconds), vectorised; same buckets as ``record``."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        if not np.all(np.isfinite(v)):
            raise ValueError("latency values must be finite")
        self._add(np.maximum(v, 0.0))

    def _add(self, v: npt.NDArray[np.float64]) -> None:
        """Count finite, non-negative values."""
        # Clip in float first so the int64 conversion cannot overflow, then truncate like int().
        ticks = np.clip(v * 1e9, 0.0, float(_T_MAX)).astype(np.int64)
        self._counts += np.bincount(_indices(ticks), minlength=BUCKET_COUNT)
        self._n += int(v.size)
        self._sum += float(v.sum())
        self._max = max(self._max, float(v.max()))
        self._min = min(self._min, float(v.min()))

    def merge(self, other: LatencyHistogram) -> None:
        """Add another histogram's counts to this one (exact)."""
        self._count_pending()
        other._count_pending()
        self._counts += other._counts
        self._n += other._n
        self._sum += other._sum
        self._max = max(self._max, other._max)
        self._min = min(self._min, other._min)

    def copy(self) -> LatencyHistogram:
        """An independent histogram with the same counts."""
        h = LatencyHistogram()
        h.merge(self)
        return h

    # -- reading --------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._n + len(self._pending)

    @property
    def min(self) -> float:
        """Smallest value recorded (exact), NaN when empty."""
        self._count_pending()
        return self._min if self._n else math.nan

    @property
    def max(self) -> float:
        """Largest value recorded (exact), NaN when empty."""
        self._count_pending()
        return self._max if self._n else math.nan

    @property
    def mean(self) -> float:
        """Exact mean of the recorded values, NaN when empty."""
        self._count_pending()
        return self._sum / self._n if self._n else math.nan

    @property
    def counts(self) -> npt.NDArray[np.int64]:
        """A read-only view of the bucket counts."""
        self._count_pending()
        view = self._counts.view()
        view.flags.writeable = False
        return view

    def percentile(self, q: float) -> float:
        """The value at rank ceil(q% of count), within 0.4 %; q=0 gives min, q=100 max."""
        return float(self.percentiles([q])[0])

    def percentiles(self, qs: Iterable[float]) -> npt.NDArray[np.float64]:
        """Several percentiles at once (same definition as ``percentile``)."""
        self._count_pending()
        q = np.asarray(list(qs), dtype=np.float64)
        if np.any((q < 0) | (q > 100)) or not np.all(np.isfinite(q)):
            raise ValueError("percentiles must be between 0 and 100")
        if self._n == 0:
            return np.full(q.shape, math.nan)
        # Rank of the wanted sample (1-based); the rounding absorbs float noise in q * n / 100
        # so that, for example, the 99.9th percentile of 1,000 values is rank 999, not 1,000.
        rank = np.maximum(np.ceil(np.round(q * self._n / 100.0, 9)), 1)
        cumulative = np.cumsum(self._counts)
        bucket = np.searchsorted(cumulative, rank, side="left")
        # Never report beyond what was seen: clamp the midpoint into [min, max]; the first and
        # last ranks are the exact min and max.
        value = np.clip(BUCKET_MIDPOINT_S[bucket], self._min, self._max)
        value[rank <= 1] = self._min
        value[rank >= self._n] = self._max
        return value

    def summary(self, qs: Iterable[float] = (50, 90, 99, 99.9)) -> dict[str, float]:
        """count, min, mean, max and the given percentiles, keyed like ``p99.9``."""
        qs = list(qs)
        self._count_pending()
        out: dict[str, float] = {
            "count": self._n,
            "min": self.min,
            "mean": self.mean,
            "max": self.max,
        }
        for q, value in zip(qs, self.percentiles(qs)):
            out[f"p{q:g}"] = float(value)
        return out

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-serialisable form: only non-zero buckets, as parallel lists."""
        self._count_pending()
        nz = np.flatnonzero(self._counts)
        return {
            "format": _FORMAT,
            "count": self._n,
            "sum": self._sum,
            "min": self._min if self._n else None,
            "max": self._max if self._n else None,
            "buckets": nz.tolist(),
            "counts": self._counts[nz].tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        """Load what ``to_dict`` wrote; raises HistogramError naming what is wrong."""
        if not isinstance(data, Mapping):
            raise HistogramError(f"histogram must be a mapping, not {type(data).__name__}")
        if data.get("format") != _FORMAT:
            raise HistogramError(
                f"histogram format {data.get('format')!r} is not supported (expected {_FORMAT!r})"
            )
        try:
            buckets = np.asarray(data["buckets"], dtype=np.int64)
            counts = np.asarray(data["counts"], dtype=np.int64)
            n = int(data["count"])
            total = float(data["sum"])
            lo, hi = data["min"], data["max"]
        except KeyError as exc:
            raise HistogramError(f"histogram is missing {exc.args[0]!r}") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise HistogramError(f"histogram has a malformed field: {exc}") from None
        if buckets.ndim != 1 or buckets.shape != counts.shape:
            raise HistogramError("histogram 'buckets' and 'counts' must be lists of equal length")
        if buckets.size and (buckets.min() < 0 or buckets.max() >= BUCKET_COUNT):
            raise HistogramError(f"histogram bucket index out of range 0..{BUCKET_COUNT - 1}")
        if np.any(counts < 0):
            raise HistogramError("histogram counts must not be negative")
        if len(np.unique(buckets)) != buckets.size:
            raise HistogramError("histogram bucket indices must not repeat")
        if int(counts.sum()) != n:
            raise HistogramError(f"histogram 'count' {n} does not match its buckets")
        h = cls()
        h._counts[buckets] = counts
        h._n = n
        h._sum = total
        if n:
            try:
                h._min, h._max = float(lo), float(hi)
            except (TypeError, ValueError):
                raise HistogramError("histogram 'min' and 'max' must be numbers") from None
        return h

    def __eq__(self, other: object) -> bool:
        """Same buckets, count, min and max (the float sum may differ by rounding)."""
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        self._count_pending()
        other._count_pending()
        return (self._n, self._min, self._max) == (other._n, other._min, other._max) and bool(
            np.array_equal(self._counts, other._counts)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        self._count_pending()
        if not self._n:
            return "LatencyHistogram(count=0)"
        p50, p99 = self.percentiles([50, 99])
        return (
            f"LatencyHistogram(count={self._n}, min={self._min:.6g}, p50={p50:.6g}, "
            f"p99={p99:.6g}, max={self._max:.6g})"
        )
