"""Issue 21 items 1 and 2: output files are checked before anything is sent or run, and a write
that still fails afterwards loses nothing (the certificate, the table, the verdict, the report)."""

from __future__ import annotations

import json
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import (
    DEAD,
    Ca,
    device_secret,
    fleet,
    fleet_inprocess,
    one_error_line,
    running_ca,
    wait_for_counts,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from fleet.cli import cmp_cmd, run_cmd

REF = "dev-00000001"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ca]:
    with running_ca(tmp_path_factory.mktemp("ca") / "state") as running:
        yield running


def mac(ca_url: str = DEAD) -> list[str]:
    return ["--server", ca_url, "--ref", REF, "--secret", f"pass:{device_secret(REF)}"]


# -- item 1: fleet cmp ------------------------------------------------------------------------


def test_unwritable_certout_is_refused_before_the_key_or_the_request(ca: Ca, tmp_path: Path) -> None:
    """The issue's case: nothing is generated, written or sent; the CA issues nothing."""
    before = ca.counts()
    result = fleet("cmp", "ir", *mac(ca.url), "--subject", "/CN=lost", "--newkey", "lost.key",
                   "--certout", "/nonexistent/x.pem", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    line = one_error_line(result.stderr)
    assert "--certout" in line and "/nonexistent" in line and "does not exist" in line
    assert list(tmp_path.iterdir()) == []  # lost.key was not written
    assert wait_for_counts(ca, before, timeout=2) == before


@pytest.mark.parametrize(
    ("option", "target", "words"),
    [
        ("--newkey", "/nonexistent/k.key", "folder '/nonexistent' does not exist"),
        ("--certout", "{tmp}", "is a folder"),
        ("--chainout", "/nonexistent/chain.pem", "does not exist"),
        ("--cacertsout", "{tmp}/file.txt/root.pem", "is not a folder"),
    ],
)
def test_every_output_path_is_checked_before_connecting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    option: str, target: str, words: str,
) -> None:
    """Against a dead server: a path problem must be reported, not the connection."""
    (tmp_path / "file.txt").write_text("not a folder")
    args = ["cmp", "ir", *mac(), "--subject", "/CN=x", option, target.format(tmp=tmp_path)]
    if option != "--newkey":
        args += ["--newkey", str(tmp_path / "k.key")]
    code, out, err = fleet_inprocess(monkeypatch, capsys, *args)
    assert code == 1 and out == ""
    line = one_error_line(err)
    assert option in line and words in line, line
    assert not (tmp_path / "k.key").exists()


@pytest.mark.parametrize("command", ["genm", "p10cr"])
def test_genm_and_p10cr_outputs_are_checked_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    extra = ["--csr", str(tmp_path / "any.csr")] if command == "p10cr" else []
    code, _out, err = fleet_inprocess(monkeypatch, capsys, "cmp", command, *mac(), *extra,
                                      "--cacertsout", "/nonexistent/cas.pem")
    assert code == 1
    assert "--cacertsout '/nonexistent/cas.pem'" in one_error_line(err)


def test_an_output_may_not_overwrite_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    same = str(tmp_path / "device.pem")
    code, _out, err = fleet_inprocess(monkeypatch, capsys, "cmp", "ir", *mac(), "--subject", "/CN=x",
                                      "--newkey", same, "--certout", same)
    assert code == 1
    assert "name the same file" in one_error_line(err)
    assert not Path(same).exists()


def _issued_serial(stdout: str) -> int:
    match = re.search(r"serial (0x[0-9a-f]+)", stdout)
    assert match, stdout
    return int(match.group(1), 16)


@pytest.mark.parametrize("with_newkey", [True, False])
def test_a_write_failing_after_issuance_keeps_the_certificate(
    ca: Ca, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, with_newkey: bool
) -> None:
    """The output folder disappears while the real CA answers: the certificate (and a key that
    exists nowhere else) lands in a 0600 file named in the one-line error."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    real_run = cmp_cmd._run

    def run_then_lose_the_folder(*args, **kwargs):  # type: ignore[no-untyped-def]
        done = real_run(*args, **kwargs)
        shutil.rmtree(out_dir)
        return done

    monkeypatch.setattr(cmp_cmd, "_run", run_then_lose_the_folder)
    key = tmp_path / "device.key"
    args = ["cmp", "ir", *mac(ca.url), "--subject", "/CN=rescued", "--certout", str(out_dir / "device.pem")]
    code, out, err = fleet_inprocess(monkeypatch, capsys, *args, *(["--newkey", str(key)] if with_newkey else []))
    assert code == 1
    line = one_error_line(err)
    assert f"cannot write --certout '{out_dir / 'device.pem'}'" in line
    kept = Path(line.rsplit(" kept in ", 1)[1])
    assert kept.parent == tmp_path and stat.S_IMODE(kept.stat().st_mode) == 0o600
    data = kept.read_bytes()
    cert = x509.load_pem_x509_certificates(data)[0]
    assert cert.serial_number == _issued_serial(out)
    assert cert.subject.rfc4514_string() == "CN=rescued"
    if with_newkey:
        assert b"PRIVATE KEY" not in data  # it is in --newkey, 0600
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        private = load_pem_private_key(key.read_bytes(), None)
    else:
        assert "and its private key" in line
        private = load_pem_private_key(data, None)
    assert cert.public_key() == private.public_key()


def test_cmp_outputs_written_when_paths_are_good(ca: Ca, tmp_path: Path) -> None:
    key, cert = tmp_path / "device.key", tmp_path / "device.pem"
    result = fleet("cmp", "ir", *mac(ca.url), "--subject", "/CN=fine", "--newkey", str(key),
                   "--certout", str(cert), "--cacertsout", str(tmp_path / "root.pem"))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert x509.load_pem_x509_certificate(cert.read_bytes()).serial_number == _issued_serial(result.stdout)


# -- item 2: fleet run --report, fleet report --html ------------------------------------------


def test_run_refuses_an_unwritable_report_before_running(tmp_path: Path) -> None:
    result = fleet("run", "profiles/smoke.toml", "--report", "/nonexistent/dir/run.json", "--quiet", timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    line = one_error_line(result.stderr)
    assert "--report '/nonexistent/dir/run.json'" in line and "does not exist" in line
    # Refused before the embedded CA or any key work started.
    assert "embedded CA" not in result.stderr


def test_run_report_write_failure_keeps_table_verdict_and_report(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The report's folder vanishes during the run: the table and the verdict are printed, the
    error is one line naming where the report was kept, exit 1."""
    folder = tmp_path / "reports"
    folder.mkdir()
    real = run_cmd.run_profile

    def run_then_lose_the_folder(*args, **kwargs):  # type: ignore[no-untyped-def]
        outcome = real(*args, **kwargs)
        folder.rmdir()
        return outcome

    monkeypatch.setattr(run_cmd, "run_profile", run_then_lose_the_folder)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    code, out, err = fleet_inprocess(monkeypatch, capsys, "run", "profiles/smoke.toml", "--duration", "1",
                                     "--quiet", "--report", str(folder / "run.json"))
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[0].startswith("operation") and lines[-1].startswith("PASS")
    assert "report:" not in out
    errors = [line for line in err.splitlines() if line.startswith("fleet: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert f"cannot write --report '{folder / 'run.json'}'" in errors[0]
    kept = Path(errors[0].rsplit(" kept in ", 1)[1])
    try:
        data = json.loads(kept.read_text())
        assert data["verdict"]["passed"] is True and data["results"]["operations"]["ir"]["ok"] == 40
    finally:
        shutil.rmtree(kept.parent)


def test_report_html_path_is_checked_first(tmp_path: Path) -> None:
    report = tmp_path / "run.json"
    report.write_text("{}")  # not even a valid report: the path is refused before it is read
    for target, words in (("/nonexistent/dir/x.html", "does not exist"), (str(tmp_path), "is a folder")):
        result = fleet("report", str(report), "--html", target)
        assert result.returncode == 1 and result.stdout == ""
        line = one_error_line(result.stderr)
        assert f"--html '{target}'" in line and words in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
