"""Cross-certification (ccr/ccp, RFC 9810 §5.3.11 and Appendix D.6) by the embedded CA, requests
written by pyasn1-alt-modules: a CA the operator trusts gets a cross certificate for a valid
request; malformed requests and untrusted requesters are refused with the RFC's failInfo."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from fleet.ca.authority import Authority
from fleet.ca.store import CertRecordStatus
from fleet.cmp.server import CmpServer

from . import pyasn1_requests as P
from .foreign_pki import Issued, certificate, cn, foreign_pki
from .test_server_auth import REF, REJECTION, SECRET, enroll, make_server, send

ACCEPTED = 0


@pytest.fixture
def authority(tmp_path: Path):
    auth = Authority.open(tmp_path / "ca", base_url="http://127.0.0.1:9")
    yield auth
    auth.close()


@pytest.fixture
def pki() -> tuple[Issued, Issued, Issued]:
    return foreign_pki()


@pytest.fixture
def server(authority: Authority, pki: tuple[Issued, Issued, Issued]) -> CmpServer:
    return make_server(authority, trusted=(pki[0].cert,))


def ccr(server: CmpServer, authority: Authority, signer: P.Signed | P.Mac, key=None, **kw: object) -> P.Answer:
    msg = P.new_message("ccr")
    P.ccr(msg, key or ec.generate_private_key(ec.SECP256R1()), cn("Other Operator Sub CA"),
          authority.hierarchy.issuing.subject, **kw)  # type: ignore[arg-type]
    return send(server, P.protect(msg, signer))


def test_a_trusted_ca_gets_a_cross_certificate(server: CmpServer, authority: Authority,
                                               pki: tuple[Issued, Issued, Issued]) -> None:
    root = pki[0]
    key = ec.generate_private_key(ec.SECP256R1())
    start = datetime.now(UTC).replace(microsecond=0)  # (a start before the issuing CA's is moved up to it)
    end = start + timedelta(days=90)
    ccp = ccr(server, authority, P.Signed(root.key, root.cert), key, validity=(start, end))
    assert (ccp.body, ccp.status) == ("ccp", ACCEPTED), ccp
    cert = x509.load_der_x509_certificate(ccp.certificate)
    assert cert.subject == cn("Other Operator Sub CA")
    assert cert.issuer == authority.hierarchy.issuing.subject
    assert cert.public_key() == key.public_key()
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, end)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    cert.verify_directly_issued_by(authority.hierarchy.issuing)
    # Confirmed like any certificate.
    conf = P.new_message("certConf")
    P.cert_conf(conf, ccp.certificate)
    header = P.Header(transaction_id=ccp.transaction_id, recip_nonce=ccp.sender_nonce)
    assert send(server, P.protect(conf, P.Signed(root.key, root.cert), header)).body == "pkiconf"
    assert authority.store.get(cert.serial_number).status is CertRecordStatus.ISSUED


def _count(authority: Authority) -> int:
    return sum(authority.store.counts_by_status().values())


def test_untrusted_requesters_are_not_authorized(server: CmpServer, authority: Authority,
                                                 pki: tuple[Issued, Issued, Issued]) -> None:
    _, ra, ee = pki
    device = enroll(server, "device")
    stranger = certificate("Stranger CA", None, ca=True)
    before = _count(authority)
    for what, signer in (("MAC", P.Mac(SECRET, REF)), ("foreign end entity", P.Signed(ee.key, ee.cert)),
                         ("foreign RA (no CA)", P.Signed(ra.key, ra.cert)),
                         ("this CA's end entity", device.signed(authority))):
        answer = ccr(server, authority, signer)
        assert (answer.body, answer.status, answer.fail) == ("error", REJECTION, ("notAuthorized",)), what
    # A CA nobody configured: its signature does not chain to a trust anchor at all.
    answer = ccr(server, authority, P.Signed(stranger.key, stranger.cert))
    assert (answer.status, answer.fail) == (REJECTION, ("signerNotTrusted",))
    assert _count(authority) == before


@pytest.mark.parametrize(("case", "kw", "fail"), [
    ("version v2", {"version": 1}, "badCertTemplate"),
    ("no version", {"leave_out": ("version",)}, "badCertTemplate"),
    ("no signingAlg", {"leave_out": ("signingAlg",)}, "badCertTemplate"),
    ("no validity", {"leave_out": ("validity",)}, "badCertTemplate"),
    ("no issuer", {"leave_out": ("issuer",)}, "badCertTemplate"),
    ("no subject", {"leave_out": ("subject",)}, "badCertTemplate"),
    ("no publicKey", {"leave_out": ("publicKey",)}, "badCertTemplate"),
    ("validity ended", {"validity": (datetime(2020, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC))},
     "badCertTemplate"),
    ("no POP", {"popo": None}, "badPOP"),
    ("raVerified", {"popo": "raVerified"}, "badPOP"),
])
def test_malformed_requests(server: CmpServer, authority: Authority, pki: tuple[Issued, Issued, Issued],
                            case: str, kw: dict, fail: str) -> None:
    root = pki[0]
    answer = ccr(server, authority, P.Signed(root.key, root.cert), **kw)
    assert (answer.body, answer.status, answer.fail, answer.certificate) == ("ccp", REJECTION, (fail,), None), case
    assert _count(authority) == 0


def test_non_signing_key_and_bad_pop(server: CmpServer, authority: Authority,
                                     pki: tuple[Issued, Issued, Issued]) -> None:
    root = pki[0]
    signer = P.Signed(root.key, root.cert)
    answer = ccr(server, authority, signer, x25519.X25519PrivateKey.generate())
    assert (answer.body, answer.status, answer.fail) == ("ccp", REJECTION, ("badCertTemplate",))
    # A POP signed by another key than the one in the template.
    msg = P.new_message("ccr")
    P.ccr(msg, ec.generate_private_key(ec.SECP256R1()), cn("Sub CA"), authority.hierarchy.issuing.subject)
    other = P.new_message("ccr")
    P.ccr(other, ec.generate_private_key(ec.SECP256R1()), cn("Sub CA"), authority.hierarchy.issuing.subject)
    msg["body"]["ccr"][0]["popo"] = other["body"]["ccr"][0]["popo"]
    answer = send(server, P.protect(msg, signer))
    assert (answer.body, answer.status, answer.fail) == ("ccp", REJECTION, ("badPOP",))
    assert _count(authority) == 0
