"""``fleet cmp`` against OpenSSL's mock CA started with ``-rsp_capubs``: a signature-protected ip
that carries caPubs enrolls, and those caPubs are neither trusted nor written (RFC 9483 §4.1.1)."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import fleet
from cryptography import x509
from openssl_peer import TestPki, rogue_root


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_fleet_cmp_signed_ir_with_ca_pubs_writes_the_certificate_not_the_ca_pubs(
    openssl_mock, test_pki: TestPki, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The real command: exit 0, --certout written, --cacertsout not written and the reason
    given (and counted as a warning), no traceback."""
    server = openssl_mock(rsp_capubs=rogue_root(tmp_path))
    certout, cacertsout = tmp_path / "device.pem", tmp_path / "root.pem"
    result = fleet(
        "cmp", "ir", "--server", server.url, "--cert", str(test_pki.client_crt), "--key", str(test_pki.client_key),
        "--trusted", str(test_pki.root_crt), "--newkey", str(test_pki.new_key), "--subject", "/CN=Enrolled Device",
        "--certout", str(certout), "--cacertsout", str(cacertsout),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert cert(certout) == cert(test_pki.rsp_crt)
    assert not cacertsout.exists()
    lines = result.stderr.strip().splitlines()
    assert any("warning: caPubs of a signature-protected response ignored" in line for line in lines), result.stderr
    assert any(f"--cacertsout {str(cacertsout)!r} not written" in line and "RFC 9483 §4.1.1" in line
               for line in lines), result.stderr


