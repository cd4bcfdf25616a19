"""The README's commands, executed: the `fleet cmp` session and the example manifest against a
real `fleet ca serve` (only the port rewritten to a free loopback one), the main command
`fleet run profiles/smoke.toml`, and every `fleet run` example line (parsed; nf-rotation run)."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import strict_lwcmp as strict
import typer
from cli_helpers import ROOT, Ca, device_secret, env, fleet, free_port, stop_ca
from cryptography import x509
from recording_proxy import recording_proxy

from fleet.cli import cmp_cmd
from fleet.cli import main as main_module
from fleet.load.profiles import load_profile

README = (ROOT / "README.md").read_text()


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL)


def block_with(text: str) -> str:
    [block] = [b for b in shell_blocks() if text in b]
    return block


def logical_lines(block: str) -> list[str]:
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder that looks like the clone (profiles/) with `fleet` on PATH running this checkout."""
    (tmp_path / "profiles").symlink_to(ROOT / "profiles")
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "fleet"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fleet.cli.main "$@"\n')
    wrapper.chmod(0o755)
    return tmp_path


def shell_env(workdir: Path) -> dict[str, str]:
    return {**env(), "PATH": f"{workdir / '.bin'}{os.pathsep}{os.environ['PATH']}"}


def start_readme_ca(line: str, workdir: Path) -> Ca:
    """Start the block's `fleet ca serve ... & sleep 2` line as written (without `& sleep`)."""
    words = shlex.split(line, comments=True)
    argv = words[: words.index("&")] if "&" in words else words
    assert argv[:3] == ["fleet", "ca", "serve"], argv
    proc = subprocess.Popen(
        [str(workdir / ".bin" / "fleet"), *argv[1:]], cwd=workdir, env=shell_env(workdir),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    lines = []
    for output in proc.stdout:
        lines.append(output)
        if "listening on" in output:
            return Ca(proc, int(output.rsplit("(port ", 1)[1].split(")")[0]), workdir, lines)
    proc.wait(10)
    raise AssertionError("the README's CA did not start: " + "".join(lines))


def run_block(block: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Start the block's CA (its first line), run every other line in one `bash -e`, stop the CA."""
    ports = set(re.findall(r"(?:--port |127\.0\.0\.1:)(\d+)", block))
    assert len(ports) == 1, ports
    block = block.replace(ports.pop(), str(free_port()))
    lines = logical_lines(block)
    ca = start_readme_ca(lines[0], workdir)
    try:
        script = "set -euxo pipefail\n" + "\n".join(lines[1:]) + "\n"
        return subprocess.run(["bash", "-c", script], cwd=workdir, env=shell_env(workdir), capture_output=True,
                             text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    finally:
        stop_ca(ca)


def run_block_recorded(block: str, workdir: Path) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, bytes]]]:
    """``run_block``, with the block's CA URL (its CA= line) sent through a recording proxy:
    the result and every request the block's commands sent, as sent."""
    ports = set(re.findall(r"(?:--port |127\.0\.0\.1:)(\d+)", block))
    assert len(ports) == 1, ports
    ca_port = free_port()
    lines = logical_lines(block.replace(ports.pop(), str(ca_port)))
    ca = start_readme_ca(lines[0], workdir)
    try:
        with recording_proxy(ca.url) as proxy:
            commands = [line.replace(f"127.0.0.1:{ca_port}/", f"127.0.0.1:{proxy.port}/") for line in lines[1:]]
            assert sum(f"127.0.0.1:{proxy.port}/" in line for line in commands) == 1  # the CA= line
            script = "set -euxo pipefail\n" + "\n".join(commands) + "\n"
            result = subprocess.run(["bash", "-c", script], cwd=workdir, env=shell_env(workdir), capture_output=True,
                                    text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
            return result, list(proxy.requests)
    finally:
        stop_ca(ca)


@pytest.mark.parametrize("ref", ["dev-00000001", "CN=fleet-test"], ids=["plain reference", "reference is a name"])
def test_readme_cmp_session(workdir: Path, ref: str) -> None:
    """The session as written (REF=dev-00000001) and with its other naming style (REF=CN=fleet-test),
    against the README's CA; every request it sends passes a strict RFC 9483 server's checks:
    MAC sender naming the senderKID's entity (never CN=CN=...), extraCerts with the issuing CA
    for kur and rr, one CRLReason in rr."""
    block = block_with("fleet cmp ir --server $CA --ref $REF")
    assert "REF=dev-00000001" in block
    result, sent = run_block_recorded(block.replace("REF=dev-00000001", f"REF={ref}"), workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for name in ("device.key", "device.pem", "chain.pem", "root.pem", "cas.pem", "new.key", "new.pem",
                 "own.key", "own.csr", "own.pem"):
        assert (workdir / name).stat().st_size > 0, name
    for key in ("device.key", "new.key"):
        assert stat.S_IMODE((workdir / key).stat().st_mode) == 0o600
    issued = x509.load_pem_x509_certificate((workdir / "device.pem").read_bytes())
    root = x509.load_pem_x509_certificate((workdir / "root.pem").read_bytes())
    issued.verify_directly_issued_by(x509.load_pem_x509_certificates((workdir / "chain.pem").read_bytes())[0])
    assert root.subject == root.issuer
    assert (workdir / "ca-state").is_dir()

    secret = device_secret(ref).encode()
    kinds = [strict.body_of(strict.decode(data))[0] for _, data in sent]
    assert kinds == ["ir", "certConf", "genm", "kur", "certConf", "rr", "p10cr", "certConf"]
    for (_, data), kind in zip(sent, kinds):
        assert strict.problems(data, anchors=[root], secret=secret) == [], kind
    mac_sender = [("2.5.4.3", ref.removeprefix("CN="))]
    assert [strict.sender_attributes(data) for (_, data), k in zip(sent, kinds) if k in ("ir", "genm", "p10cr")] == [mac_sender] * 3
    issuing_ca = x509.load_pem_x509_certificates((workdir / "chain.pem").read_bytes())[0].subject.rfc4514_string()
    assert strict.extra_cert_subjects(sent[kinds.index("kur")][1]) == ["CN=device-1", issuing_ca]
    assert strict.crl_reasons(sent[kinds.index("rr")][1]) == [1]  # keyCompromise, and only it


def test_readme_example_manifest_against_the_embedded_ca(workdir: Path) -> None:
    block = block_with("provision-example.csv")
    result = run_block(block, workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 devices OK" in result.stdout
    summary = json.loads((workdir / "issued" / "summary.json").read_text())
    assert summary["provisioned"] == summary["devices"] == 2
    for device in ("gnb-0001", "gnb-0002"):
        folder = workdir / "issued" / device
        assert x509.load_pem_x509_certificate((folder / "cert.pem").read_bytes())
        assert stat.S_IMODE((folder / "key.pem").stat().st_mode) == 0o600


def test_readme_main_command_passes(tmp_path: Path) -> None:
    [line] = [line for b in shell_blocks() for line in logical_lines(b) if "pip install" in line]
    command = line.split("&&", 1)[1].split()
    assert command == ["fleet", "run", "profiles/smoke.toml"]
    result = fleet(*command[1:], "--quiet", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("PASS")


def _run_examples() -> list[list[str]]:
    block = block_with("fleet run profiles/ramp-to-break.toml")
    return [shlex.split(line, comments=True) for line in logical_lines(block)]


def test_readme_run_examples_parse_and_apply() -> None:
    """Every `fleet run` example of the README parses and its overrides apply to its profile
    (`nf-rotation --rate 300` failed before: --rate now scales a sine)."""
    main_module._register()
    run = typer.main.get_command(main_module.app).commands["run"]  # type: ignore[attr-defined]
    for words in _run_examples():
        with run.make_context("fleet run", words[2:]) as ctx:
            p = ctx.params
            profile = load_profile(ROOT / p["profile"]).with_flags(
                rate=p["rate"], duration=p["duration"], devices=p["devices"], workers=p["workers"],
                max_in_flight=p["max_in_flight"],
            )
            if p["rate"] is not None:
                assert profile.shape.peak_rate == pytest.approx(p["rate"])  # type: ignore[union-attr]


def test_readme_nf_rotation_example_runs(tmp_path: Path) -> None:
    [words] = [w for w in _run_examples() if "--rate" in w]
    assert words[2:6] == ["profiles/nf-rotation.toml", "--rate", "300", "--duration"]
    report = tmp_path / "run.json"
    # Shortened to 2 s, without the fixed metrics port: the scaled shape is what is checked.
    result = fleet("run", "profiles/nf-rotation.toml", "--rate", "300", "--duration", "2", "--quiet",
                   "--report", str(report), timeout=240)
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith(("PASS", "FAIL"))
    # Sine 150 +- 100 scaled to peak 300 is 180 +- 120 (period 30 s): 410 arrivals in 2 s.
    assert json.loads(report.read_text())["results"]["scheduled"] == 410


def test_help_examples_of_fleet_cmp_run(workdir: Path) -> None:
    """The examples at the end of every `fleet cmp` command's help, in order, against the README's CA."""
    port = free_port()
    lines = [e.replace("8080", str(port)) for op in ("ir", "genm", "cr", "kur", "p10cr", "rr")
             for e in cmp_cmd.EXAMPLES[op]]
    ca = start_readme_ca(f"fleet ca serve --dir ca-state --port {port} --master-secret pass:demo", workdir)
    try:
        run_env = {**shell_env(workdir), "DEVICE_SECRET": device_secret("dev-00000001")}
        result = subprocess.run(["bash", "-c", "set -euxo pipefail\n" + "\n".join(lines)], cwd=workdir, env=run_env,
                                capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    finally:
        stop_ca(ca)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("device.pem", "cas.pem", "second.pem", "new.pem", "own.pem"):
        assert (workdir / name).stat().st_size > 0, name
    assert "rr: accepted" in result.stdout
