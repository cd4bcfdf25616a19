"""Shard arithmetic (fleet.load.shards): shard I of N with W workers each is workers I*W..I*W+W-1
of one exact split, so arrivals and device identities are dealt exactly once across shards."""

from __future__ import annotations

import numpy as np
import pytest

from fleet.load.results import RunResults
from fleet.load.segments import split
from fleet.load.shards import (
    MergeError,
    Shard,
    ShardError,
    merge_reports,
    parse_shard,
    parse_start_at,
    shard_from_env,
)


@pytest.mark.parametrize("shards", [1, 2, 3, 5])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_shards_deal_every_arrival_and_identity_once(shards: int, workers: int) -> None:
    offsets = np.sort(np.random.default_rng(7).uniform(0, 10, 997))
    devices = 1000
    seen_arrivals: list[int] = []
    seen_devices: list[int] = []
    segments = split(shards * workers)
    for s in range(shards):
        for segment_index in Shard(s, shards).segment_indices(workers):
            segment = segments[segment_index]
            seen_arrivals.extend(segment.indices(len(offsets)).tolist())
            seen_devices.extend(segment.range(devices))
    assert sorted(seen_arrivals) == list(range(len(offsets)))
    assert sorted(seen_devices) == list(range(devices))


def test_parse_shard_and_env() -> None:
    assert parse_shard("2/5") == Shard(2, 5)
    for bad in ("5/5", "-1/3", "a/b", "3", "1/0"):
        with pytest.raises(ShardError):
            parse_shard(bad)
    assert shard_from_env(None, {}) is None
    assert shard_from_env(4, {"JOB_COMPLETION_INDEX": "3"}) == Shard(3, 4)
    assert shard_from_env(None, {"JOB_COMPLETION_INDEX": "1", "FLEET_SHARDS": "2"}) == Shard(1, 2)
    with pytest.raises(ShardError, match="JOB_COMPLETION_INDEX"):
        shard_from_env(4, {})
    with pytest.raises(ShardError, match="outside"):
        shard_from_env(2, {"JOB_COMPLETION_INDEX": "2"})


def test_parse_start_at() -> None:
    now = 1_800_000_000.0
    assert parse_start_at("2027-01-15T08:00:00Z", now) == 1_800_000_000.0
    assert parse_start_at("2027-01-15T09:00:00+01:00", now) == now
    assert parse_start_at("1800000030", now) == now + 30
    assert parse_start_at(str(now - 0.5), now) == now - 0.5  # within the tolerance
    for bad, words in (("yesterday", "ISO 8601"), ("2027-01-15T08:00:00", "no time zone"),
                       ("1799999990", "passed 10 s ago"), ("nan", "finite")):
        with pytest.raises(ShardError, match=words):
            parse_start_at(bad, now)



def test_merge_refuses_a_shard_without_index_or_count() -> None:
    """A hand-edited or foreign report whose shard lacks its count (or index) is a MergeError, not
    int(None)'s TypeError out of ``fleet report merge``."""
    base = {"fleet_report": 1, "profile": "p", "flow": ["ir"], "duration_seconds": 1.0,
            "closed_model": False, "server": "x", "results": RunResults().to_dict(),
            "slo": {"p99_seconds": {}, "max_error_rate": None, "min_rate_ratio": None}}
    for shard in ({"index": 0, "start_at": 1.0}, {"index": 0, "count": "two", "start_at": 1.0},
                  {"count": 1, "start_at": 1.0}):
        with pytest.raises(MergeError, match="whole-number index or count"):
            merge_reports([("a.json", {**base, "shard": shard})])
    whole = {**base, "shard": {"index": 0, "count": 1, "start_at": 1.0}}
    doc, _ = merge_reports([("a.json", whole)])
    assert doc["merged_from"] == ["a.json"]
