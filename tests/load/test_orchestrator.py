"""fleet run end to end: the embedded CA in its own process, real devices, real verdicts."""

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _fleet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def _profile(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(body)
    return path


def test_smoke_profile_passes_and_reports(tmp_path: Path) -> None:
    report = tmp_path / "run.json"
    proc = _fleet("run", "profiles/smoke.toml", "--duration", "2", "--report", str(report), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("PASS")
    data = json.loads(report.read_text())
    ir = data["results"]["operations"]["ir"]
    assert ir["ok"] == data["results"]["scheduled"] == 80
    assert ir["failed"] == 0
    assert data["verdict"]["passed"] is True
    assert sum(data["results"]["per_second"]["ir"]["completed"]) == 80
    assert data["results"]["transport"] == {"requests": 160, "pool_waits": 0, "pool_wait_us": 0,
                                           "max_connections": 200}  # one per transaction in flight: smoke's max_in_flight
    assert "http: " not in proc.stdout  # no request waited for a connection: nothing to say
    assert 0 < ir["latency_seconds"]["p50"] < 1.0
    assert "secret" not in report.read_text().lower()


def test_full_lifecycle_two_workers(tmp_path: Path) -> None:
    profile = _profile(tmp_path, """
[run]
duration = 2
flow = ["genm", "ir", "kur", "rr"]
workers = 2
[arrivals]
shape = "constant"
rate = 15
[devices]
count = 40
key_types = { "ec:P-256" = 0.5, "ed25519" = 0.5 }
sans = ["URI:urn:uuid:{uuid}", "DNS:nf-{index}.example.org"]
subject = "/O=Test/CN=nf-{index}"
[slo]
max_error_rate = 0.0
""")
    report = tmp_path / "run.json"
    proc = _fleet("run", str(profile), "--report", str(report), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(report.read_text())["results"]
    assert results["workers"] == 2
    assert results["scheduled"] == 30
    for op in ("genm", "ir", "kur", "rr"):
        assert results["operations"][op]["ok"] == 30, (op, results["operations"][op])


def test_slo_failure_exits_1_with_one_line_verdict(tmp_path: Path) -> None:
    profile = _profile(tmp_path, """
[run]
duration = 1
[arrivals]
shape = "constant"
rate = 5
[slo]
p99_seconds = { ir = 0.000001 }
""")
    proc = _fleet("run", str(profile), "--quiet")
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines()[-1].startswith("FAIL: ir p99")


def test_a_client_short_of_connections_says_so_under_the_table(tmp_path: Path) -> None:
    """Two connections, each answer held 0.1 s: an ir + certConf pair holds one for 0.2 s, so
    the pool carries 10 pairs a second and the 20 offered queue for it. The summary says the
    client, not the CA, was the limit, and how to lift it."""
    profile = _profile(tmp_path, """
[run]
duration = 2
max_connections = 2
[arrivals]
shape = "constant"
rate = 20
[ca]
latency = "fixed:0.1"
""")
    report = tmp_path / "run.json"
    proc = _fleet("run", str(profile), "--report", str(report), "--quiet")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("http: "))
    assert re.fullmatch(r"http: \d+ of 80 requests \(\d+\.\d%\) queued \d+ ms on average for one of the client's 2 "
                        r"HTTP connections; raise \[run\] max_connections \(or workers\)", line), line
    transport = json.loads(report.read_text())["results"]["transport"]
    assert transport["requests"] == 80 and transport["pool_waits"] > 20 and transport["pool_wait_us"] > 0


def test_errors_are_counted_not_fatal(tmp_path: Path) -> None:
    """A CA that fails a share of requests: the run completes and reports them by failInfo."""
    profile = _profile(tmp_path, """
[run]
duration = 2
[arrivals]
shape = "constant"
rate = 20
[ca]
error_fraction = 0.5
seed = 7
""")
    report = tmp_path / "run.json"
    proc = _fleet("run", str(profile), "--report", str(report), "--quiet")
    assert proc.returncode == 0, proc.stderr
    ir = json.loads(report.read_text())["results"]["operations"]["ir"]
    assert ir["ok"] + ir["failed"] == 40
    assert 5 <= ir["failed"] <= 35
    assert set(ir["errors"]) <= {"error_message", "rejected"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("[run]\nduraton = 5\n", "[run]: unknown key 'duraton'"),
        ("[arrivals]\nshape = 'constant'\nrate = -3\n", "[arrivals]"),
    ],
)
def test_bad_profile_is_one_line(tmp_path: Path, body: str, fragment: str) -> None:
    proc = _fleet("run", str(_profile(tmp_path, body)), "--quiet")
    assert proc.returncode == 1
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_abort_on_fail_stops_early(tmp_path: Path, workers: int) -> None:
    """A CA that refuses everything: with --abort-on-fail the 30 s run ends within seconds."""
    profile = _profile(tmp_path, f"""
[run]
duration = 30
workers = {workers}
[arrivals]
shape = "constant"
rate = 40
[ca]
error_fraction = 1.0
[slo]
max_error_rate = 0.01
""")
    report = tmp_path / "run.json"
    proc = _fleet("run", str(profile), "--abort-on-fail", "--report", str(report), "--quiet", timeout=60)
    assert proc.returncode == 1, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    m = re.match(r"ABORTED: errors 100\.00% > 1\.00% at t=(\d+\.\d)s \(--abort-on-fail\); until then: ", last)
    assert m, last
    assert 1.0 <= float(m[1]) < 10
    report_data = json.loads(report.read_text())
    results = report_data["results"]
    assert results["elapsed_seconds"] < 10
    assert results["operations"]["ir"]["failed"] >= 50
    assert report_data["verdict"]["status"] == "ABORTED" and report_data["verdict"]["line"] == last
    # Nothing succeeded: the table shows "-" where there is no latency, never "nan".
    assert "nan" not in proc.stdout.lower()
    row = next(line for line in proc.stdout.splitlines() if line.startswith("ir "))
    assert row.split()[1] == "0" and row.split()[4:8] == ["-", "-", "-", "-"]
    assert "interrupted" not in proc.stderr


@pytest.mark.parametrize(("workers", "to_group", "signum"), [
    (1, False, signal.SIGINT), (2, True, signal.SIGINT), (1, False, signal.SIGTERM),
])
def test_ctrl_c_reports_what_was_measured(tmp_path: Path, workers: int, to_group: bool, signum: int) -> None:
    """SIGINT (to the process, or to the whole group as a terminal does) or SIGTERM stops the run
    cleanly: summary, an INTERRUPTED verdict over what was measured until then (not a FAIL for
    the share of the whole schedule), report marked interrupted, exit 128 + signal (130 for
    Ctrl-C), embedded CA stopped."""
    import os
    import time

    profile = _profile(tmp_path, f"""
[run]
duration = 60
workers = {workers}
[arrivals]
shape = "constant"
rate = 20
[slo]
max_error_rate = 0.0
min_rate_ratio = 0.95
""")
    report = tmp_path / "run.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli.main", "run", str(profile), "--report", str(report)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    # The signal goes 4 s after the first progress line (every worker running), not at a fixed time
    # from launch: start-up (workers, embedded CA) takes seconds on a loaded machine.
    err_lines: list[str] = []
    running = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append(line)
            if line.startswith("t="):
                running.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert running.wait(60), "".join(err_lines)
        time.sleep(4)
        if to_group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait(timeout=60)
        reader.join(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = "".join(err_lines)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert "interrupted" in err.splitlines()[-1]
    assert out.splitlines()[0].startswith("operation")
    last = out.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    m = re.match(rf"INTERRUPTED by {name} at t=(\d+\.\d)s of 60s; until then: errors 0\.00% <= 0\.00%; "
                 r"achieved (\d+\.\d)% of the (\d+) arrivals due (>=|<) 95%$", last)
    assert m, last
    assert 3 < float(m[1]) < 30 and int(m[3]) > 20
    assert float(m[2]) >= 80  # of the arrivals due by then, not of the whole 60 s schedule (~10%)
    data = json.loads(report.read_text())
    assert data["verdict"]["status"] == "INTERRUPTED" and data["verdict"]["line"] == last
    results = data["results"]
    assert results["interrupted"] is True
    assert results["interrupt_signal"] == signum
    assert results["operations"]["ir"]["ok"] > 0
    assert results["elapsed_seconds"] < 30


def _closed_run(tmp_path: Path, loops: int, workers: int) -> tuple[dict, set[str]]:
    """A 2 s closed run of ``loops`` loops over 20 identities; every CA answer takes >= 0.1 s."""
    import sqlite3

    work = tmp_path / f"closed-{loops}-{workers}"
    work.mkdir()
    profile = _profile(work, f"""
[run]
duration = 2
workers = {workers}
[arrivals]
shape = "closed"
devices = {loops}
think_time = 0
[devices]
count = 20
[ca]
latency = "fixed:0.1"
""")
    report, ca_dir = work / "run.json", work / "ca"
    proc = _fleet("run", str(profile), "--report", str(report), "--ca-dir", str(ca_dir), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with sqlite3.connect(ca_dir / "certs.sqlite") as db:
        refs = {ref for (ref,) in db.execute("SELECT device_ref FROM certificates")}
    return json.loads(report.read_text())["results"], refs


def test_closed_model_runs_exactly_its_loops(tmp_path: Path) -> None:
    """[arrivals] devices = 2 with [devices] count = 20: 2 loops, not 20. Each ir waits >= 0.1 s
    at the CA, so 2 loops can finish at most 2 * (2 s / 0.1 s + 1) = 42 in 2 s (20 loops ~10x
    that); 6 loops do about three times as many. The loops take turns over all 20 identities."""
    two, refs_two = _closed_run(tmp_path, 2, 1)
    six, _ = _closed_run(tmp_path, 6, 1)
    ir_two, ir_six = two["operations"]["ir"]["ok"], six["operations"]["ir"]["ok"]
    assert two["in_flight_peak"] == 2 and six["in_flight_peak"] == 6
    assert 4 <= ir_two <= 2 * (2 / 0.1 + 1), two["operations"]["ir"]
    assert ir_six <= 6 * (2 / 0.1 + 1), six["operations"]["ir"]
    assert ir_six >= 2 * ir_two, (ir_two, ir_six)  # scales with the loops (3x expected)
    assert two["operations"]["ir"]["failed"] == 0
    assert len(refs_two) == min(ir_two, 20)  # identities taken in turn from the population


def test_closed_model_loops_split_exactly_across_workers(tmp_path: Path) -> None:
    """3 loops over 2 workers: 2 + 1 loops, never more than 3 in flight in all."""
    results, _ = _closed_run(tmp_path, 3, 2)
    assert results["workers"] == 2
    assert results["in_flight_peak"] == 3
    assert 3 <= results["operations"]["ir"]["ok"] <= 3 * (2 / 0.1 + 1)


def test_progress_line_compares_arrivals_with_the_target(tmp_path: Path) -> None:
    """ir + kur at 20 arrivals/s: the live line (stderr, not a terminal) puts arrivals/s next to
    the target and operations/s (two per arrival) apart, labelled."""
    profile = _profile(tmp_path, """
[run]
duration = 2
flow = ["ir", "kur"]
[arrivals]
shape = "constant"
rate = 20
""")
    proc = _fleet("run", str(profile))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("t=")]
    assert lines, proc.stderr
    m = re.match(r"t=\s*(\d+\.\d)s arrivals (\d+)/s \(target (\d+)/s\) \| operations (\d+)/s ok (\d+) failed 0 ", lines[0])
    assert m, lines[0]
    assert m[3] == "20"
    assert 8 <= int(m[2]) <= 25, lines[0]  # arrivals per second, like the target
    assert int(m[5]) > 0 and int(m[4]) > 0
