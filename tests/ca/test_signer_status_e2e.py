"""Issue #23 end to end: a certificate `fleet ca serve` revoked signs nothing more, with fleet's own
client (`fleet cmp`) and with `openssl cmp`; and (#22) a malformed signer certificate is answered
as bad protection at once, with no error line in the CA's log.

One real CA process for the module, on loopback. Each client enrolls with MAC, revokes its
certificate with an rr signed by it, then tries cr, genm and a signature-protected ir with it.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cmp import pyasn1_requests as P
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from openssl_peer import run_openssl_cmp

from .test_openssl_client import REF, SECRET, CaProcess, _start_ca, _stop, new_key, ok

REVOKED = "certRevoked"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaProcess]:
    process = _start_ca(tmp_path_factory.mktemp("signer-status") / "state")
    try:
        yield process
        assert process.proc.poll() is None, "the CA died during the tests"
    finally:
        _stop(process)


def fleet_cmp(ca: CaProcess, command: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "cmp", command, "--server", f"http://127.0.0.1:{ca.port}/pkix/",
         "--trusted", str(ca.root), *map(str, args)],
        capture_output=True, text=True, timeout=60, cwd=cwd, stdin=subprocess.DEVNULL, check=False,
    )


def count_certificates(ca: CaProcess) -> int:
    time.sleep(0.3)  # the CA flushes its records every 50 ms
    with sqlite3.connect(ca.state / "certs.sqlite", timeout=10) as db:
        (n,) = db.execute("SELECT count(*) FROM certificates_now").fetchone()
    return int(n)


def on_crl(ca: CaProcess, cert_path: Path) -> bool:
    serial = x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number
    with urllib.request.urlopen(f"http://127.0.0.1:{ca.port}/crl/issuing.crl", timeout=10) as rsp:
        crl = x509.load_der_x509_crl(rsp.read())
    return crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_revoked_certificate_signs_nothing_with_fleets_client(ca: CaProcess, tmp_path: Path) -> None:
    mac = ["--ref", REF, "--secret", f"pass:{SECRET}"]
    ok(fleet_cmp(ca, "ir", *mac, "--subject", "/CN=fleet-revoked", "--newkey", "a.key", "--certout", "a.pem",
                 cwd=tmp_path))
    signed = ["--cert", "a.pem", "--key", "a.key", "--extracerts", str(ca.issuing)]
    ok(fleet_cmp(ca, "cr", *signed, "--subject", "/CN=before", "--newkey", "b.key", cwd=tmp_path))  # still good
    ok(fleet_cmp(ca, "rr", *signed, "--oldcert", "a.pem", cwd=tmp_path))
    assert on_crl(ca, tmp_path / "a.pem")
    before = count_certificates(ca)
    for command, extra in (("cr", ["--subject", "/CN=after", "--newkey", "c.key"]), ("genm", []),
                           ("ir", ["--subject", "/CN=after", "--newkey", "d.key"])):
        result = fleet_cmp(ca, command, *signed, *extra, cwd=tmp_path)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and REVOKED in lines[0] and "Traceback" not in result.stderr, (command, result.stderr)
    assert count_certificates(ca) == before


def test_revoked_certificate_signs_nothing_with_openssl(ca: CaProcess, tmp_path: Path) -> None:
    key = new_key(tmp_path / "o.key")
    ok(run_openssl_cmp(["-server", ca.server, "-ref", REF, "-secret", f"pass:{SECRET}", "-recipient", "/CN=fleet CA",
                        "-cmd", "ir", "-newkey", str(key), "-subject", "/CN=openssl-revoked", "-certout", "o.pem"],
                       timeout=30, cwd=tmp_path))
    signed = ["-server", ca.server, "-cert", "o.pem", "-key", str(key), "-trusted", str(ca.root)]
    ok(run_openssl_cmp([*signed, "-cmd", "rr", "-oldcert", "o.pem", "-revreason", "1"], timeout=30, cwd=tmp_path))
    assert on_crl(ca, tmp_path / "o.pem")
    before = count_certificates(ca)
    new = str(new_key(tmp_path / "n.key"))
    for args in (["-cmd", "cr", "-newkey", new, "-subject", "/CN=after", "-certout", "x.pem"],
                 ["-cmd", "genm", "-infotype", "caCerts"],
                 ["-cmd", "ir", "-newkey", new, "-subject", "/CN=after", "-certout", "y.pem"]):
        result = run_openssl_cmp([*signed, *args], timeout=30, cwd=tmp_path)
        assert result.returncode != 0, args
        assert f"PKIFailureInfo: {REVOKED}" in result.stdout + result.stderr, args
    assert not (tmp_path / "x.pem").exists() and not (tmp_path / "y.pem").exists()
    assert count_certificates(ca) == before


def _post(ca: CaProcess, body: bytes) -> P.Answer:
    request = urllib.request.Request(f"http://127.0.0.1:{ca.port}/pkix/", data=body, method="POST",
                                     headers={"Content-Type": "application/pkixcmp"})
    with urllib.request.urlopen(request, timeout=10) as rsp:
        return P.Answer.read(rsp.read())


def test_malformed_signer_is_bad_protection_and_logs_nothing(tmp_path: Path) -> None:
    ca = _start_ca(tmp_path / "state")
    try:
        result = fleet_cmp(ca, "ir", "--ref", REF, "--secret", f"pass:{SECRET}", "--subject", "/CN=malformed",
                           "--newkey", "m.key", "--certout", "m.pem", cwd=tmp_path)
        ok(result)
        cert = x509.load_pem_x509_certificate((tmp_path / "m.pem").read_bytes())
        key = serialization.load_pem_private_key((tmp_path / "m.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        issuing = x509.load_pem_x509_certificate(ca.issuing.read_bytes()).public_bytes(serialization.Encoding.DER)
        for defect, fail in (("duplicate extension", "badMessageCheck"), ("unknown curve", "badAlg")):
            msg = P.new_message("cr")
            P.cert_request(msg, "cr", ec.generate_private_key(ec.SECP256R1()), cert.subject)
            signed = P.Signed(key, cert, extra_certs_override=(P.malformed_certificate(cert, defect), issuing))
            started = time.monotonic()
            answer = _post(ca, P.protect(msg, signed))
            assert (answer.body, answer.status, answer.fail) == ("error", 2, (fail,)), defect
            assert time.monotonic() - started < 5  # at once, not after a timeout
        assert ca.proc.poll() is None
    finally:
        _stop(ca)
    assert ca.proc.stdout is not None
    log = "".join(ca.log) + ca.proc.stdout.read()
    assert "failed inside the server" not in log and "Traceback" not in log, log
