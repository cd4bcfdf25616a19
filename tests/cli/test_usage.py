"""Issue 21 items 5, 6, 13 and 15: numeric flags are usage errors in one line (the same words as
the profile key), ``fleet`` alone shows help, ``--version``, metrics on loopback by default, and
help that fits 80 columns and ends with runnable examples."""

from __future__ import annotations

import importlib.metadata
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from cli_helpers import DEAD, fleet, one_error_line

from fleet.cli import main as main_module
from fleet.prometheus import metrics_host
from fleet.provision.manifest import COLUMNS

USAGE = "fleet: usage error: "

NUMERIC = [
    (["run", "profiles/smoke.toml", "--max-in-flight", "0"], "--max-in-flight", "must be an integer >= 1, got 0"),
    (["run", "profiles/smoke.toml", "--workers", "0"], "--workers", "must be an integer >= 1, got 0"),
    (["run", "profiles/smoke.toml", "--workers", "-1"], "--workers", "must be an integer >= 1, got -1"),
    (["run", "profiles/smoke.toml", "--rate", "0"], "--rate", "must be a number > 0, got 0"),
    (["run", "profiles/smoke.toml", "--rate", "-5"], "--rate", "must be a number > 0, got -5"),
    (["run", "profiles/smoke.toml", "--rate", "nan"], "--rate", "must be a number > 0, got nan"),
    (["run", "profiles/smoke.toml", "--devices", "0"], "--devices", "must be an integer >= 1, got 0"),
    (["run", "profiles/smoke.toml", "--duration", "0"], "--duration", "must be a number > 0, got 0"),
    (["run", "profiles/smoke.toml", "--duration", "-3"], "--duration", "must be a number > 0, got -3"),
    (["run", "profiles/smoke.toml", "--metrics-port", "70000"], "--metrics-port", "from 0 to 65535, got 70000"),
    (["run", "profiles/smoke.toml", "--metrics-port", "65535", "--workers", "2"], "--metrics-port", "passes port 65535"),
    (["run", "{closed}", "--rate", "50"], "--rate", "a closed model has no arrival rate"),
    (["provision", "m.csv", "--concurrency", "0"], "--concurrency", "must be an integer >= 1, got 0"),
    (["provision", "m.csv", "--max-attempts", "-1"], "--max-attempts", "must be an integer >= 1, got -1"),
    (["provision", "m.csv", "--timeout", "0"], "--timeout", "must be a number > 0, got 0"),
    (["provision", "m.csv", "--rate", "0"], "--rate", "must be a number > 0, got 0"),
    (["provision", "m.csv", "--backoff", "-1"], "--backoff", "must be a number >= 0, got -1"),
    (["provision", "m.csv", "--metrics-port", "99999"], "--metrics-port", "from 0 to 65535, got 99999"),
    (["cmp", "ir", "--server", DEAD, "--timeout", "0"], "--timeout", "must be a number > 0, got 0"),
    (["cmp", "genm", "--server", DEAD, "--iterations", "0"], "--iterations", "must be an integer >= 1, got 0"),
    (["keys", "generate", "--type", "ec:P-256", "--count", "1", "--workers", "0"], "--workers", "must be an integer >= 1"),
]


@pytest.mark.parametrize(("args", "option", "words"), NUMERIC, ids=[" ".join(a[:1] + a[-2:]) for a, _, _ in NUMERIC])
def test_numeric_flags_are_one_line_usage_errors(tmp_path: Path, args: list[str], option: str, words: str) -> None:
    """Exit 2 at once: no embedded CA, no run, no traceback (the issue: an ExceptionGroup, a
    false 100% error rate, a silently ignored --devices 0)."""
    closed = tmp_path / "closed.toml"
    closed.write_text('[run]\nduration = 1\n[arrivals]\nshape = "closed"\ndevices = 2\nthink_time = 0.1\n')
    result = fleet(*(a.format(closed=closed) for a in args), timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    line = one_error_line(result.stderr, USAGE)
    assert f"'{option}'" in line and words in line and "--help')" in line, line


def test_profile_key_and_flag_get_the_same_words(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text("[run]\nmax_in_flight = 0\n")
    from_profile = one_error_line(fleet("run", str(profile)).stderr)
    from_flag = one_error_line(fleet("run", "profiles/smoke.toml", "--max-in-flight", "0").stderr, USAGE)
    assert from_profile == f"fleet: error: {profile}: [run].max_in_flight: must be an integer >= 1, got 0"
    assert "must be an integer >= 1, got 0" in from_flag

    profile.write_text("[ca]\nerror_fraction = 2\n")
    from_profile = one_error_line(fleet("run", str(profile)).stderr)
    from_flag = one_error_line(fleet("ca", "serve", "--dir", str(tmp_path / "s"), "--error-fraction", "2").stderr, USAGE)
    assert from_profile.endswith("[ca].error_fraction: must be a fraction between 0 and 1, got 2")
    assert "must be a fraction between 0 and 1, got 2" in from_flag


def test_zero_rate_profile_is_refused(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('[arrivals]\nshape = "constant"\nrate = 0\n')
    result = fleet("run", str(profile))
    assert result.returncode == 1
    assert "schedules no arrivals" in one_error_line(result.stderr)


# -- item 6 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["cmp"], ["ca"], ["keys"]])
def test_no_arguments_show_help_without_an_empty_error(args: list[str]) -> None:
    result = fleet(*args)
    assert result.returncode == 2  # click's convention for a group without a command
    assert "usage error" not in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"Usage: fleet {' '.join(args)}".rstrip() + " [OPTIONS] COMMAND")
    assert "Commands:" in result.stderr and "Examples:" in result.stderr


def test_version() -> None:
    result = fleet("--version")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == f"fleet {importlib.metadata.version('fleet')}\n"


# -- item 13 -----------------------------------------------------------------------------------


def test_metrics_default_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET_METRICS_HOST", raising=False)
    assert metrics_host() == "127.0.0.1"


@pytest.fixture
def busy_loopback_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        yield int(listener.getsockname()[1])


def test_provision_metrics_bind_loopback_unless_told(busy_loopback_port: int, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The port is busy on 127.0.0.1 only: the default bind hits it (so the default is loopback);
    --metrics-host picks another address."""
    monkeypatch.delenv("FLEET_METRICS_HOST", raising=False)
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,subject,secret\ndev-1,/CN=dev-1,pass:x\n")
    common = ["provision", str(manifest), "--server", DEAD, "--out", str(tmp_path / "out"),
              "--metrics-port", str(busy_loopback_port), "--max-attempts", "1", "--keep-going", "--timeout", "2", "--no-progress"]
    result = fleet(*common, extra_env={"FLEET_METRICS_HOST": ""})
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{busy_loopback_port}" in one_error_line(result.stderr)
    result = fleet(*common, "--metrics-host", "127.0.0.2", extra_env={"FLEET_METRICS_HOST": ""})
    assert "cannot serve metrics" not in result.stderr, result.stderr


def test_run_metrics_bind_loopback_by_default(busy_loopback_port: int) -> None:
    result = fleet("run", "profiles/smoke.toml", "--duration", "1", "--quiet", "--metrics-port",
                   str(busy_loopback_port), extra_env={"FLEET_METRICS_HOST": ""})
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("fleet: error:")]
    # Worker 0 binds the busy port; the embedded CA binds the next one, which another process on
    # this shared machine may hold too: either way the refused address is loopback.
    assert len(errors) == 1 and "cannot serve metrics on 127.0.0.1:" in errors[0], errors
    assert "Traceback" not in result.stderr


# -- item 15: help -----------------------------------------------------------------------------


def _command_paths() -> list[list[str]]:
    main_module._register()
    root = typer.main.get_command(main_module.app)
    paths: list[list[str]] = [[]]

    def walk(command: object, path: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            paths.append([*path, name])
            walk(sub, [*path, name])

    walk(root, [])
    return paths


def _examples(help_text: str) -> list[list[str]]:
    """The example commands at the end of a help page, continuation lines joined."""
    block = help_text.split("\n  Examples:\n", 1)[1]
    joined = block.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line)
        while words and "=" in words[0] and not words[0].startswith("-"):
            words.pop(0)  # VAR=value prefixes
        if words and words[0] == "export":
            continue
        if words and words[-1] == "&":
            words.pop()
        commands.append(words)
    return commands


def _parses(words: list[str]) -> None:
    """Click parses the example against the real command tree (unknown options, missing required
    options and out-of-range values raise)."""
    command = typer.main.get_command(main_module.app)
    rest = words[1:]
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    with command.make_context(" ".join(words[:2]), rest) as _ctx:  # type: ignore[attr-defined]
        pass


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "fleet")
def test_help_fits_80_columns_and_ends_with_examples(path: list[str]) -> None:
    result = fleet(*path, "--help", extra_env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.isascii(), [c for c in text if not c.isascii()]  # no emoji for uniform:A:B, no box art
    for line in text.splitlines():
        assert len(line) <= 80, line
        assert "…" not in line and (not line.endswith("...") or line.startswith("Usage:")), line
    assert "<bool>" not in text and "list[" not in text
    head, examples = text.rsplit("\n  Examples:\n", 1)
    assert examples.strip() and "Options:" in head  # the examples come last
    commands = _examples(text)
    assert any(words and words[0] == "fleet" for words in commands)
    for words in commands:
        if words[0] == "fleet" and "--help" not in words:
            _parses(words)


def test_ca_serve_help_shows_latency_syntax_verbatim() -> None:
    text = fleet("ca", "serve", "--help", extra_env={"COLUMNS": "80"}).stdout
    assert "uniform:A:B" in text and "lognormal:MEDIAN:SIGMA" in text


def test_provision_help_lists_columns_and_required_options() -> None:
    text = fleet("provision", "--help", extra_env={"COLUMNS": "80"}).stdout
    assert "--server and --out are required" in text
    listed = {line.split()[0].rstrip(",") for line in text.split("Manifest columns", 1)[1].split("Arguments:")[0]
              .splitlines() if line.startswith("    ") and line.split()}
    listed |= {"secret", "key"}  # listed in pairs: "ref, secret", "cert, key"
    assert set(COLUMNS) <= listed, set(COLUMNS) - listed


def test_boolean_options_are_plain_flags() -> None:
    text = fleet("run", "--help", extra_env={"COLUMNS": "80"}).stdout
    assert "  --abort-on-fail         Stop" in text
    result = fleet("run", "profiles/smoke.toml", "--abort-on-fail", "yes")
    assert result.returncode == 2 and "unexpected extra argument" in result.stderr.lower()


LOADED = ("import sys\nfrom fleet.cli import main as m\nsys.argv = ['fleet', *sys.argv[1:]]\ntry:\n    m.main()\n"
          "except SystemExit:\n    pass\nprint(' '.join(sorted(k for k in sys.modules if k.startswith('fleet.cli.'))))")


@pytest.mark.parametrize(("args", "loaded", "not_loaded"), [
    (["report", "--help"], {"fleet.cli.report_cmd"}, {"fleet.cli.ca_cmd", "fleet.cli.capacity_cmd", "fleet.cli.cmp_cmd"}),
    (["ca", "serve", "--help"], {"fleet.cli.ca_cmd"}, {"fleet.cli.run_cmd", "fleet.cli.provision_cmd"}),
    (["--help"], {"fleet.cli.ca_cmd", "fleet.cli.run_cmd", "fleet.cli.k8s_cmd", "fleet.cli.listen_cmd"}, set()),
    (["rn"], {"fleet.cli.run_cmd", "fleet.cli.doctor_cmd"}, set()),  # a typo: every name, to suggest one
])
def test_a_command_starts_without_importing_the_others(args: list[str], loaded: set[str], not_loaded: set[str]) -> None:
    out = subprocess.run([sys.executable, "-c", LOADED, *args], capture_output=True, text=True, timeout=60, check=True)
    modules = set(out.stdout.strip().splitlines()[-1].split())
    assert loaded <= modules and not modules & not_loaded, modules
