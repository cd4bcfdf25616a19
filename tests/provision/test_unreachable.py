"""``fleet provision`` against a CA nobody answers for stops at once in one line, nothing written
(as ``fleet run`` does), unless ``--keep-going``: then every device fails on its own."""

from __future__ import annotations

import json
import time
from pathlib import Path

from provision_helpers import mac_manifest, run_provision

DEAD = "http://127.0.0.1:1/.well-known/cmp"  # nothing listens on loopback port 1


def test_an_unreachable_ca_stops_provisioning_at_once_in_one_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    mac_manifest(manifest, 3)
    started = time.monotonic()
    result = run_provision(str(manifest), "--server", DEAD, "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"fleet: error: CA unreachable, nothing sent: {DEAD}: ")
    assert "Connection refused" in lines[0] and lines[0].endswith("(--keep-going starts anyway)")
    assert not (tmp_path / "out").exists()  # no folder, no journal: nothing happened
    assert time.monotonic() - started < 20  # not 3 devices x 8 attempts of backoff


def test_keep_going_tries_every_device_and_records_why(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    ids = mac_manifest(manifest, 2)
    out = tmp_path / "out"
    result = run_provision(str(manifest), "--server", DEAD, "--out", str(out), "--keep-going",
                           "--max-attempts", "1", "--no-progress")
    assert result.returncode == 1, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    errors = {d["id"]: d["error"] for d in summary["results"]}
    assert set(errors) == set(ids) and all("Connection refused" in errors[i] for i in ids)
    assert summary["failed"] == 2 and summary["run"]["seconds"] < 10
