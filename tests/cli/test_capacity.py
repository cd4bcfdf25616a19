"""Issue 16's proof: ``fleet capacity`` against the embedded CA whose knobs make it saturate at a
known rate (every response held 1 s, at most 100 live transactions) finds that rate within 5 %,
in short steps so the test stays within about a minute.

The rate the knobs set is max_transactions / how long a transaction lives. It lives from its ir
until its certConf: the 1 s the ip is held plus the client's turnaround, which on a busy 2-core
machine reaches tens of ms. So the known rate is 100 / (ir latency - 1 s) as the lowest step
measured it (an ir's latency is the held ip, the turnaround and the held pkiConf), near 100/s.
The warm-up (1.5 s) outlasts a transaction, so every measured arrival meets the cap in force."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_helpers import fleet, fleet_inprocess, one_error_line

from fleet.load.capacity import step_profile
from fleet.load.capacity_shards import FollowError, ShardDir, ShardedSteps, follow, profile_digest
from fleet.load.orchestrator import RunOptions
from fleet.load.profiles import load_profile
from fleet.load.results import RunResults
from fleet.load.shards import Shard

PROFILE = """
name = "knob-capacity"
[run]
duration = 10
flow = ["ir"]
max_in_flight = 2000
transaction_timeout = 10
[arrivals]
shape = "constant"
rate = 100
[devices]
count = 5000
key_types = "ec:P-256"
[slo]
p99_seconds = { ir = 8.0 }
max_error_rate = 0.01
min_rate_ratio = 0.95
[ca]
latency = "fixed:1"
max_transactions = 100
"""

NOMINAL = 100 / 1  # live transactions / seconds a response is held


def test_capacity_finds_the_knobs_rate_within_5_percent(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(PROFILE)
    report = tmp_path / "capacity.json"
    began = time.monotonic()
    result = fleet("capacity", str(profile), "--min-rate", "60", "--max-rate", "400", "--step-duration", "4.5",
                   "--warmup", "1.5", "--cool-down", "0.5", "--require", "120", "--report", str(report), timeout=300)
    took = time.monotonic() - began
    assert result.returncode == 1, result.stdout + result.stderr  # 120/s is more than this CA sustains
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "required 120/s: NOT MET"
    assert lines[-2].startswith("capacity ") and "first to break at" in lines[-2]
    doc = json.loads(report.read_text())
    found = doc["answer"]
    steps = doc["steps"]
    lowest = min(steps, key=lambda s: s["assessment"]["rate"])["report"]["results"]["steady"]
    lives = lowest["operations"]["ir"]["latency_seconds"]["p50"] - 1.0  # held ip + turnaround
    known = 100 / lives
    assert 0.9 * NOMINAL <= known <= NOMINAL * 1.01, lives
    assert abs(found["capacity"] - known) <= 0.05 * known, (found, known)
    low, high = found["interval"]
    assert low <= known * 1.02 and high >= 0.95 * known and (high - low) / low <= 0.03
    assert "systemUnavail" in found["first_break"]["fail_info"]  # why it broke: the transaction cap
    assert found["knee"] is not None and found["knee"] <= found["capacity"]
    assert doc["require_met"] is False
    assert 4 <= len(steps) <= 12
    coarse = [s["assessment"]["rate"] for s in steps[:2]]
    assert coarse == [60, 120]
    merged = RunResults()
    for step in steps:
        results = step["report"]["results"]
        assert results["steady"]["from_seconds"] == 1.5
        assert results["steady"]["scheduled"] < results["scheduled"]  # the warm-up is left out
        assert step["assessment"]["steady"] or not step["assessment"]["passed"]
        merged.merge(RunResults.from_dict(results))  # every step's histograms stay mergeable
    assert merged.ops["ir"].latency.count == sum(s["report"]["results"]["operations"]["ir"]["ok"] for s in steps)
    assert took < 180, took


def test_require_met_exits_0_and_bad_bounds_are_usage_errors(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(PROFILE)
    ok = fleet("capacity", str(profile), "--min-rate", "30", "--max-rate", "30", "--step-duration", "3",
               "--warmup", "1", "--require", "30", timeout=120)  # one step, far below the cap
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == "required 30/s: MET"
    assert "capacity at least 30/s" in ok.stdout
    bad = fleet("capacity", str(profile), "--min-rate", "50", "--max-rate", "10")
    assert bad.returncode == 2 and "must satisfy 0 < min <= max" in bad.stderr and "Traceback" not in bad.stderr
    closed = tmp_path / "closed.toml"
    closed.write_text(PROFILE.replace('shape = "constant"\nrate = 100', 'shape = "closed"\ndevices = 5\nthink_time = 0.1'))
    refused = fleet("capacity", str(closed))
    assert refused.returncode == 1 and "closed-model profile" in one_error_line(refused.stderr)


@pytest.mark.parametrize(("args", "option", "words"), [
    (["--shard-dir", "d"], "--shard-dir", "--shard-dir needs --shards N (or --follow)"),
    (["--shard", "0/2"], "--shard", "--shard is for followers: add --follow"),
    (["--follow", "--shard", "0/2", "--server", "http://127.0.0.1:1/"], "--shard-dir", "--follow needs --shard-dir DIR"),
    (["--follow", "--shard-dir", "d", "--shard", "0/2"], "--server", "--follow needs --server URL"),
    (["--follow", "--shard-dir", "d", "--server", "http://127.0.0.1:1/"], "--shard", "--follow needs --shard I/N"),
    (["--follow", "--shard-dir", "d", "--server", "http://127.0.0.1:1/", "--shard", "2/2"], "--shard",
     "shard index 2 is outside 0..1"),
    (["--follow", "--shard-dir", "d", "--server", "http://127.0.0.1:1/", "--shard", "0/2"], "--master-secret",
     "MAC devices need --master-secret"),
])
def test_shard_options_are_usage_errors(args: list[str], option: str, words: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    monkeypatch.delenv("FLEET_SHARDS", raising=False)
    profile = tmp_path / "p.toml"
    profile.write_text(PROFILE)
    code, out, err = fleet_inprocess(monkeypatch, capsys, "capacity", str(profile), *args)
    assert code == 2 and out == ""
    line = one_error_line(err, "fleet: usage error: ")
    assert f"'{option}'" in line and words in line, line


def test_a_follower_refuses_a_search_of_another_profile_or_size(tmp_path: Path) -> None:
    """Followers check the leader's search before joining it: the same profile file (digest),
    the same shard count; and they never join a search that is already done."""
    profile = tmp_path / "p.toml"
    profile.write_text(PROFILE)
    loaded = load_profile(profile)
    shared = ShardDir(tmp_path / "search")
    shared.path.mkdir()
    options = RunOptions(server="http://127.0.0.1:1/", master_secret=b"demo")
    (shared.search).write_text(json.dumps({"id": "a", "shards": 3, "profile": profile_digest(profile)}))
    with pytest.raises(FollowError, match="has 3 shards, this is shard 0/2"):
        follow(profile, loaded, shared.path, Shard(0, 2), options, io.StringIO())
    (shared.search).write_text(json.dumps({"id": "b", "shards": 2, "profile": "0" * 64}))
    with pytest.raises(FollowError, match="plays another profile"):
        follow(profile, loaded, shared.path, Shard(0, 2), options, io.StringIO())
    (shared.search).write_text(json.dumps({"id": "c", "shards": 2, "profile": profile_digest(profile)}))
    shared.plan(1).write_text(json.dumps({"id": "c", "step": 1, "rate": 10, "duration": 3, "warmup": 1,
                                          "start_at": time.time() - 5}))
    shared.done.write_text(json.dumps({"id": "d"}))  # not this search's end: it joins, sees a late plan, reports it
    log = io.StringIO()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(follow, profile, loaded, shared.path, Shard(1, 2), options, log)
        deadline = time.monotonic() + 20
        while not shared.error(1, 1).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        shared.done.write_text(json.dumps({"id": "c"}))
        running.result(timeout=20)
    assert json.loads(shared.ready(1).read_text())["id"] == "c"
    assert "after the step's start: raise --lead" in shared.error(1, 1).read_text()


def test_the_leader_stops_with_a_followers_error_and_ends_the_search(tmp_path: Path) -> None:
    """External followers (a shared directory): the leader waits for every shard to join the
    search it wrote, and a step a follower could not play stops the search with that follower's
    line; ``done.json`` then ends the search for the others."""
    profile = tmp_path / "p.toml"
    profile.write_text(PROFILE)
    shared = ShardDir(tmp_path / "search")

    def follower() -> None:  # the file side of a follower, as ``follow`` writes it
        deadline = time.monotonic() + 20
        while not shared.search.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        search = json.loads(shared.search.read_text())
        shared.ready(0).write_text(json.dumps({"id": search["id"]}))
        while not shared.plan(1).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        shared.error(1, 0).write_text("CA unreachable, nothing sent\n")

    shared.path.mkdir()
    shared.plan(7).write_text("{}")  # an earlier search's file: cleared
    with ThreadPoolExecutor(1) as pool:
        fake = pool.submit(follower)
        leader = ShardedSteps(profile, 1, "http://127.0.0.1:1/", directory=shared.path, log=io.StringIO())
        with pytest.raises(FollowError, match="shard 0 of step 1: CA unreachable, nothing sent"), leader as steps:
            assert not shared.plan(7).exists()
            steps.play(1, 10.0, step_profile(load_profile(profile), 10.0, 3.0), 1.0)
        fake.result(timeout=20)
    assert json.loads(shared.done.read_text())["id"] == json.loads(shared.search.read_text())["id"]
