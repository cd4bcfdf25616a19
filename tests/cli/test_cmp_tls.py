"""fleet cmp over HTTPS against fleet ca serve with TLS: server verification and its failure."""

from __future__ import annotations

import hmac
import ipaddress
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[2]
MASTER = "tls-master"


def _tls_credentials(d: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = d / "tls.pem", d / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_ca(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    cert, key = _tls_credentials(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli.main", "ca", "serve", "--dir", str(tmp_path / "ca"), "--port", "0",
         "--master-secret", f"pass:{MASTER}", "--tls-cert", str(cert), "--tls-key", str(key)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (https://127\.0\.0\.1:\d+)", line)
        assert match, line
        yield match.group(1) + "/.well-known/cmp", cert
    finally:
        proc.terminate()
        proc.wait(10)


def _ir(url: str, out: Path, *tls: str) -> subprocess.CompletedProcess[str]:
    ref = "dev-00000007"
    secret = hmac.new(MASTER.encode(), ref.encode(), "sha256").hexdigest()
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "cmp", "ir", "--server", url, "--ref", ref,
         "--secret", f"pass:{secret}", "--subject", "/CN=tls-device", "--certout", str(out), *tls],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


def test_ir_over_verified_https(tls_ca: tuple[str, Path], tmp_path: Path) -> None:
    url, cert = tls_ca
    proc = _ir(url, tmp_path / "out.pem", "--tls-trusted", str(cert))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ir: accepted")
    assert x509.load_pem_x509_certificate((tmp_path / "out.pem").read_bytes()).subject.rfc4514_string() == "CN=tls-device"


def test_unverifiable_server_is_one_line(tls_ca: tuple[str, Path], tmp_path: Path) -> None:
    url, _cert = tls_ca
    proc = _ir(url, tmp_path / "out.pem")  # system trust store: the self-signed server fails
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleet: error:"), proc.stderr
    assert "certificate" in lines[0].lower() or "tls" in lines[0].lower()
    assert not (tmp_path / "out.pem").exists()
