"""The dashboards, proven against a real Prometheus (Debian's ``prometheus`` package).

Starts Prometheus on loopback with a generated configuration (one job scraping both workers and
the embedded CA every 0.5 s), runs a short two-worker ``fleet run`` of the smoke profile (with
the embedded CA injecting some errors and 'waiting' answers so every panel has something to
show), then evaluates every query of every panel of both dashboards through the HTTP API and
checks each returns data, and that Prometheus' throughput matches fleet's own report.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRAPE = 0.5
RATE_INTERVAL = "2s"  # Grafana's $__rate_interval for a 0.5 s scrape: 4 scrape intervals

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus package")


def _free_run(n: int) -> int:
    """A base port with n consecutive free loopback ports."""
    for _ in range(200):
        base = random.randint(20_000, 40_000)
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def _toml(data: dict[str, Any]) -> str:
    """Just enough TOML for a profile: tables of scalars, lists and inline tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(type(v))

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for name, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{name}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def _profile(tmp: Path) -> Path:
    """profiles/smoke.toml, with the embedded CA answering some requests with errors or
    'waiting' (so error, failInfo and poll panels have data) and an SLO that tolerates them, and
    some certificates revoked by the run (so the announcement panels have data)."""
    data = tomllib.loads((ROOT / "profiles" / "smoke.toml").read_text())
    data["run"]["duration"] = 6
    data["ca"] = {"error_fraction": 0.05, "waiting_fraction": 0.1, "check_after": 0.2, "seed": 7}
    data["slo"] = {"p99_seconds": {"ir": 5.0}, "max_error_rate": 0.5}
    # the run revokes some of its certificates: the CA pushes a rann, the device re-enrolls
    data["announcements"] = {"revoke_fraction": 0.2, "revoke_after": 0.2}
    path = tmp / "smoke-e2e.toml"
    path.write_text(_toml(data))
    return path


class Prometheus:
    def __init__(self, tmp: Path, targets: list[str]) -> None:
        self.port = _free_run(1)
        config = {
            "global": {"scrape_interval": f"{int(SCRAPE * 1000)}ms", "scrape_timeout": "400ms"},
            "scrape_configs": [{"job_name": "fleet", "static_configs": [{"targets": targets}]}],
        }
        (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [shutil.which("prometheus") or "prometheus", f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                if self.http.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("prometheus did not become ready in 30 s")

    def wait_scraping(self, n: int, timeout: float = 30.0) -> None:
        """Until Prometheus has tried every target once: its discovery hands targets to the
        scrape loops only every 5 s, and a run that starts earlier would miss its first seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = self.http.get("/api/v1/targets").json()["data"]["activeTargets"]
            if len(active) == n and all(not t["lastScrape"].startswith("0001") for t in active):
                return
            time.sleep(0.1)
        raise AssertionError("prometheus did not start scraping in time")

    def range(self, expr: str, start: float, end: float, step: float = SCRAPE) -> list[dict[str, Any]]:
        r = self.http.get("/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": step})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def _queries(dashboard: Path, window: float) -> list[tuple[str, str]]:
    """(panel/ref, PromQL with the dashboard variables as Grafana would fill them: All)."""
    d = json.loads(dashboard.read_text())
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            expr = (t["expr"].replace("$__rate_interval", RATE_INTERVAL).replace("$__range", f"{int(window)}s")
                    .replace("$worker", ".*").replace("$job", ".*"))
            assert "$" not in expr, expr
            out.append((f"{dashboard.name}: {p['title']} [{t['refId']}]", expr))
    return out


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(v) for series in result for _, v in series["values"] if math.isfinite(float(v))]


def test_every_dashboard_query_returns_data_and_throughput_matches_report(tmp_path: Path) -> None:
    base = _free_run(3)  # worker 0, worker 1, embedded CA (P + workers)
    prom = Prometheus(tmp_path, [f"127.0.0.1:{base + i}" for i in range(3)])
    try:
        prom.wait_scraping(3)
        report = tmp_path / "run.json"
        t_start = time.time()
        env = dict(os.environ, FLEET_METRICS_HOST="127.0.0.1")
        proc = subprocess.run(
            [sys.executable, "-m", "fleet.cli.main", "run", str(_profile(tmp_path)), "--workers", "2",
             "--metrics-port", str(base), "--report", str(report), "--quiet", "--keys", str(tmp_path / "keys")],
            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False,
        )
        t_end = time.time()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rep = json.loads(report.read_text())
        results = rep["results"]
        ir = results["operations"]["ir"]
        assert ir["ok"] > 100 and ir["failed"] > 0 and ir["polls"] > 0  # the knobs did their job

        window = t_end - t_start + 2
        start, end = t_start - 1, t_end + 1
        failures = []
        for name, expr in [*_queries(ROOT / "dashboards" / "fleet-run.json", window),
                           *_queries(ROOT / "dashboards" / "fleet-ca.json", window)]:
            if not _values(prom.range(expr, start, end)):
                failures.append(f"{name}: no data for {expr}")
        assert not failures, "\n".join(failures)

        def last(expr: str) -> float:
            values = _values(prom.range(expr, start, end))
            assert values, expr
            return values[-1]

        def final(selector: str) -> float:
            """Sum of each worker's last sample (the workers' series end at different times)."""
            return last(f"sum(last_over_time({selector}[{int(window)}s]))")

        # Counts: the workers waited for a scrape after their end, so Prometheus holds the finals.
        assert final('fleet_transactions_completed_total{operation="ir", result="ok"}') == ir["ok"]
        assert final('fleet_transactions_completed_total{operation="ir", result="failed"}') == ir["failed"]
        assert final('fleet_polls_total{operation="ir"}') == ir["polls"]
        assert final("fleet_arrivals_started_total") == results["started"]
        assert final('fleet_transaction_latency_seconds_count{operation="ir", result="ok"}') == ir["ok"]

        # Throughput: the dashboard's run-average panel vs the report's achieved rate (within 5 %).
        panel = next(e for n, e in _queries(ROOT / "dashboards" / "fleet-run.json", window) if "Run-average" in n)
        by_operation = {series["metric"].get("operation"): series for series in prom.range(panel, start, end)}
        prom_rate = _values([by_operation["ir"]])[-1]
        assert prom_rate == pytest.approx(rep["achieved_rate"], rel=0.05)

        # And the live rate() panel in the steady middle of the run vs the report's per-second series.
        run_start = last("min(fleet_run_start_time_seconds)")
        elapsed = results["elapsed_seconds"]
        mid = prom.range(f'sum(rate(fleet_transactions_completed_total{{operation="ir"}}[{RATE_INTERVAL}]))',
                         run_start + 2.5, run_start + elapsed - 1.5)
        per_second = [a + b for a, b in zip(results["per_second"]["ir"]["completed"], results["per_second"]["ir"]["failed"])]
        steady = per_second[1:-1]
        live = _values(mid)
        assert live and steady
        assert sorted(live)[len(live) // 2] == pytest.approx(sum(steady) / len(steady), rel=0.2)
    finally:
        prom.stop()


def test_every_provisioning_dashboard_query_returns_data(tmp_path: Path) -> None:
    """fleet provision of 60 MAC devices against fleet ca serve (some errors and 'waiting'
    answers), scraped by a real Prometheus: every panel of fleet-provision.json has data, and the
    confirmed count it shows is the run's."""
    ca_port, metrics_port = _free_run(2), _free_run(1)
    prom = Prometheus(tmp_path, [f"127.0.0.1:{metrics_port}"])
    ca = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli.main", "ca", "serve", "--dir", str(tmp_path / "ca"), "--port", str(ca_port),
         "--secret", "pass:demo", "--error-fraction", "0.1", "--waiting-fraction", "0.2", "--check-after", "0.2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
    )
    try:
        prom.wait_scraping(1)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", ca_port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and ca.poll() is None, "fleet ca serve did not start"
                time.sleep(0.1)
        manifest = tmp_path / "devices.csv"
        manifest.write_text("id,subject,ref,secret\n" + "".join(
            f"gnb-{i:03d},/CN=gnb-{i:03d},gnb-{i:03d},pass:demo\n" for i in range(60)))
        t_start = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "fleet.cli.main", "provision", str(manifest), "--server",
             f"http://127.0.0.1:{ca_port}/.well-known/cmp", "--out", str(tmp_path / "issued"), "--rate", "15",
             "--concurrency", "4", "--backoff", "0.1", "--metrics-port", str(metrics_port)],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
            env=dict(os.environ, FLEET_METRICS_HOST="127.0.0.1"),
        )
        t_end = time.time()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        summary = json.loads((tmp_path / "issued" / "summary.json").read_text())
        assert summary["provisioned"] == 60 and summary["run"]["retries"] > 0  # the errors were retried
        time.sleep(2 * SCRAPE)
        window = t_end - t_start + 2
        start, end = t_start - 1, t_end + 2
        failures = [f"{name}: no data for {expr}"
                    for name, expr in _queries(ROOT / "dashboards" / "fleet-provision.json", window)
                    if not _values(prom.range(expr, start, end))]
        assert not failures, "\n".join(failures)
        confirmed = next(e for n, e in _queries(ROOT / "dashboards" / "fleet-provision.json", window)
                         if "Enrollments confirmed" in n)
        assert _values(prom.range(confirmed, start, end))[-1] == 60
    finally:
        ca.terminate()
        ca.wait(15)
        prom.stop()
