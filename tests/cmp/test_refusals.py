"""The CA's header checks, failInfo table and response forms (issue #19, first half), probed with
requests pyasn1 builds: RFC 9483 §3.1-3.3 and §3.5, RFC 9810 §5.2.3 and §7, RFC 9811.

Each refusal is checked for its body type, PKIStatus and exact failInfo bit, and for what it leaves
behind: nothing issued. The CA behind ``CmpServer`` is the real ``Authority``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import univ, useful
from pyasn1_alt_modules import rfc9480

from fleet.ca.authority import Authority
from fleet.cmp import messages
from fleet.cmp.messages import ACCEPTED, BodyType, CertRepMessage, CertResponse, FailInfo
from fleet.cmp.protection import MacProtector
from fleet.cmp.refusals import Refusal
from fleet.cmp.server import CmpServer, ServerConfig
from fleet.cmp.server_auth import response_pvno
from fleet.cmp.shared_secrets import SharedSecrets

from . import pyasn1_requests as P
from .test_server import craft, error_of, ir_body
from .test_server_auth import (
    REF,
    REJECTION,
    SECRET,
    certificates,
    enroll,
    make_server,
    name,
    new_key,
    request,
    send,
)

IMPLICIT_CONFIRM = "1.3.6.1.5.5.7.4.13"
CONFIRM_WAIT_TIME = "1.3.6.1.5.5.7.4.14"
NULL = encoder.encode(univ.Null(""))


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[Authority]:
    auth = Authority.open(tmp_path / "ca", base_url="http://127.0.0.1:9")
    yield auth
    auth.close()


@pytest.fixture
def server(authority: Authority) -> CmpServer:
    return make_server(authority)


def mac_ir(header: P.Header | None = None, mac: P.Mac | None = None, *, count: int = 1,
           cert_req_id: int = 0, kind: str = "ir") -> bytes:
    msg = P.new_message(kind)
    for _ in range(count):
        P.cert_request(msg, kind, new_key(), name("refusals"), cert_req_id=cert_req_id)
    return P.protect(msg, mac or P.Mac(SECRET, REF), header)


def generalized(when: datetime) -> bytes:
    return encoder.encode(useful.GeneralizedTime(when.strftime("%Y%m%d%H%M%SZ")))


def utc_time(when: datetime) -> bytes:
    return encoder.encode(useful.UTCTime(when.strftime("%y%m%d%H%M%SZ")))


def refused(server: CmpServer, authority: Authority, data: bytes, body: str, fail: str) -> P.Answer:
    """Send ``data``; the answer must be ``body`` with status rejection and exactly ``fail``,
    and nothing may have been issued."""
    before = certificates(authority)
    answer = send(server, data)
    assert (answer.body, answer.status, answer.fail) == (body, REJECTION, (fail,)), answer
    assert answer.certificate is None
    assert certificates(authority) == before
    return answer


# ---------------------------------------------------------------------------------------------
# The table (RFC 9810 §5.2.3)


def test_every_refusal_names_one_failinfo_bit() -> None:
    assert all(isinstance(r.fail, FailInfo) and r.fail.mask for r in Refusal)
    assert len({r.reason for r in Refusal}) == len(Refusal)  # no two members alias each other
    table = {r.name: r.fail.name for r in Refusal}
    # The bits the RFCs name for the refusals clients and conformance suites read.
    assert table["NO_TRANSACTION_ID"] == "badDataFormat"  # RFC 9483 §3.5
    assert table["NOT_DER"] == "badDataFormat"
    assert table["MAC_MISMATCH"] == table["SIGNATURE_INVALID"] == table["SIGNER_NOT_NAMED"] == "badMessageCheck"
    assert table["TRANSACTION_ID_IN_USE"] == "transactionIdInUse"
    assert table["OTHER_PROTECTION"] == "wrongIntegrity"
    assert table["RECIP_NONCE_IN_FIRST"] == table["WRONG_RECIP_NONCE"] == "badRecipientNonce"
    assert table["UNKNOWN_ALGORITHM"] == "badAlg"


def test_the_engine_refuses_only_through_the_table() -> None:
    """No Refuse or Rejected in the CMP server names a failInfo bit by itself."""
    root = Path(__file__).resolve().parents[2] / "fleet" / "cmp"
    for module in ("server.py", "server_auth.py", "x509parts.py"):
        text = (root / module).read_text()
        calls = re.findall(r"(?:Refuse|Rejected)\((?:[^()]|\([^()]*\))*\)", text, re.DOTALL)
        assert calls, module
        offenders = [c for c in calls if "FailInfo." in c]
        assert offenders == [], (module, offenders)


# ---------------------------------------------------------------------------------------------
# Header checks (RFC 9483 §3.1, §3.5)


def test_missing_transaction_id_is_bad_data_format(server: CmpServer, authority: Authority) -> None:
    refused(server, authority, mac_ir(P.Header(transaction_id=b"")), "error", "badDataFormat")


@pytest.mark.parametrize("signed", [False, True])
def test_missing_message_time_is_bad_time(server: CmpServer, authority: Authority, signed: bool) -> None:
    header = P.Header(message_time=False)
    if signed:
        device = enroll(server, "timeless")
        data = request("cr", device, authority, header=header)
    else:
        data = mac_ir(header)
    refused(server, authority, data, "error", "badTime")


def test_message_time_may_be_optional_by_policy(authority: Authority) -> None:
    """For devices without a clock the operator can let requests omit messageTime."""
    lenient = make_server(authority, require_message_time=False)
    assert send(lenient, mac_ir(P.Header(message_time=False))).status == 0


@pytest.mark.parametrize("kind", ["ir", "p10cr", "rr", "genm"])
def test_first_message_with_recip_nonce(server: CmpServer, authority: Authority, kind: str) -> None:
    device = enroll(server, "nonce")
    data = request(kind, device, authority, header=P.Header(recip_nonce=b"\x01" * 16))
    refused(server, authority, data, "error", "badRecipientNonce")
    assert authority.store.get(device.cert.serial_number).status.value == "issued"  # the rr revoked nothing


@pytest.mark.parametrize(
    ("label", "info", "fail"),
    [
        ("implicitConfirm with an INTEGER", ((IMPLICIT_CONFIRM, encoder.encode(univ.Integer(1))),), "badRequest"),
        ("implicitConfirm without a value", ((IMPLICIT_CONFIRM, None),), "badRequest"),
        ("confirmWaitTime as UTCTime", ((CONFIRM_WAIT_TIME, utc_time(datetime.now(UTC))),), "badDataFormat"),
        ("confirmWaitTime as INTEGER", ((CONFIRM_WAIT_TIME, encoder.encode(univ.Integer(500))),), "badDataFormat"),
        ("both", ((IMPLICIT_CONFIRM, NULL), (CONFIRM_WAIT_TIME, generalized(datetime.now(UTC)))), "badRequest"),
    ],
)
def test_general_info_values(server: CmpServer, authority: Authority, label: str,
                             info: tuple[tuple[str, bytes | None], ...], fail: str) -> None:
    refused(server, authority, mac_ir(P.Header(general_info=info)), "error", fail)


def test_unknown_signature_algorithm_is_bad_alg(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "alg")
    for oid in ("1.2.840.10045.4.3.1", "1.2.3.4.5"):  # ecdsa-with-SHA224 (not offered), made up
        refused(server, authority, request("cr", device, authority, header=P.Header(protection_oid=oid)),
                "error", "badAlg")


def test_unknown_mac_algorithm_is_bad_alg(server: CmpServer, authority: Authority) -> None:
    """hmacWithSHA256 alone is no MSG_MAC_ALG of the profile (RFC 9483 §3.2, RFC 9481 §6.1)."""
    msg = P.new_message("ir")
    P.cert_request(msg, "ir", new_key(), name("hmac"))
    h = msg["header"]
    P.protect(msg, P.Mac(SECRET, REF))  # fills the header; protectionAlg replaced below
    h["protectionAlg"]["algorithm"] = univ.ObjectIdentifier(P.HMAC_SHA256)
    h["protectionAlg"]["parameters"] = NULL
    refused(server, authority, encoder.encode(msg), "error", "badAlg")


def test_protection_certificate_must_come_first(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "order")
    signed = device.signed(authority)
    own = device.cert.public_bytes(P._DER)
    signed.extra_certs_override = (*signed.extra, own) if signed.extra else (authority.hierarchy.root_der, own)
    msg = P.new_message("cr")
    P.cert_request(msg, "cr", new_key(), name("x"))
    refused(server, authority, P.protect(msg, signed), "error", "badMessageCheck")


def test_signed_request_without_extra_certs(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "bare")
    signed = device.signed(authority)
    signed.extra_certs_override = ()
    msg = P.new_message("cr")
    P.cert_request(msg, "cr", new_key(), name("x"))
    refused(server, authority, P.protect(msg, signed), "error", "badMessageCheck")


def test_chain_the_ca_cannot_build_is_signer_not_trusted(authority: Authority) -> None:
    """A signer under another PKI's intermediate, sent without it: no path to the trusted root."""
    now = datetime.now(UTC)
    root_key = new_key()
    root = (x509.CertificateBuilder().subject_name(name("other root")).issuer_name(name("other root"))
            .public_key(root_key.public_key()).serial_number(1)
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256()))
    sub_key, key = new_key(), new_key()
    sub = (x509.CertificateBuilder().subject_name(name("other sub")).issuer_name(root.subject)
           .public_key(sub_key.public_key()).serial_number(2)
           .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .sign(root_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name("other leaf")).issuer_name(sub.subject)
            .public_key(key.public_key()).serial_number(3)
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(sub_key, hashes.SHA256()))
    server = make_server(authority, trusted=[root])
    msg = P.new_message("cr")
    P.cert_request(msg, "cr", new_key(), name("x"))
    refused(server, authority, P.protect(msg, P.Signed(key, leaf)), "error", "signerNotTrusted")
    # With the complete chain in extraCerts the same request is served.
    msg = P.new_message("cr")
    P.cert_request(msg, "cr", new_key(), name("x"))
    assert send(server, P.protect(msg, P.Signed(key, leaf, (sub.public_bytes(P._DER),)))).status == 0


@pytest.mark.parametrize(("pvno", "answer_pvno"), [(1, 2), (4, 3)])
def test_unsupported_version(server: CmpServer, authority: Authority, pvno: int, answer_pvno: int) -> None:
    """RFC 9810 §7: unsupportedVersion, in the supported version nearest the request's."""
    answer = refused(server, authority, mac_ir(P.Header(pvno=pvno)), "error", "unsupportedVersion")
    assert answer.pvno == answer_pvno


# ---------------------------------------------------------------------------------------------
# Responses (RFC 9483 §4.1.1, §3.1; RFC 9810 §7)


def test_granted_implicit_confirm_is_in_the_response(server: CmpServer, authority: Authority) -> None:
    ip = send(server, mac_ir(P.Header(general_info=((IMPLICIT_CONFIRM, NULL),))))
    assert (ip.body, ip.status) == ("ip", 0)
    assert ip.general_info == ((IMPLICIT_CONFIRM, NULL),)
    # Not asked for: the certificate waits for certConf until confirmWaitTime, a GeneralizedTime.
    ip = send(server, mac_ir())
    assert [oid for oid, _ in ip.general_info] == [CONFIRM_WAIT_TIME]
    decoder.decode(ip.general_info[0][1], asn1Spec=useful.GeneralizedTime())
    # Asked for but not granted by policy: confirmWaitTime, never implicitConfirm.
    strict = authority.server(config=ServerConfig(grant_implicit_confirm=False), secrets=SharedSecrets({REF: SECRET}))
    ip = send(strict, mac_ir(P.Header(general_info=((IMPLICIT_CONFIRM, NULL),))))
    assert [oid for oid, _ in ip.general_info] == [CONFIRM_WAIT_TIME]


def _pvno3_cert_conf(server: CmpServer, ip: P.Answer, pvno: int) -> P.Answer:
    conf = P.new_message("certConf")
    P.cert_conf(conf, ip.certificate)
    status = conf["body"]["certConf"][0]
    if pvno == 3:  # hashAlg (RFC 9810 §5.3.18), a CMP v3 feature
        status["hashAlg"] = status["hashAlg"].clone()
        status["hashAlg"]["algorithm"] = univ.ObjectIdentifier(P.SHA256)
    header = P.Header(transaction_id=ip.transaction_id, recip_nonce=ip.sender_nonce, pvno=pvno)
    return send(server, P.protect(conf, P.Mac(SECRET, REF), header))


@pytest.mark.parametrize("pvno", [2, 3])
def test_response_version_follows_the_request(server: CmpServer, pvno: int) -> None:
    ip = send(server, mac_ir(P.Header(pvno=pvno)))
    assert (ip.body, ip.status, ip.pvno) == ("ip", 0, pvno)
    done = _pvno3_cert_conf(server, ip, pvno)
    assert (done.body, done.pvno) == ("pkiconf", pvno)


@pytest.mark.parametrize(("kind", "response"), [("ir", "ip"), ("cr", "cp")])
def test_second_cert_req_msg_is_refused_in_the_response(server: CmpServer, authority: Authority,
                                                      kind: str, response: str) -> None:
    answer = refused(server, authority, mac_ir(count=2, kind=kind), response, "badRequest")
    assert answer.cert_req_id == 0


def test_bad_cert_req_id_is_refused_in_the_response(server: CmpServer, authority: Authority) -> None:
    answer = refused(server, authority, mac_ir(cert_req_id=1), "ip", "badRequest")
    assert answer.cert_req_id == 1
    device = enroll(server, "kur")
    msg = P.new_message("kur")
    P.cert_request(msg, "kur", new_key(), None, cert_req_id=5)
    refused(server, authority, P.protect(msg, device.signed(authority)), "kup", "badRequest")


def test_two_rev_details_are_refused_in_an_rp(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "twice")
    msg = P.new_message("rr")
    P.rr(msg, device.cert.issuer, device.cert.serial_number)
    P.rr(msg, device.cert.issuer, device.cert.serial_number)
    refused(server, authority, P.protect(msg, device.signed(authority)), "rp", "badRequest")
    assert authority.store.get(device.cert.serial_number).status.value == "issued"


def _mac_verifies(data: bytes, mac: P.Mac) -> bool:
    msg, _ = decoder.decode(data, asn1Spec=rfc9480.PKIMessage())
    part = rfc9480.ProtectedPart()
    part["header"] = msg["header"]
    part["body"] = msg["body"]
    expected = hmac.new(mac.key(), encoder.encode(part), hashlib.sha256).digest()
    return msg["protection"].asOctets() == expected


@pytest.mark.parametrize(
    "header",
    [P.Header(recip_nonce=b"\x02" * 16), P.Header(sender=b"\x82\x0bdev.example"), P.Header(message_time=False)],
    ids=["recipNonce", "dNSName sender", "no messageTime"],
)
def test_mac_protected_errors_reuse_the_request_mac(server: CmpServer, authority: Authority,
                                                    header: P.Header) -> None:
    """RFC 9483 §3.2: an error to a request whose MAC verified is MAC-protected with the same
    algorithm, parameters (salt, iteration count) and secret."""
    mac = P.Mac(SECRET, REF, iterations=1000)
    data = mac_ir(header, mac)
    reply = server.handle(data, time.time())
    answer = P.Answer.read(reply.data)
    assert (answer.body, answer.status) == ("error", REJECTION)
    request_alg = encoder.encode(decoder.decode(data, asn1Spec=rfc9480.PKIMessage())[0]["header"]["protectionAlg"])
    assert answer.protection_alg == request_alg
    assert _mac_verifies(reply.data, mac)


def test_wrong_mac_is_answered_by_signature(server: CmpServer, authority: Authority) -> None:
    """A MAC that does not verify is no basis to protect the answer with: the CA signs it."""
    data = mac_ir(mac=P.Mac(b"not the secret", REF))
    answer = refused(server, authority, data, "error", "badMessageCheck")
    assert answer.protection_alg != encoder.encode(
        decoder.decode(data, asn1Spec=rfc9480.PKIMessage())[0]["header"]["protectionAlg"])


# ---------------------------------------------------------------------------------------------
# Iteration caps per algorithm, as the client has them


def test_pbm_iteration_cap_is_the_clients(server: CmpServer, authority: Authority) -> None:
    assert send(server, mac_ir(mac=P.Mac(SECRET, REF, iterations=20_000))).status == 0
    refused(server, authority, mac_ir(mac=P.Mac(SECRET, REF, iterations=100_001)), "error", "badAlg")
    capped = make_server(authority, max_iterations=10_000)
    refused(capped, authority, mac_ir(mac=P.Mac(SECRET, REF, iterations=20_000)), "error", "badAlg")


def test_a_response_carrying_enveloped_data_is_version_3() -> None:
    """RFC 9810 §7: EnvelopedData (a centrally generated private key) needs CMP v3 whatever the
    request's version; otherwise the response takes the request's."""
    plain = CertRepMessage((CertResponse(0, ACCEPTED, b"cert"),))
    with_key = CertRepMessage((CertResponse(0, ACCEPTED, b"cert", private_key=b"enveloped"),))
    assert [response_pvno(v, plain) for v in (1, 2, 3, 4)] == [2, 2, 3, 3]
    assert response_pvno(2, with_key) == 3


def test_pbmac1_iteration_cap_is_the_clients(server: CmpServer) -> None:
    """PBMAC1 (fleet's own encoder here: the pyasn1 helper writes PasswordBasedMac only) is
    capped at 1,000,000 as the client caps it, not at PasswordBasedMac's 100,000."""
    now = time.time()
    served = MacProtector(SECRET, reference=REF, pbmac1=True, iterations=200_000)
    assert messages.decode(server.handle(craft(served, BodyType.IR, ir_body(new_key())), now).data).label == "ip"
    above = MacProtector(SECRET, reference=REF, pbmac1=True, iterations=1_000_001)
    status = error_of(server.handle(craft(above, BodyType.IR, ir_body(new_key())), now).data)
    assert (status.status, status.fail_names) == (REJECTION, ("badAlg",))
