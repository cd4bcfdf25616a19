"""The OpenSSL peer harness works, and the captured OpenSSL corpus is sound.

The corpus checks decode every file with pyasn1-alt-modules (an independent codec, not fleet's) and
verify every message's protection with the saved PKI, so codec tests can trust these bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import stat
import subprocess
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from openssl_peer import (
    OPENSSL,
    OpenSSLMockServer,
    PeerError,
    TestPki,
    make_test_pki,
    pbm_client_args,
    run_openssl_cmp,
    sig_client_args,
)
from pyasn1.codec.der.decoder import decode
from pyasn1.codec.der.encoder import encode
from pyasn1_alt_modules import rfc9480

CORPUS = Path(__file__).parent / "data" / "openssl"
CORPUS_FILES = sorted(CORPUS.glob("*.der"))
CORPUS_PKI = CORPUS / "pki"
MockFactory = Callable[..., OpenSSLMockServer]


# ---------------------------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------------------------


def test_make_test_pki_chains_to_root_and_keys_are_private(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    for cert in (pki.server_crt, pki.client_crt, pki.rsp_crt):
        proc = subprocess.run([OPENSSL, "verify", "-CAfile", str(pki.root_crt), str(cert)],
                              check=False, capture_output=True, text=True, timeout=10)
        assert proc.returncode == 0, proc.stderr
    for key in (pki.root_key, pki.server_key, pki.client_key, pki.new_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # rsp.crt certifies new.key: that is what lets a client go on with kur/rr after an ir.
    rsp_key = x509.load_pem_x509_certificate(pki.rsp_crt.read_bytes()).public_key()
    csr_key = x509.load_pem_x509_csr(pki.new_csr.read_bytes()).public_key()
    assert rsp_key == csr_key


def test_ir_with_pbm_against_mock_writes_certificate(
    openssl_mock: MockFactory, test_pki: TestPki, tmp_path: Path
) -> None:
    srv = openssl_mock()
    assert srv.url == f"http://127.0.0.1:{srv.port}/pkix/"
    cert_out, capubs = tmp_path / "out.crt", tmp_path / "capubs.pem"
    proc = run_openssl_cmp([
        "-cmd", "ir", *pbm_client_args(test_pki, srv.server), "-newkey", test_pki.new_key,
        "-subject", "/CN=Enrolled Device", "-certout", cert_out, "-cacertsout", capubs,
        "-keep_alive", "0",
    ])
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\nserver:\n{srv.log()}"
    enrolled = x509.load_pem_x509_certificate(cert_out.read_bytes())
    assert enrolled == x509.load_pem_x509_certificate(test_pki.rsp_crt.read_bytes())
    assert capubs.read_bytes().strip() == test_pki.root_crt.read_bytes().strip()


def test_ir_with_signature_and_polling_options(
    openssl_mock: MockFactory, test_pki: TestPki, tmp_path: Path
) -> None:
    srv = openssl_mock(poll_count=1, check_after=0)
    proc = run_openssl_cmp([
        "-cmd", "ir", *sig_client_args(test_pki, srv.server), "-newkey", test_pki.new_key,
        "-subject", "/CN=Enrolled Device", "-certout", tmp_path / "out.crt", "-keep_alive", "0",
    ])
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\nserver:\n{srv.log()}"
    assert "received IP" in proc.stdout and "POLLREQ" in proc.stdout, proc.stdout
    assert (tmp_path / "out.crt").exists()


def test_mock_options_reach_the_server(
    openssl_mock: MockFactory, test_pki: TestPki, tmp_path: Path
) -> None:
    srv = openssl_mock(pkistatus=2, failure=9, statusstring="nope from mock")
    proc = run_openssl_cmp([
        "-cmd", "ir", *pbm_client_args(test_pki, srv.server), "-newkey", test_pki.new_key,
        "-subject", "/CN=x", "-certout", tmp_path / "out.crt", "-keep_alive", "0",
    ])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "rejection" in out and "badPOP" in out and "nope from mock" in out, out
    assert not (tmp_path / "out.crt").exists()


def test_mock_stops_on_exit_and_can_run_side_by_side(test_pki: TestPki) -> None:
    with OpenSSLMockServer(test_pki) as a, OpenSSLMockServer(test_pki) as b:
        assert a.running and b.running and a.port != b.port
        port = a.port
    assert not a.running and not b.running
    assert repr(a) == "<OpenSSLMockServer stopped>"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_mock_that_cannot_start_reports_why(test_pki: TestPki) -> None:
    srv = OpenSSLMockServer(test_pki, attempts=2, rsp_cert=test_pki.dir / "missing.crt")
    with pytest.raises(PeerError, match="did not start after 2 tries"):
        srv.start()
    assert not srv.running


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------

EXPECTED_FLOWS = {
    "ir_pbm", "ir_pbm_hmacsha256", "ir_sig", "ir_sig_sha384", "cr", "kur", "p10cr", "rr", "genm",
    "ir_implicit", "ir_poll", "ir_error", "ir_error_unprot", "ir_rejected",
}


def _parts(path: Path) -> tuple[str, str, str]:
    """`ir_poll.rsp1.pollRep.der` -> ('ir_poll', 'rsp1', 'pollRep')."""
    flow, step, body, _ = path.name.split(".")
    return flow, step, body


def _decode(path: Path) -> rfc9480.PKIMessage:
    msg, rest = decode(path.read_bytes(), asn1Spec=rfc9480.PKIMessage())
    assert not rest, f"{path.name}: {len(rest)} trailing bytes"
    return msg


def test_corpus_is_complete_small_and_documented() -> None:
    flows = {_parts(p)[0] for p in CORPUS_FILES}
    assert flows == EXPECTED_FLOWS
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert total < 300_000
    readme = (CORPUS / "README.md").read_text()
    assert all(f"`{p.name}`" in readme for p in CORPUS_FILES)
    for name in ("root.crt", "server.crt", "server.key", "client.crt", "client.key", "new.key",
                 "rsp.crt", "secret.txt"):
        assert (CORPUS_PKI / name).is_file(), name


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_corpus_file_is_der_for_openssl(path: Path) -> None:
    proc = subprocess.run([OPENSSL, "asn1parse", "-inform", "DER", "-in", str(path)],
                          check=False, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("    0:d=0"), proc.stdout[:200]


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_corpus_file_decodes_with_pyasn1_as_named(path: Path) -> None:
    msg = _decode(path)
    assert msg["body"].getName() == _parts(path)[2]
    assert encode(msg) == path.read_bytes(), "pyasn1 re-encoding differs: not DER?"
    assert int(msg["header"]["pvno"]) == 2


def _secret() -> bytes:
    fields = dict(line.split("=", 1) for line in (CORPUS_PKI / "secret.txt").read_text().split())
    return fields["secret"].encode()


def _tlv(buf: bytes, pos: int) -> tuple[int, int]:
    """(content start, end) of the DER TLV at `pos` (one-byte tags only, enough here)."""
    length, pos = buf[pos + 1], pos + 2
    if length & 0x80:
        n = length & 0x7F
        length, pos = int.from_bytes(buf[pos:pos + n], "big"), pos + n
    return pos, pos + length


def _protected_part(der: bytes) -> bytes:
    """DER of ProtectedPart ::= SEQUENCE { header, body }, cut from the message's own bytes."""
    start, _ = _tlv(der, 0)
    _, header_end = _tlv(der, start)
    _, body_end = _tlv(der, header_end)
    content = der[start:body_end]
    n = len(content)
    if n < 0x80:
        return b"\x30" + bytes([n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\x30" + bytes([0x80 | len(size)]) + size + content


_HASHES = {
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
_HMACS = {"1.3.6.1.5.5.8.1.2": "sha1", "1.2.840.113549.2.9": "sha256"}
_ECDSA = {"1.2.840.10045.4.3.2": hashes.SHA256(), "1.2.840.10045.4.3.3": hashes.SHA384()}
_PBM = "1.2.840.113533.7.66.13"


def _verify_pbm(msg: rfc9480.PKIMessage, der: bytes) -> None:
    """RFC 4210 5.1.3.1: key = OWF^iterationCount(secret||salt), MAC = HMAC(key, ProtectedPart)."""
    params, _ = decode(msg["header"]["protectionAlg"]["parameters"],
                       asn1Spec=rfc9480.PBMParameter())
    owf = _HASHES[str(params["owf"]["algorithm"])]
    key = _secret() + bytes(params["salt"])
    for _ in range(int(params["iterationCount"])):
        key = hashlib.new(owf, key).digest()
    mac = hmac.new(key, _protected_part(der), _HMACS[str(params["mac"]["algorithm"])]).digest()
    assert mac == msg["protection"].asOctets(), "PBM does not verify with the corpus secret"


def _verify_signature(msg: rfc9480.PKIMessage, der: bytes) -> str:
    """Verify with the first extraCert (OpenSSL puts the signer there); return its CN."""
    signer = x509.load_der_x509_certificate(encode(msg["extraCerts"][0]))
    known = {x509.load_pem_x509_certificate((CORPUS_PKI / name).read_bytes())
             for name in ("server.crt", "client.crt", "rsp.crt")}
    assert signer in known, "signer is not a certificate of the corpus PKI"
    algorithm = _ECDSA[str(msg["header"]["protectionAlg"]["algorithm"])]
    public_key = signer.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(msg["protection"].asOctets(), _protected_part(der), ec.ECDSA(algorithm))
    return signer.subject.rfc4514_string()


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_corpus_protection_verifies_with_saved_pki(path: Path) -> None:
    der = path.read_bytes()
    msg = _decode(path)
    flow, step, _ = _parts(path)
    if not msg["header"]["protectionAlg"].isValue:
        assert (flow, step) == ("ir_error_unprot", "rsp0"), "only that response is unprotected"
        assert not msg["protection"].isValue
        return
    if str(msg["header"]["protectionAlg"]["algorithm"]) == _PBM:
        _verify_pbm(msg, der)
        assert bytes(msg["header"]["senderKID"]) == b"1234"  # -ref / -srv_ref
        return
    signer = _verify_signature(msg, der)
    if step.startswith("rsp"):
        assert signer == "CN=server"
    else:
        assert signer == ("CN=new" if flow in ("kur", "rr") else "CN=client")


@pytest.mark.parametrize(
    ("name", "sender"),
    [("ir_pbm.req0.ir.der", b"Enrolled Device"), ("ir_sig.rsp0.ip.der", b"server")],
)
def test_corpus_protection_check_rejects_a_flipped_bit(name: str, sender: bytes) -> None:
    """The verifier above is not vacuous: one changed bit in the header's sender name fails it."""
    der = bytearray((CORPUS / name).read_bytes())
    der[der.index(sender)] ^= 0x01
    msg, _ = decode(bytes(der), asn1Spec=rfc9480.PKIMessage())
    verify = _verify_pbm if "pbm" in name else _verify_signature
    with pytest.raises((AssertionError, InvalidSignature)):
        verify(msg, bytes(der))


def test_corpus_transactions_are_consistent() -> None:
    """Within a flow: one transactionID; each response's recipNonce is its request's senderNonce."""
    by_flow: dict[str, dict[str, rfc9480.PKIMessage]] = defaultdict(dict)
    for path in CORPUS_FILES:
        flow, step, _ = _parts(path)
        by_flow[flow][step] = _decode(path)
    for flow, steps in by_flow.items():
        assert len({bytes(m["header"]["transactionID"]) for m in steps.values()}) == 1, flow
        for step, msg in steps.items():
            if step.startswith("rsp"):
                req = steps[f"req{step[3:]}"]
                assert bytes(msg["header"]["recipNonce"]) == bytes(req["header"]["senderNonce"]), \
                    f"{flow} {step}"


def test_corpus_content_matches_the_flows() -> None:
    """Spot checks that the mock options took effect, read with pyasn1-alt-modules."""
    rejected = _decode(CORPUS / "ir_rejected.rsp0.ip.der")["body"]["ip"]["response"][0]["status"]
    assert int(rejected["status"]) == 2  # rejection
    assert rejected["failInfo"][9] == 1  # badPOP
    waiting = _decode(CORPUS / "ir_poll.rsp0.ip.der")["body"]["ip"]["response"][0]["status"]
    assert int(waiting["status"]) == 3  # waiting
    poll = _decode(CORPUS / "ir_poll.rsp1.pollRep.der")["body"]["pollRep"][0]
    assert int(poll["checkAfter"]) == 0
    implicit = _decode(CORPUS / "ir_implicit.rsp0.ip.der")["header"]["generalInfo"]
    assert any(str(itav["infoType"]) == "1.3.6.1.5.5.7.4.13" for itav in implicit)
    genm = _decode(CORPUS / "genm.req0.genm.der")["body"]["genm"]
    assert str(genm[0]["infoType"]) == "1.3.6.1.5.5.7.4.2"  # signKeyPairTypes
    rr = _decode(CORPUS / "rr.req0.rr.der")["body"]["rr"][0]
    assert rr["certDetails"]["serialNumber"].isValue
    issued = _decode(CORPUS / "ir_pbm.rsp0.ip.der")["body"]["ip"]["response"][0]
    # pyasn1-alt-modules models CMPCertificate as a plain Certificate, not a CHOICE with
    # x509v3PKCert, and encode() of this component keeps its explicit [0] tag: strip it.
    wrapped = encode(issued["certifiedKeyPair"]["certOrEncCert"]["certificate"])
    assert wrapped[0] == 0xA0
    start, end = _tlv(wrapped, 0)
    rsp_crt = x509.load_pem_x509_certificate((CORPUS_PKI / "rsp.crt").read_bytes())
    assert x509.load_der_x509_certificate(wrapped[start:end]) == rsp_crt
