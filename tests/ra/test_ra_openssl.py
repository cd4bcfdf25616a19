"""`fleet ra serve` between real peers, every process real, over loopback HTTP.

* `openssl cmp` (a client no one here wrote) -> `fleet ra serve` -> `fleet ca serve`: the flows of
  tests/ca/test_openssl_client.py (ir with PBM and signature, cr, p10cr, kur then rr, implicit
  confirm, genm, refusals) in pass-through, added-protection (nested, batched) and
  replaced-protection modes.
* fleet's devices (`fleet cmp`) -> `fleet ra serve` -> OpenSSL's mock CA (`openssl cmp -port`),
  pass-through, polling included.
* Hostile envelopes posted to `fleet ca serve` itself: from an untrusted RA, with a bad inner MAC,
  with a repeated transactionID; and an RA the CA does not trust, behind which enrollment fails
  with the CA's reason.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from openssl_peer import OPENSSL, OpenSSLMockServer, TestPki, run_openssl_cmp

from fleet.cmp import messages
from fleet.cmp.client import ClientConfig, ClientTransaction
from fleet.cmp.messages import BodyType, ErrorMsgContent, NestedMessageContent
from fleet.cmp.nested import wrap
from fleet.cmp.protection import MacProtector, SignatureProtector
from fleet.cmp.requests import CertRequest

SECRET = "test1234"
REF = "1234"


@dataclass
class Proc:
    proc: subprocess.Popen[str]
    port: int
    log: list[str]

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}/pkix/"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/pkix/"


def _start(args: list[str], what: str) -> Proc:
    proc = subprocess.Popen([sys.executable, "-m", "fleet.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "listening on" in line:
                return Proc(proc, int(line.rsplit("(port ", 1)[1].split(")")[0]), lines)
    proc.kill()
    proc.wait(5)
    raise AssertionError(f"{what} did not start: " + "".join(lines))


def _stop(p: Proc) -> None:
    p.proc.send_signal(signal.SIGTERM)
    try:
        p.proc.wait(10)
    except subprocess.TimeoutExpired:
        p.proc.kill()
        p.proc.wait(5)


@dataclass
class Cred:
    cert: Path
    key: Path
    root: Path


def make_ra(tmp: Path, label: str) -> Cred:
    """A root and an RA certificate under it (with SubjectKeyIdentifier), as PEM files."""
    now = datetime.now(UTC)
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{label} root")])
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)]))
            .issuer_name(root_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    out = Cred(tmp / f"{label}.pem", tmp / f"{label}.key", tmp / f"{label}-root.pem")
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + root.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    out.key.chmod(0o600)
    out.root.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    return out


@dataclass
class Chain:
    ca: Proc
    ra: Proc
    state: Path
    mode: str

    @property
    def root(self) -> Path:
        return self.state / "root-ca.pem"


@pytest.fixture(scope="module")
def ra_cred(tmp_path_factory: pytest.TempPathFactory) -> Cred:
    return make_ra(tmp_path_factory.mktemp("ra-pki"), "Test RA")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory, test_pki: TestPki, ra_cred: Cred) -> Iterator[tuple[Proc, Path]]:
    state = tmp_path_factory.mktemp("fleet-ca") / "state"
    process = _start(["ca", "serve", "--dir", str(state), "--port", "0", "--secret", f"pass:{SECRET}", "--ref", REF,
                      "--confirm-wait", "10", "--trusted", str(test_pki.root_crt),
                      # the flows enroll the test PKI's one key file again and again (RFC 9483 lets a CA allow it)
                      "--ra-trusted", str(ra_cred.root), "--allow-key-reuse"], "fleet ca serve")
    try:
        yield process, state
        assert process.proc.poll() is None, "the CA died during the tests"
    finally:
        _stop(process)


def start_ra(upstream: str, cred: Cred, trusted: list[Path], *extra: str, mode: str = "pass",
             upstream_trusted: Path | None = None) -> Proc:
    args = ["ra", "serve", "--upstream", upstream, "--port", "0", "--cert", str(cred.cert), "--key", str(cred.key),
            "--secret", f"pass:{SECRET}", "--ref", REF, "--mode", mode, *extra]
    for path in trusted:
        args += ["--trusted", str(path)]
    if upstream_trusted is not None:
        args += ["--upstream-trusted", str(upstream_trusted)]
    return _start(args, "fleet ra serve")


MODES = {"pass": (), "nested": ("--batch-size", "4", "--batch-wait", "0.02"), "replace": ()}


@pytest.fixture(scope="module", params=list(MODES))
def chain(request: pytest.FixtureRequest, ca: tuple[Proc, Path], ra_cred: Cred, test_pki: TestPki) -> Iterator[Chain]:
    process, state = ca
    mode = request.param
    ra = start_ra(process.url, ra_cred, [test_pki.root_crt, state / "root-ca.pem"], *MODES[mode],
                  "--untrusted", str(state / "issuing-ca.pem"), mode=mode, upstream_trusted=state / "root-ca.pem")
    try:
        yield Chain(process, ra, state, mode)
        assert ra.proc.poll() is None, "the RA died during the tests"
    finally:
        _stop(ra)


def cmp(chain: Chain, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_openssl_cmp(["-server", chain.ra.server, *map(str, args)], timeout=60, cwd=cwd)


def pbm() -> list[str]:
    return ["-ref", REF, "-secret", f"pass:{SECRET}", "-recipient", "/CN=fleet CA"]


def sig(chain: Chain, cert: Path, key: Path) -> list[str]:
    return ["-cert", str(cert), "-key", str(key), "-trusted", str(chain.root)]


def new_key(path: Path) -> Path:
    subprocess.run([OPENSSL, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)],
                   check=True, capture_output=True, timeout=10)
    return path


def ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# openssl cmp -> fleet ra serve -> fleet ca serve, every mode


def test_ir_pbm(chain: Chain, tmp_path: Path) -> None:
    key = new_key(tmp_path / "k.pem")
    ok(cmp(chain, "-cmd", "ir", *pbm(), "-newkey", key, "-subject", f"/CN=ra-pbm-{chain.mode}",
           "-certout", "c.pem", "-cacertsout", "capubs.pem", "-extracertsout", "extra.pem", cwd=tmp_path))
    if chain.mode != "replace":  # the CA saw the device's MAC: caPubs as for a direct ir
        capubs = x509.load_pem_x509_certificates((tmp_path / "capubs.pem").read_bytes())
        assert capubs == x509.load_pem_x509_certificates(chain.root.read_bytes())
    verify = subprocess.run([OPENSSL, "verify", "-CAfile", str(chain.root), "-untrusted", "extra.pem", "c.pem"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=10, check=False)
    assert verify.returncode == 0, verify.stderr


def test_ir_hmac_sha256_and_implicit_confirm(chain: Chain, tmp_path: Path) -> None:
    key = new_key(tmp_path / "k.pem")
    ok(cmp(chain, "-cmd", "ir", *pbm(), "-mac", "hmacWithSHA256", "-digest", "sha512", "-newkey", key,
           "-subject", "/CN=ra-pbm256", "-certout", "c.pem", "-implicit_confirm", "-rspout", "ip.der", cwd=tmp_path))
    assert messages.decode((tmp_path / "ip.der").read_bytes()).header.implicit_confirm


def test_ir_and_cr_signed(chain: Chain, test_pki: TestPki, tmp_path: Path) -> None:
    for command in ("ir", "cr"):
        key = new_key(tmp_path / f"{command}.key")
        ok(cmp(chain, "-cmd", command, *sig(chain, test_pki.client_crt, test_pki.client_key), "-newkey", key,
               "-subject", f"/CN=ra-signed-{command}", "-certout", f"{command}.pem", "-sans", "dev.example",
               cwd=tmp_path))
        cert = x509.load_pem_x509_certificate((tmp_path / f"{command}.pem").read_bytes())
        assert cert.subject.rfc4514_string() == f"CN=ra-signed-{command}"


def test_p10cr(chain: Chain, test_pki: TestPki, tmp_path: Path) -> None:
    ok(cmp(chain, "-cmd", "p10cr", *pbm(), "-csr", test_pki.new_csr, "-certout", "c.pem", cwd=tmp_path))
    assert x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes()).subject.rfc4514_string() == "CN=new"


def test_kur_then_rr_then_crl(chain: Chain, tmp_path: Path) -> None:
    key = new_key(tmp_path / "k.pem")
    ok(cmp(chain, "-cmd", "ir", *pbm(), "-newkey", key, "-subject", "/CN=ra-renewed", "-certout", "c.pem",
           cwd=tmp_path))
    new = new_key(tmp_path / "new.key")
    ok(cmp(chain, "-cmd", "kur", *sig(chain, tmp_path / "c.pem", key), "-newkey", new, "-certout", "u.pem",
           cwd=tmp_path))
    updated = tmp_path / "u.pem"
    ok(cmp(chain, "-cmd", "rr", *sig(chain, updated, new), "-oldcert", updated, "-revreason", "1", cwd=tmp_path))
    serial = x509.load_pem_x509_certificate(updated.read_bytes()).serial_number
    with urllib.request.urlopen(f"http://127.0.0.1:{chain.ca.port}/crl/issuing.crl", timeout=10) as rsp:
        crl = x509.load_der_x509_crl(rsp.read())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


@pytest.mark.parametrize("infotype", ["signKeyPairTypes", "caCerts", "currentCRL"])
def test_genm(chain: Chain, tmp_path: Path, infotype: str) -> None:
    result = cmp(chain, "-cmd", "genm", *pbm(), "-infotype", infotype, cwd=tmp_path)
    ok(result)
    assert "received GENP" in result.stderr + result.stdout


def test_refusals_carry_their_fail_info(chain: Chain, tmp_path: Path) -> None:
    key = new_key(tmp_path / "k.pem")
    common = ["-cmd", "ir", "-newkey", str(key), "-subject", "/CN=refused", "-certout", "c.pem",
              "-unprotected_errors"]
    wrong = cmp(chain, "-ref", REF, "-secret", "pass:wrong", *common, cwd=tmp_path)
    assert wrong.returncode != 0 and "badMessageCheck" in wrong.stdout + wrong.stderr
    ra_verified = cmp(chain, *pbm(), *common, "-popo", "0", cwd=tmp_path)  # a device may not claim raVerified
    assert ra_verified.returncode != 0 and "badPOP" in ra_verified.stdout + ra_verified.stderr


def test_parallel_clients_fill_batches(chain: Chain, tmp_path: Path) -> None:
    """Eight openssl processes at once (two batches' worth in nested mode), all enrolled."""
    key = new_key(tmp_path / "k.pem")
    procs = [
        subprocess.Popen([OPENSSL, "cmp", "-config", "", "-server", chain.ra.server, *pbm(), "-cmd", "ir",
                          "-newkey", str(key), "-subject", f"/CN=par-{chain.mode}-{i}", "-keep_alive", "0",
                          "-certout", str(tmp_path / f"c{i}.pem")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        for i in range(8)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outputs


# ---------------------------------------------------------------------------------------------
# Hostile envelopes at the CA itself, and an RA the CA does not trust


def _post(url: str, body: bytes) -> bytes:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/pkixcmp"})
    with urllib.request.urlopen(req, timeout=20) as rsp:
        assert rsp.status == 200
        return rsp.read()


def _signer(cred: Cred) -> SignatureProtector:
    certs = x509.load_pem_x509_certificates(cred.cert.read_bytes())
    key = serialization.load_pem_private_key(cred.key.read_bytes(), None)
    return SignatureProtector(key, certs[0], certs[1:])  # type: ignore[arg-type]


def _mac_ir(cn: str, secret: str = SECRET, tid: bytes | None = None) -> bytes:
    config = ClientConfig(MacProtector(secret.encode(), reference=REF.encode()))
    key = ec.generate_private_key(ec.SECP256R1())
    tx = ClientTransaction(config, CertRequest(BodyType.IR, key, subject=x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn)])), transaction_id=tid)
    return tx.start().data


def _envelope(cred: Cred, inner: list[bytes]) -> bytes:
    return wrap(inner, _signer(cred), transaction_id=os.urandom(16), sender_nonce=os.urandom(16), now=time.time())


def _error_fail(data: bytes) -> tuple[str, ...]:
    msg = messages.decode(data)
    assert isinstance(msg.body, ErrorMsgContent), msg.label
    return msg.body.status.fail_names


def test_hostile_envelopes_at_the_ca(ca: tuple[Proc, Path], ra_cred: Cred, tmp_path: Path) -> None:
    process, _ = ca
    stranger = make_ra(tmp_path, "Stranger RA")
    assert _error_fail(_post(process.url, _envelope(stranger, [_mac_ir("s")]))) == ("signerNotTrusted",)
    tid = os.urandom(16)
    duplicate = _envelope(ra_cred, [_mac_ir("d1", tid=tid), _mac_ir("d2"), _mac_ir("d3", tid=tid)])
    assert _error_fail(_post(process.url, duplicate)) == ("transactionIdInUse",)
    answer = messages.decode(_post(process.url, _envelope(ra_cred, [_mac_ir("g"), _mac_ir("b", secret="wrong")])))
    assert answer.body_type is BodyType.NESTED
    assert isinstance(answer.body, NestedMessageContent)
    inner = [messages.decode(m) for m in answer.body.messages]
    assert inner[0].body_type is BodyType.IP
    assert isinstance(inner[1].body, ErrorMsgContent) and inner[1].body.status.fail_names == ("badMessageCheck",)


def test_ra_the_ca_does_not_trust(ca: tuple[Proc, Path], test_pki: TestPki, tmp_path: Path) -> None:
    process, state = ca
    stranger = make_ra(tmp_path, "Untrusted RA")
    ra = start_ra(process.url, stranger, [test_pki.root_crt], mode="nested", upstream_trusted=state / "root-ca.pem")
    try:
        key = new_key(tmp_path / "k.pem")
        result = run_openssl_cmp(["-server", ra.server, "-cmd", "ir", *pbm(), "-newkey", str(key),
                                  "-subject", "/CN=behind-stranger", "-certout", "c.pem"], timeout=60, cwd=tmp_path)
        assert result.returncode != 0
        assert "signerNotTrusted" in result.stdout + result.stderr
        assert ra.proc.poll() is None
    finally:
        _stop(ra)


# ---------------------------------------------------------------------------------------------
# fleet's devices -> fleet ra serve -> OpenSSL's mock CA (pass-through)


def test_fleet_devices_through_the_ra_to_openssl_mock(openssl_mock, test_pki: TestPki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mock: OpenSSLMockServer = openssl_mock(poll_count=1, check_after=0)
    ra_cred = Cred(test_pki.server_crt, test_pki.server_key, test_pki.root_crt)
    ra = start_ra(mock.url, ra_cred, [test_pki.root_crt])
    try:
        server = f"http://127.0.0.1:{ra.port}/pkix/"
        for command, extra in (("ir", ["--subject", "/CN=via-ra", "--newkey", "new.key"]),
                               ("p10cr", ["--csr", str(test_pki.new_csr)])):
            if command == "ir":
                (tmp_path / "new.key").write_bytes(test_pki.new_key.read_bytes())
            result = subprocess.run(
                [sys.executable, "-m", "fleet.cli.main", "cmp", command, "--server", server, "--ref", REF,
                 "--secret", f"pass:{SECRET}", *extra, "--certout", f"{command}.pem"],
                capture_output=True, text=True, timeout=60, cwd=tmp_path, stdin=subprocess.DEVNULL, check=False)
            assert result.returncode == 0, result.stdout + result.stderr + mock.log()
            issued = x509.load_pem_x509_certificate((tmp_path / f"{command}.pem").read_bytes())
            assert issued == x509.load_pem_x509_certificate(test_pki.rsp_crt.read_bytes())
        assert ra.proc.poll() is None
    finally:
        _stop(ra)
