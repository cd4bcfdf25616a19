"""``fleet ra serve`` refuses what cannot work in one line: usage errors exit 2 naming the option,
unusable files and a busy port exit 1; nothing starts listening. And ``fleet run`` with a
profile's ``[ra]`` section (requests in RA-signed nested batches) against its embedded CA."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import fleet, one_error_line

UPSTREAM = "http://127.0.0.1:1/.well-known/cmp"


@pytest.fixture(scope="module")
def ra_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("ra-cli")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cli RA")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (folder / "ra.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "ra.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return folder / "ra.pem", folder / "ra.key"


def ra(files: tuple[Path, Path], *args: str) -> list[str]:
    return ["ra", "serve", "--upstream", UPSTREAM, "--cert", str(files[0]), "--key", str(files[1]), *args]


@pytest.mark.parametrize(("args", "option", "words"), [
    (["--mode", "bogus", "--secret", "pass:x"], "--mode", "must be one of pass, nested, replace"),
    (["--batch-size", "5", "--secret", "pass:x"], "--batch-size", "use --mode nested"),
    (["--mode", "nested", "--secret", "pass:x"], "--upstream-trusted", "needs the CA's trust anchor"),
    ([], "--secret", "the RA verifies every request"),
    (["--secret", "pass:x", "--batch-wait", "-1"], "--batch-wait", "must be >= 0"),
    (["--secret", "pass:x", "--error-fraction", "2"], "--error-fraction", "0"),
])
def test_usage_errors_name_the_option(ra_files: tuple[Path, Path], args: list[str], option: str, words: str) -> None:
    result = fleet(*ra(ra_files, *args))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"'{option}'" in result.stderr and words in result.stderr, result.stderr


def test_bad_upstream_url_and_missing_credential(ra_files: tuple[Path, Path]) -> None:
    result = fleet("ra", "serve", "--upstream", "ftp://ca", "--cert", str(ra_files[0]), "--key", str(ra_files[1]),
                   "--secret", "pass:x")
    assert result.returncode == 2 and "'--upstream'" in result.stderr
    result = fleet("ra", "serve", "--upstream", UPSTREAM, "--secret", "pass:x")
    assert result.returncode == 2 and "'--cert'" in result.stderr


def test_unusable_files_are_one_line(ra_files: tuple[Path, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    result = fleet("ra", "serve", "--upstream", UPSTREAM, "--cert", str(junk), "--key", str(ra_files[1]),
                   "--secret", "pass:x")
    assert result.returncode == 1 and result.stdout == ""
    assert "junk.pem" in one_error_line(result.stderr)
    other = tmp_path / "other.key"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    result = fleet("ra", "serve", "--upstream", UPSTREAM, "--cert", str(ra_files[0]), "--key", str(other),
                   "--secret", "pass:x")
    assert result.returncode == 1
    assert "is not the key of --cert" in one_error_line(result.stderr)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        yield int(listener.getsockname()[1])


def test_busy_port_is_one_line(ra_files: tuple[Path, Path], busy_port: int) -> None:
    result = fleet(*ra(ra_files, "--secret", "pass:x", "--port", str(busy_port)))
    assert result.returncode == 1 and result.stdout == ""
    assert f"port {busy_port} is in use" in one_error_line(result.stderr)


def _write_profile(tmp_path: Path, ra: str) -> Path:
    path = tmp_path / "ra.toml"
    path.write_text(f"""
name = "ra-smoke"
[run]
duration = 2
flow = ["ir"]
[arrivals]
shape = "constant"
rate = 20
[devices]
count = 100
[slo]
max_error_rate = 0.0
[ra]
{ra}
""")
    return path


def test_fleet_run_with_ra_section_against_the_embedded_ca(tmp_path: Path) -> None:
    report = tmp_path / "run.json"
    result = fleet("run", str(_write_profile(tmp_path, "batch_size = 8\nbatch_wait = 0.05")), "--report", str(report),
                   "--quiet", "--keys", str(tmp_path / "keys"), "--ca-dir", str(tmp_path / "ca"), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RA-signed nested messages of up to 8" in result.stderr
    data = json.loads(report.read_text())
    assert data["results"]["operations"]["ir"]["ok"] == 40 and data["results"]["operations"]["ir"]["failed"] == 0
    assert (tmp_path / "ca" / "ra-root.pem").exists()


def test_fleet_run_with_ra_section_needs_a_credential_for_an_external_ca(tmp_path: Path) -> None:
    result = fleet("run", str(_write_profile(tmp_path, "batch_size = 8")), "--server", "http://127.0.0.1:1/.well-known/cmp",
                   "--master-secret", "pass:x", "--quiet", timeout=60)
    assert result.returncode != 0
    assert "[ra] needs cert and key against --server" in one_error_line(result.stderr)
