"""``fleet run`` against a CA nobody answers for: one line and exit 1 at once, nothing sent,
unless ``--keep-going``; and shell completion as the README documents it."""

from __future__ import annotations

import time

from cli_helpers import DEAD, fleet, one_error_line


def test_unreachable_ca_stops_the_run_at_once_in_one_line() -> None:
    started = time.monotonic()
    result = fleet("run", "profiles/smoke.toml", "--server", DEAD, "--master-secret", "pass:x", "--quiet")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert line.startswith("fleet: error: CA unreachable, nothing sent: http://127.0.0.1:1/.well-known/cmp: ")
    assert "Connection refused" in line and line.endswith("(--keep-going runs anyway)")
    assert result.stdout == ""  # no table, no verdict: no run happened
    assert time.monotonic() - started < 30  # smoke runs 5 s plus start-up; this returns before any


def test_keep_going_runs_the_whole_profile_and_reports_the_connect_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    report = tmp_path / "run.json"
    result = fleet("run", "profiles/smoke.toml", "--server", DEAD, "--master-secret", "pass:x", "--quiet",
                   "--keep-going", "--duration", "1", "--report", str(report))
    assert result.returncode == 1, result.stderr
    assert "connect" in result.stdout and "FAIL" in result.stdout
    assert report.exists()


def test_shell_completion_script_and_answers() -> None:
    script = fleet("--show-completion", "bash", extra_env={"SHELL": "/bin/bash"})
    assert script.returncode == 0 and "_FLEET_COMPLETE=complete_bash" in script.stdout
    words = fleet(extra_env={"_FLEET_COMPLETE": "complete_bash", "COMP_WORDS": "fleet ", "COMP_CWORD": "1"})
    assert {"run", "cmp", "ca", "provision", "doctor", "keys", "report"} <= set(words.stdout.split())
    flags = fleet(extra_env={"_FLEET_COMPLETE": "complete_bash", "COMP_WORDS": "fleet run --kee", "COMP_CWORD": "2"})
    assert flags.stdout.split() == ["--keep-going"]
