"""RunResults: merging workers adds counts and histograms exactly; JSON round trips."""

import json

import numpy as np

from fleet.load.results import RunResults, SecondSeries


def _worker(ok: int, failed: int, latency: float, elapsed: float) -> RunResults:
    r = RunResults()
    s = r.op("ir")
    for i in range(ok):
        s.ok += 1
        s.latency.record(latency)
        s.service.record(latency / 2)
        r.completions["ir"].add(i * elapsed / max(ok, 1))
    for _ in range(failed):
        s.failed += 1
        s.errors["timeout"] += 1
        s.fail_info["badPOP"] += 1
        r.failures["ir"].add(elapsed - 0.5)
    r.scheduled = r.started = ok + failed
    r.completed = ok + failed
    r.elapsed = elapsed
    return r


def test_merge_adds_counts_and_histograms() -> None:
    a, b = _worker(100, 2, 0.010, 10.0), _worker(300, 0, 0.100, 12.0)
    merged = RunResults()
    merged.merge(a)
    merged.merge(b)
    ir = merged.ops["ir"]
    assert (ir.ok, ir.failed) == (400, 2)
    assert ir.errors["timeout"] == 2 and ir.fail_info["badPOP"] == 2
    assert ir.latency.count == 400
    # 75% of the samples are 100 ms: the merged median is ~100 ms, not an average of medians
    assert abs(ir.latency.percentile(50) - 0.100) < 0.001
    assert merged.elapsed == 12.0
    assert sum(merged.completions["ir"].values) == 400
    assert merged.scheduled == 402


def test_json_round_trip() -> None:
    r = _worker(50, 5, 0.02, 3.0)
    data = json.loads(json.dumps(r.to_dict()))
    back = RunResults.from_dict(data)
    assert back.ops["ir"].ok == 50 and back.ops["ir"].failed == 5
    assert back.ops["ir"].latency == r.ops["ir"].latency
    assert data["per_second"]["ir"]["completed"] == r.completions["ir"].trimmed(3)
    assert data["operations"]["ir"]["latency_seconds"]["p50"] is not None


def test_second_series_grows_and_merges() -> None:
    a, b = SecondSeries(2), SecondSeries(2)
    a.add(0.5)
    a.add(70.2, 3)
    b.add(1.0)
    a.merge(b)
    assert a.values[0] == 1 and a.values[1] == 1 and a.values[70] == 3
    assert a.trimmed(3) == [1, 1, 0]


def test_per_second_latency_buckets_merge() -> None:
    a, b = _worker(10, 0, 0.003, 1.0), _worker(10, 0, 0.3, 1.0)
    for r in (a, b):
        for _ in range(10):
            r.latency_series["ir"].record(0.5, r.ops["ir"].latency.max)
    a.merge(b)
    row = a.to_dict()["per_second"]["ir"]["latency_le"]["counts"][0]
    bounds = a.to_dict()["per_second"]["ir"]["latency_le"]["bounds"]
    assert row[bounds.index(0.005)] == 10 and row[bounds.index(0.5)] == 10
    back = RunResults.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back.latency_series["ir"].counts[0].tolist() == row


def test_per_second_bucket_edges_are_upper_bounds() -> None:
    """A latency equal to a bound counts in that bound's bucket (Prometheus ``le``), just above it
    in the next one; beyond the last bound it is +Inf."""
    from fleet.load.results import SECOND_BUCKETS, SecondBuckets

    series = SecondBuckets(1)
    for b in SECOND_BUCKETS:
        series.record(0.0, b)
        series.record(0.0, b * 1.0001)
    series.record(0.0, 0.0)
    row = series.counts[0].tolist()
    assert row[0] == 2  # 0.0 and 0.001 itself
    assert row[1:-1] == [2] * (len(SECOND_BUCKETS) - 1)  # each bound, and just above the one before
    assert row[-1] == 1  # just above the last bound


def test_worker_cpu_seconds_add_up_and_round_trip() -> None:
    a, b = _worker(10, 0, 0.01, 1.0), _worker(10, 0, 0.01, 1.0)
    a.cpu_seconds, b.cpu_seconds = 0.25, 0.5
    merged = RunResults()
    merged.merge(a)
    merged.merge(b)
    assert merged.cpu_seconds == 0.75
    data = json.loads(json.dumps(merged.to_dict()))
    assert data["cpu_seconds"] == 0.75
    assert RunResults.from_dict(data).cpu_seconds == 0.75
    del data["cpu_seconds"]  # a report written before the field existed
    assert RunResults.from_dict(data).cpu_seconds == 0.0


def test_per_second_series_are_batched_but_exact() -> None:
    """Completions and per-second latency buckets are counted in batches with numpy: the same
    counts as one at a time (bisect_left on the bounds), whenever they are read."""
    from bisect import bisect_left

    from fleet.load.results import SECOND_BUCKETS, SecondBuckets

    times = [-0.2] + [i * 0.037 for i in range(3000)]  # 111 s: grows past the initial 64 rows
    latencies = [SECOND_BUCKETS[i % len(SECOND_BUCKETS)] * (1.0 if i % 3 else 1.5) for i in range(len(times))]
    series, buckets = SecondSeries(), SecondBuckets()
    expected_series = [0] * 112
    expected_buckets = [[0] * (len(SECOND_BUCKETS) + 1) for _ in range(112)]
    for n, (t, latency) in enumerate(zip(times, latencies), 1):
        series.add(t)
        buckets.record(t, latency)
        second = int(t) if t > 0 else 0
        expected_series[second] += 1
        expected_buckets[second][bisect_left(SECOND_BUCKETS, latency)] += 1
        if n in (1, 1024, 1025, len(times)):
            assert series.trimmed(112) == expected_series
            assert buckets.to_dict(112)["counts"] == expected_buckets
    series.add(5.5, 3)
    assert series.values[5] == expected_series[5] + 3


def test_per_second_extremes_are_exact_and_merge_exactly() -> None:
    """Each second keeps its exact smallest and largest latency next to the coarse buckets; the
    merge of any split of the samples (workers) equals recording them all in one, through JSON."""
    from fleet.load.results import SecondBuckets

    rng = np.random.default_rng(5)
    times = np.sort(rng.uniform(-0.1, 90.0, 5000))  # past 64 rows and past a 1,024 batch
    latencies = rng.lognormal(np.log(0.05), 1.0, 5000)
    whole = SecondBuckets()
    for t, v in zip(times.tolist(), latencies.tolist()):
        whole.record(t, v)
    parts = [SecondBuckets(), SecondBuckets(8), SecondBuckets()]
    owner = rng.integers(0, 3, 5000)
    for t, v, w in zip(times.tolist(), latencies.tolist(), owner.tolist()):
        parts[w].record(t, v)
    merged = SecondBuckets(1)
    for part in parts:
        merged.merge(SecondBuckets.from_dict(json.loads(json.dumps(part.to_dict(90)))))
    seconds = np.maximum(times, 0).astype(int)
    expected_min = [float(latencies[seconds == s].min()) for s in range(90)]
    expected_max = [float(latencies[seconds == s].max()) for s in range(90)]
    for series in (whole, merged):
        data = series.to_dict(91)
        assert data["min"][:90] == expected_min and data["max"][:90] == expected_max
        assert data["min"][90] is None and data["max"][90] is None  # a second with nothing in it
        assert data["counts"] == whole.to_dict(91)["counts"]
    # A report written before the extremes were kept: counts load, the extremes are unknown.
    old = whole.to_dict(90)
    del old["min"], old["max"]
    loaded = SecondBuckets.from_dict(old)
    assert loaded.to_dict(90)["counts"] == old["counts"] and set(loaded.to_dict(90)["max"]) == {None}
