"""Issue 21 item 4 (and 13 for the CA): ``fleet ca serve`` on a busy port says so in one line
and leaves --dir as it was; /metrics listens on loopback unless told otherwise."""

from __future__ import annotations

import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import (
    fleet,
    fleet_inprocess,
    free_port,
    listening_addresses,
    one_error_line,
    running_ca,
)

from fleet.ca import serve as ca_serve


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket listens on for the test's duration."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        yield int(listener.getsockname()[1])


def test_busy_port_is_one_line_and_creates_no_hierarchy(busy_port: int, tmp_path: Path) -> None:
    state = tmp_path / "ca-state"
    result = fleet("ca", "serve", "--dir", str(state), "--port", str(busy_port), "--master-secret", "pass:demo")
    assert result.returncode == 1 and result.stdout == ""
    line = one_error_line(result.stderr)
    assert f"port {busy_port} is in use" in line
    assert not state.exists()


def test_busy_port_leaves_an_existing_dir_untouched(busy_port: int, tmp_path: Path) -> None:
    state = tmp_path / "ca-state"
    state.mkdir()
    (state / "notes.txt").write_text("mine")
    result = fleet("ca", "serve", "--dir", str(state), "--port", str(busy_port))
    assert result.returncode == 1
    assert f"port {busy_port} is in use" in one_error_line(result.stderr)
    assert [p.name for p in state.iterdir()] == ["notes.txt"]


def test_port_taken_after_the_check_is_undone(
    busy_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another process wins the port between the check and the real bind: the hierarchy created
    meanwhile is removed again and the error is the same one line."""
    monkeypatch.setattr(ca_serve, "_check_port", lambda host, port: None)
    state = tmp_path / "ca-state"
    state.mkdir()
    (state / "notes.txt").write_text("mine")
    code, _out, err = fleet_inprocess(monkeypatch, capsys, "ca", "serve", "--dir", str(state),
                                      "--port", str(busy_port), "--master-secret", "pass:demo")
    assert code == 1
    assert f"port {busy_port} is in use" in one_error_line(err)
    assert [p.name for p in state.iterdir()] == ["notes.txt"]


def test_busy_metrics_port_creates_nothing(busy_port: int, tmp_path: Path) -> None:
    state = tmp_path / "ca-state"
    result = fleet("ca", "serve", "--dir", str(state), "--port", "0", "--metrics-port", str(busy_port))
    assert result.returncode == 1
    assert f"127.0.0.1:{busy_port}" in one_error_line(result.stderr)
    assert not state.exists()


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--port", "70000", "must be an integer from 0 to 65535, got 70000"),
        ("--port", "-1", "must be an integer from 0 to 65535, got -1"),
        ("--metrics-port", "65536", "must be an integer from 0 to 65535, got 65536"),
        ("--error-fraction", "1.5", "must be a fraction between 0 and 1, got 1.5"),
        ("--drop-fraction", "-0.1", "must be a fraction between 0 and 1, got -0.1"),
        ("--confirm-wait", "0", "must be a number > 0, got 0"),
        ("--check-after", "-1", "must be a number >= 0, got -1"),
        ("--validity-days", "0", "must be an integer >= 1, got 0"),
        ("--max-transactions", "-5", "must be an integer >= 0, got -5"),
        ("--issue-rate", "-2.5", "must be a number >= 0, got -2.5"),
    ],
)
def test_numeric_options_are_usage_errors(tmp_path: Path, option: str, value: str, words: str) -> None:
    state = tmp_path / "ca-state"
    result = fleet("ca", "serve", "--dir", str(state), "--port", "0", option, value)
    assert result.returncode == 2
    line = one_error_line(result.stderr, "fleet: usage error: ")
    assert f"'{option}'" in line and words in line, line
    assert not state.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/net/tcp")
def test_metrics_listen_on_loopback_by_default(tmp_path: Path) -> None:
    port = free_port()
    with running_ca(tmp_path / "state", "--host", "127.0.0.1", "--metrics-port", str(port)) as ca:
        assert any(f"metrics: http://127.0.0.1:{port}/metrics" in line for line in ca.output)
        assert listening_addresses(port) == {"127.0.0.1"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert b"fleet_ca_" in response.read()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/net/tcp")
def test_metrics_host_exposes_by_choice(tmp_path: Path) -> None:
    port = free_port()
    with running_ca(tmp_path / "state", "--metrics-port", str(port), "--metrics-host", "0.0.0.0"):
        assert listening_addresses(port) == {"0.0.0.0"}


# -- one spelling of the CA settings: flags, profile keys and CaConfig share names and words -----

# The flag's text for one bad value of each profile key (booleans have no bad value on a command line).
CLI_BAD = {
    "mode": "5g", "latency": "gauss:1", "waiting_fraction": "1.5", "check_after": "-1", "error_fraction": "2",
    "http_503_fraction": "-0.5", "drop_fraction": "3", "max_transactions": "-5", "issue_rate": "-1", "confirm_wait": "0",
    "validity_days": "0", "key_type": "rsa:1024", "seed": "-1", "kga_profiles": "iot/a",
    "kga_key_type": "ed448", "kga_pwri_iterations": "0", "kga_rsa_pool": "-1", "kga_kek_cache": "-1",
}


def test_every_profile_key_is_a_flag() -> None:
    from fleet.ca.config import PROFILE_KEYS

    assert set(CLI_BAD) == set(PROFILE_KEYS) - {"implicit_confirm", "require_message_time", "kga", "kga_password_delivery"}  # on/off flags
    text = fleet("ca", "serve", "--help", extra_env={"COLUMNS": "200"}).stdout
    for key in PROFILE_KEYS:
        assert f"--{key.replace('_', '-')}" in text, key


@pytest.mark.parametrize("key", sorted(CLI_BAD))
def test_flag_and_profile_key_are_refused_in_the_same_words(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fleet.load.profiles import ProfileError, parse_profile

    text = CLI_BAD[key]
    value = text if key in ("mode", "latency", "key_type", "kga_profiles", "kga_key_type") else float(text) if "." in text else int(text)
    with pytest.raises(ProfileError) as profile:
        parse_profile({"ca": {key: value}}, where="p.toml")
    words = str(profile.value).split(f"[ca].{key}: ", 1)[1]
    state = tmp_path / "ca-state"
    flag = f"--{key.replace('_', '-')}"
    code, out, err = fleet_inprocess(monkeypatch, capsys, "ca", "serve", "--dir", str(state), "--port", "0", flag, text)
    assert code == 2 and out == ""
    line = one_error_line(err, "fleet: usage error: ")
    assert f"'{flag}'" in line and words in line and "--help')" in line, (line, words)
    assert not state.exists()


@pytest.mark.parametrize(
    ("args", "option", "words"),
    [
        (["--ref", "dev-1"], "--ref", "needs --secret"),
        (["--tls-cert", "cert.pem"], "--tls-key", "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca", "needs --tls-cert and --tls-key (mutual TLS is HTTPS)"),
        (["--issuing-cert", "i.pem", "--issuing-key", "k.pem"], "--signer-cert",
         "--issuing-cert, --issuing-key, --signer-cert and --signer-key go together"),
        (["--port", "9200", "--metrics-port", "9200"], "--metrics-port", "9200 is also --port"),
    ],
)
def test_settings_that_go_together_are_usage_errors(
    args: list[str], option: str, words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Checked by CaConfig before anything is written (a lone --tls-cert used to create the
    hierarchy first)."""
    state = tmp_path / "ca-state"
    code, _out, err = fleet_inprocess(monkeypatch, capsys, "ca", "serve", "--dir", str(state), *args)
    assert code == 2
    line = one_error_line(err, "fleet: usage error: ")
    assert f"'{option}'" in line and words in line, line
    assert not state.exists()


def test_unreadable_tls_files_leave_no_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Every input file is read before the state folder is created."""
    state = tmp_path / "ca-state"
    code, _out, err = fleet_inprocess(monkeypatch, capsys, "ca", "serve", "--dir", str(state), "--port", "0",
                                      "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(tmp_path / "none.key"))
    assert code == 1
    line = one_error_line(err)
    assert f"--tls-cert: cannot read certificate file '{tmp_path / 'none.pem'}': No such file" in line
    assert not state.exists()
