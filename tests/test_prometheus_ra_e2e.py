"""``[ra] start = true`` end to end, scraped by a real Prometheus (Debian's ``prometheus``):
``fleet run profiles/behind-ra.toml`` starts the embedded CA and ``fleet ra serve`` between it
and the devices; Prometheus scrapes the worker, the CA and the RA (P, P+1, P+2), and the RA's
``fleet_ra_*`` series show what the run sent through it, batched into nested envelopes, the
run's revocations ([announcements]) included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_prometheus_e2e import ROOT, Prometheus, _free_run, _values

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus package")


def test_fleet_run_behind_an_embedded_ra_is_scraped(tmp_path: Path) -> None:
    base = _free_run(3)  # worker 0, the embedded CA (P + workers), the embedded RA after it
    prom = Prometheus(tmp_path, [f"127.0.0.1:{base + i}" for i in range(3)])
    try:
        prom.wait_scraping(3)
        report = tmp_path / "run.json"
        t_start = time.time()
        # behind-ra, and the run revokes some certificates through the RA (its revoking entity trusted there)
        profile = tmp_path / "behind-ra.toml"
        profile.write_text((ROOT / "profiles" / "behind-ra.toml").read_text()
                           + "\n[announcements]\nrevoke_fraction = 0.2\nrevoke_after = 0.2\n")
        proc = subprocess.run(
            [sys.executable, "-m", "fleet.cli.main", "run", str(profile), "--duration", "3",
             "--metrics-port", str(base), "--report", str(report), "--quiet"],
            capture_output=True, text=True, timeout=90, cwd=tmp_path, check=False,
            env=dict(os.environ, FLEET_METRICS_HOST="127.0.0.1"),
        )
        t_end = time.time()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "embedded RA at" in proc.stderr
        ops = json.loads(report.read_text())["results"]["operations"]
        assert ops["ir"]["ok"] >= 60 and ops["kur"]["ok"] == ops["ir"]["ok"]
        window = int(t_end - t_start + 2)

        def final(expr: str) -> float:
            values = _values(prom.range(f"sum(last_over_time({expr}[{window}s]))", t_start - 1, t_end + 1))
            assert values, expr
            return values[-1]

        # Every ir went through the RA, and upstream in envelopes.
        forwarded = final('fleet_ra_requests_total{body="ir", outcome="forwarded"}')
        irs = ops["ir"]["ok"] + ops["reenroll"]["ok"]  # a re-enrollment is an ir too
        assert 0.9 * irs <= forwarded <= irs
        assert final('fleet_ra_upstream_requests_total{kind="nested"}') > 0
        assert final("fleet_ra_batch_size_count") > 0
        revoked = json.loads(report.read_text())["results"]["announcements"]["received"]["rann"]
        assert revoked == ops["revoke"]["ok"] > 0 and ops["revoke"]["failed"] == 0
        assert final('fleet_ra_requests_total{body="rr", outcome="forwarded"}') > 0
        assert final('fleet_transactions_completed_total{operation="kur", result="ok"}') == ops["kur"]["ok"]
    finally:
        prom.stop()
