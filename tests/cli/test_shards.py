"""Issue 16: ``fleet run`` as shard I of N (an Indexed Job's pods, run here as local processes
with JOB_COMPLETION_INDEX set) against one real ``fleet ca serve``, ``fleet report merge``, and
``fleet capacity --shards N``."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from cli_helpers import MASTER, ROOT, Ca, env, fleet, one_error_line, running_ca

LEAD = 20  # seconds to the common start: room for three interpreters to start on two busy cores

PROFILE = """
name = "shards"
[run]
duration = 2
flow = ["ir"]
max_in_flight = 100
[arrivals]
shape = "constant"
rate = 30
[devices]
count = 200
key_types = "ec:P-256"
subject = "/CN=shard-{index:04d}"
[slo]
p99_seconds = { ir = 2.0 }
max_error_rate = 0.0
min_rate_ratio = 0.95
"""


def _device_refs(state: Path, expected: int, timeout: float = 15) -> list[str]:
    """Every device reference the CA issued a certificate to (its records are written in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        db = sqlite3.connect(f"file:{state / 'certs.sqlite'}?mode=ro", uri=True)
        try:
            refs = [r[0] for r in db.execute("SELECT device_ref FROM certificates")]
        finally:
            db.close()
        if len(refs) >= expected or time.monotonic() > deadline:
            return refs
        time.sleep(0.3)


def _common(ca_url: str, root: Path) -> list[str]:
    return ["--server", ca_url, "--master-secret", f"pass:{MASTER}", "--trusted", str(root), "--quiet"]


def test_three_shards_play_the_single_run_exactly(tmp_path: Path) -> None:
    profile = tmp_path / "shards.toml"
    profile.write_text(PROFILE)
    # One CA for the three shards, as in a cluster.
    with running_ca(tmp_path / "ca") as ca:
        start = f"{time.time() + LEAD:.3f}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "fleet.cli.main", "run", str(profile), "--shards", "3", "--start-at", start,
                 "--report", str(tmp_path / f"shard-{i}.json"), *_common(ca.url, ca.state / "root-ca.pem")],
                cwd=ROOT, env={**env(), "JOB_COMPLETION_INDEX": str(i)}, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
            )
            for i in range(3)
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
        for p, (out, err) in zip(procs, outputs):
            assert p.returncode == 0, out + err
        refs = _device_refs(ca.state, 60)
    shards = [json.loads((tmp_path / f"shard-{i}.json").read_text()) for i in range(3)]
    assert [s["shard"]["index"] for s in shards] == [0, 1, 2]
    assert {s["shard"]["start_at"] for s in shards} == {float(start)}
    assert [s["results"]["scheduled"] for s in shards] == [20, 20, 20]
    # No device identity is used twice across the shards, and every arrival enrolled one.
    assert len(refs) == 60 and len(set(refs)) == 60
    # The shards ran in step: each started within a second of the common instant.
    for s in shards:
        assert s["results"]["elapsed_seconds"] < 2 + 2.0

    merged_path = tmp_path / "run.json"
    merge = fleet("report", "merge", *(str(tmp_path / f"shard-{i}.json") for i in range(3)), "--out", str(merged_path))
    assert merge.returncode == 0, merge.stdout + merge.stderr
    assert merge.stdout.strip().splitlines()[-1].startswith("PASS: ir p99")
    merged = json.loads(merged_path.read_text())

    # The same profile in one process against a fresh CA: the merged counts are the same.
    single_path = tmp_path / "single.json"
    with running_ca(tmp_path / "ca-single") as ca:
        single = fleet("run", str(profile), "--report", str(single_path), *_common(ca.url, ca.state / "root-ca.pem"))
        assert single.returncode == 0, single.stdout + single.stderr
        single_refs = _device_refs(ca.state, 60)
    one = json.loads(single_path.read_text())
    for key in ("scheduled", "started", "dropped", "completed"):
        assert merged["results"][key] == one["results"][key], key
    assert merged["results"]["scheduled"] == 60
    m_ir, s_ir = merged["results"]["operations"]["ir"], one["results"]["operations"]["ir"]
    assert (m_ir["ok"], m_ir["failed"]) == (s_ir["ok"], s_ir["failed"]) == (60, 0)
    assert m_ir["latency"]["count"] == sum(s["results"]["operations"]["ir"]["latency"]["count"] for s in shards) == 60
    assert sum(merged["results"]["per_second"]["ir"]["completed"]) == 60
    assert merged["results"]["workers"] == 3
    assert len(single_refs) == 60
    assert merged["verdict"]["status"] == one["verdict"]["status"] == "PASS"


def test_merge_refuses_an_incomplete_or_repeated_set(tmp_path: Path) -> None:
    base = {"fleet_report": 1, "profile": "p", "flow": ["ir"], "duration_seconds": 1.0, "closed_model": False,
            "slo": {"p99_seconds": {}, "max_error_rate": None, "min_rate_ratio": None}, "server": "x",
            "results": {"scheduled": 1, "started": 1, "dropped": 0, "completed": 1, "lateness": {},
                        "in_flight_peak": 1, "elapsed_seconds": 1.0, "operations": {}, "per_second": {}}}
    paths = []
    for name, index in (("a", 0), ("b", 0), ("c", 2)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**base, "shard": {"index": index, "count": 3, "start_at": 1.0}}))
        paths.append(str(path))
    dup = fleet("report", "merge", paths[0], paths[1], "--out", str(tmp_path / "m.json"))
    assert dup.returncode == 1 and "are both shard 0" in one_error_line(dup.stderr)
    missing = fleet("report", "merge", paths[0], paths[2], "--out", str(tmp_path / "m.json"))
    assert missing.returncode == 1 and "shard(s) 1 of 3 missing" in one_error_line(missing.stderr)
    assert not (tmp_path / "m.json").exists()
    no_out = fleet("report", "merge", paths[0])
    assert no_out.returncode == 2 and "--out" in no_out.stderr and "Traceback" not in no_out.stderr


def test_shard_options_are_usage_errors(tmp_path: Path) -> None:
    for args, words in (
        (["--shard", "3/3"], "shard index 3 is outside 0..2"),
        (["--shard", "one"], "shard must be I/N"),
        (["--shards", "3"], "needs JOB_COMPLETION_INDEX"),
        (["--shard", "0/2", "--start-at", "2001-01-01T00:00:00Z"], "shards would not be in step"),
        (["--shard", "0/2", "--start-at", "2030-01-01T00:00:00"], "has no time zone"),
    ):
        environ = {k: v for k, v in os.environ.items() if k != "JOB_COMPLETION_INDEX"}
        result = subprocess.run(
            [sys.executable, "-m", "fleet.cli.main", "run", "profiles/smoke.toml", *args], check=False, cwd=ROOT,
            capture_output=True, text=True, timeout=60, env={**environ, "PYTHONPATH": env()["PYTHONPATH"]},
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


KNOB_PROFILE = """
name = "knob-shards"
[run]
duration = 6
flow = ["ir"]
max_in_flight = 1000
transaction_timeout = 10
[arrivals]
shape = "constant"
rate = 100
[devices]
count = 3000
key_types = "ec:P-256"
[slo]
p99_seconds = { ir = 5.0 }  # what is tested here is the issue rate, not the latency
max_error_rate = 0.01
min_rate_ratio = 0.95
"""

ISSUE_RATE = 100  # the CA's capacity, set by its knob: certificate requests per second


def _shards(profile: Path, n: int, ca_url: str, root: Path, out: Path, *extra: str) -> list[Path]:
    """``n`` shard processes of one run, in step; their report files."""
    start = f"{time.time() + LEAD:.3f}"
    reports = [out / f"shard-{i}.json" for i in range(n)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "fleet.cli.main", "run", str(profile), "--shard", f"{i}/{n}", "--start-at", start,
             "--report", str(reports[i]), *_common(ca_url, root), *extra],
            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )
        for i in range(n)
    ]
    for p in procs:
        out_text, err = p.communicate(timeout=120)
        assert p.returncode in (0, 1), out_text + err  # 1: that shard's own verdict failed
    return reports


def _merged_round(profile: Path, ca: Ca, out: Path, rate: float) -> tuple[int, str, dict[str, Any]]:
    """Three ``fleet run --shard`` processes at ``rate`` in all, merged by ``fleet report merge``."""
    out.mkdir()
    reports = _shards(profile, 3, ca.url, ca.state / "root-ca.pem", out, "--rate", f"{rate:g}")
    merge = fleet("report", "merge", *map(str, reports), "--out", str(out / "run.json"))
    merged = json.loads((out / "run.json").read_text())
    assert merged["results"]["scheduled"] == round(rate * 6)  # the whole run's arrivals, once
    return merge.returncode, merge.stdout.strip().splitlines()[-1], merged


def test_capacity_in_three_shards_finds_the_issue_rate_and_three_shard_runs_confirm_it(tmp_path: Path) -> None:
    """Against a CA whose capacity its knob sets (``--issue-rate 100``: certificate requests
    beyond 100/s get systemUnavail), ``fleet capacity --shards 3`` (each step played by three
    follower processes, their reports merged exactly) finds 100/s within 5 %; then three
    ``fleet run --shard`` processes at the rate found pass and at 1.2 times it fail, each round
    against a CA of its own so the two run at once."""
    profile = tmp_path / "knobs.toml"
    profile.write_text(KNOB_PROFILE)
    report = tmp_path / "capacity.json"
    with ExitStack() as stack:
        ca = stack.enter_context(running_ca(tmp_path / "ca", "--issue-rate", str(ISSUE_RATE)))
        other = stack.enter_context(running_ca(tmp_path / "ca-2", "--issue-rate", str(ISSUE_RATE)))
        server = _common(ca.url, ca.state / "root-ca.pem")[:-1]  # fleet capacity has no --quiet
        search = fleet("capacity", str(profile), "--shards", "3", *server,
                       "--min-rate", "80", "--max-rate", "320", "--step-duration", "3", "--warmup", "1",
                       "--cool-down", "0.5", "--tolerance", "0.05", "--report", str(report), timeout=300)
        assert search.returncode == 0, search.stdout + search.stderr
        doc = json.loads(report.read_text())
        found = doc["answer"]["capacity"]
        assert abs(found - ISSUE_RATE) <= 0.05 * ISSUE_RATE, search.stdout
        assert doc["search"]["shards"] == 3
        assert "systemUnavail" in doc["answer"]["first_break"]["fail_info"]
        for step in doc["steps"]:  # every step is the exact merge of its three shards' reports
            merged = step["report"]
            assert len(merged["merged_from"]) == 3 and merged["results"]["workers"] == 3
            assert merged["results"]["scheduled"] == round(step["assessment"]["rate"] * 3)
            assert merged["results"]["steady"]["from_seconds"] == 1
        with ThreadPoolExecutor(2) as pool:
            at_found = pool.submit(_merged_round, profile, ca, tmp_path / "at-found", found)
            over = pool.submit(_merged_round, profile, other, tmp_path / "at-1.2x", 1.2 * found)
            (code, line, _), (code_over, line_over, merged_over) = at_found.result(), over.result()
    assert code == 0 and line.startswith("PASS"), line
    assert code_over == 1 and line_over.startswith("FAIL") and "errors" in line_over, line_over
    assert merged_over["results"]["operations"]["ir"]["fail_info"].get("systemUnavail", 0) > 0
