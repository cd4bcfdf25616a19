"""The sans-I/O CMP server role, driven by fleet's own ClientTransaction and by hand-made bad messages.

No sockets: request bytes go to ``CmpServer.handle`` and its bytes back to the client machine.
The CA behind it is real (``fleet.ca.authority`` on a temporary state directory).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from fleet.ca.authority import Authority
from fleet.ca.store import CertRecordStatus
from fleet.cmp import der, genm, messages, oids
from fleet.cmp.client import ClientConfig, ClientTransaction, Done, Send
from fleet.cmp.errors import RequestRejected, ServerError
from fleet.cmp.messages import (
    BodyType,
    CertConfirmContent,
    CertRepMessage,
    ErrorMsgContent,
    FailInfo,
    PKIHeader,
    PKIStatus,
    PollRepContent,
)
from fleet.cmp.messages import (
    CertStatus as CmpCertStatus,
)
from fleet.cmp.protection import MacProtector, SignatureProtector
from fleet.cmp.requests import (
    CertRequest,
    CsrRequest,
    GeneralRequest,
    RevocationRequest,
    build_body,
)
from fleet.cmp.server import CmpServer, ServerConfig, TxState
from fleet.cmp.shared_secrets import SharedSecrets, derive_device_secret
from fleet.cmp.trust import TrustStore, load_cert

SECRET = b"test-secret-1234"
REF = b"device-ref-1"


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    auth = Authority.open(tmp_path / "ca", base_url="http://127.0.0.1:9")
    yield auth
    auth.close()


def make_server(authority: Authority, **config: object) -> CmpServer:
    vendor = config.pop("vendor", ())
    return authority.server(
        config=ServerConfig(**config),  # type: ignore[arg-type]
        secrets=SharedSecrets({REF: SECRET}, master=b"master-secret"),
        vendor=vendor,  # type: ignore[arg-type]
    )


@pytest.fixture
def server(authority: Authority) -> CmpServer:
    return make_server(authority, grant_implicit_confirm=True)


def mac_config(authority: Authority, **kw: object) -> ClientConfig:
    protector = MacProtector(kw.pop("secret", SECRET), reference=kw.pop("ref", REF))  # type: ignore[arg-type]
    return ClientConfig(protector=protector, trust=TrustStore([authority.hierarchy.root]), **kw)  # type: ignore[arg-type]


def sig_config(authority: Authority, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, **kw: object) -> ClientConfig:
    chain = [c for c in authority.hierarchy.chain_for_issued]
    return ClientConfig(
        protector=SignatureProtector(key, cert, chain),
        trust=TrustStore([authority.hierarchy.root]),
        **kw,  # type: ignore[arg-type]
    )


def drive(server: CmpServer, tx: ClientTransaction, now: float | None = None) -> tuple[Done, list[str]]:
    """Run a client transaction against the server; returns the result and response labels."""
    event: Send | Done = tx.start()
    labels = []
    while isinstance(event, Send):
        reply = server.handle(event.data, now if now is not None else time.time())
        labels.append(reply.outcome.response)
        event = tx.receive(reply.data)
    return event, labels


def enroll(server: CmpServer, authority: Authority, **req: object) -> tuple[Done, ec.EllipticCurvePrivateKey]:
    key = new_key()
    request = CertRequest(BodyType.IR, key, subject=name(str(req.pop("cn", "dev"))), **req)  # type: ignore[arg-type]
    done, _ = drive(server, ClientTransaction(mac_config(authority), request))
    return done, key


def craft(
    protector: MacProtector | SignatureProtector | None,
    body_type: BodyType,
    body: messages.Body,
    **header: object,
) -> bytes:
    """A hand-made request: defaults are a valid header, overridable field by field (a signed
    one names its signer as sender, RFC 9483 §3.1)."""
    signer_name = protector.sender_name if isinstance(protector, SignatureProtector) else name("dev").public_bytes()
    fields: dict[str, object] = {
        "sender": messages.directory_name(signer_name),
        "recipient": messages.NULL_DN_GENERAL_NAME,
        "transaction_id": os.urandom(16),
        "sender_nonce": os.urandom(16),
        "sender_kid": protector.sender_kid if protector else None,
        "message_time": datetime.now(UTC).replace(microsecond=0),
        "protection_alg": protector.algorithm if protector else None,
    }
    fields.update(header)
    header_der = messages.encode_header(PKIHeader(**fields))  # type: ignore[arg-type]
    body_der = messages.encode_body(body_type, body)
    protection = protector.protect(messages.protected_part(header_der, body_der)) if protector else None
    extra = protector.extra_certs if isinstance(protector, SignatureProtector) else ()
    return messages.assemble(header_der, body_der, protection, extra)


def error_of(data: bytes) -> messages.PKIStatusInfo:
    msg = messages.decode(data)
    if msg.body_type is BodyType.ERROR:
        assert isinstance(msg.body, ErrorMsgContent)
        return msg.body.status
    assert isinstance(msg.body, CertRepMessage)
    return msg.body.responses[0].status


def ir_body(key: ec.EllipticCurvePrivateKey, **kw: object) -> messages.Body:
    return build_body(CertRequest(BodyType.IR, key, subject=name("dev"), **kw))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Enrollment flows


def test_ir_with_mac_confirms_and_records(server: CmpServer, authority: Authority) -> None:
    done, key = enroll(server, authority)
    cert = load_cert(done.certificate)
    assert cert.subject == name("dev")
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert done.ca_pubs == (authority.hierarchy.root_der,)  # LCMPP: root in caPubs for MAC ir
    assert authority.hierarchy.issuing_der in done.extra_certs
    cert.verify_directly_issued_by(authority.hierarchy.issuing)
    assert authority.store.get(cert.serial_number).status is CertRecordStatus.ISSUED
    assert authority.store.get(cert.serial_number).device_ref == REF.decode()
    assert server.statistics().live == 0


def test_ir_signed_response_is_signed_by_ra(server: CmpServer, authority: Authority) -> None:
    first, key = enroll(server, authority, cn="signer")
    cert = load_cert(first.certificate)
    tx = ClientTransaction(
        sig_config(authority, key, cert), CertRequest(BodyType.CR, new_key(), subject=name("second"))
    )
    event = tx.start()
    reply = server.handle(event.data, time.time())
    msg = messages.decode(reply.data)
    assert msg.extra_certs[0] == authority.hierarchy.signer_der  # RA signer first, then chain
    assert msg.header.sender_kid == authority.hierarchy.signer_ski
    assert msg.header.info(oids.IT_CONFIRM_WAIT_TIME) is not None
    assert isinstance(msg.body, CertRepMessage) and msg.body.ca_pubs == ()  # no caPubs when signed
    event = tx.receive(reply.data)
    done = tx.receive(server.handle(event.data, time.time()).data)
    assert isinstance(done, Done) and load_cert(done.certificate).subject == name("second")


def test_implicit_confirm_granted_in_one_round_trip(server: CmpServer, authority: Authority) -> None:
    key = new_key()
    tx = ClientTransaction(
        mac_config(authority), CertRequest(BodyType.IR, key, subject=name("ic"), implicit_confirm=True)
    )
    done, labels = drive(server, tx)
    assert labels == ["ip"] and done.implicit_confirm
    serial = load_cert(done.certificate).serial_number
    assert authority.store.get(serial).status is CertRecordStatus.ISSUED
    assert server.state_of(tx.transaction_id) is TxState.CLOSED


def test_implicit_confirm_not_granted_when_configured_off(authority: Authority) -> None:
    server = make_server(authority, grant_implicit_confirm=False)
    tx = ClientTransaction(
        mac_config(authority), CertRequest(BodyType.IR, new_key(), subject=name("ic"), implicit_confirm=True)
    )
    _, labels = drive(server, tx)
    assert labels == ["ip", "pkiconf"]


def test_kur_signed_with_old_cert_and_its_authorization(server: CmpServer, authority: Authority) -> None:
    first, key = enroll(server, authority, cn="old")
    old = load_cert(first.certificate)
    new = new_key()
    done, labels = drive(
        server, ClientTransaction(sig_config(authority, key, old), CertRequest(BodyType.KUR, new, old_cert=old))
    )
    assert labels == ["kup", "pkiconf"]
    assert load_cert(done.certificate).subject == old.subject
    # Another device's certificate may not update this one.
    other, other_key = enroll(server, authority, cn="other")
    tx = ClientTransaction(
        sig_config(authority, other_key, load_cert(other.certificate)),
        CertRequest(BodyType.KUR, new_key(), old_cert=old),
    )
    with pytest.raises(RequestRejected) as err:
        drive(server, tx)
    assert "notAuthorized" in err.value.fail_names


def test_kur_with_mac_is_refused(server: CmpServer, authority: Authority) -> None:
    first, _ = enroll(server, authority, cn="old")
    tx = ClientTransaction(
        mac_config(authority), CertRequest(BodyType.KUR, new_key(), old_cert=load_cert(first.certificate))
    )
    with pytest.raises(ServerError) as err:
        drive(server, tx)
    assert err.value.fail_names == ("notAuthorized",)


def test_p10cr_answers_cert_req_id_minus_one(server: CmpServer, authority: Authority) -> None:
    key = new_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(name("p10")).sign(key, hashes.SHA256())
    data = craft(MacProtector(SECRET, reference=REF), BodyType.P10CR, build_body(CsrRequest(csr)))
    reply = server.handle(data, time.time())
    msg = messages.decode(reply.data)
    assert isinstance(msg.body, CertRepMessage)
    response = msg.body.responses[0]
    assert (msg.body_type, response.cert_req_id, response.status.status) == (BodyType.CP, -1, PKIStatus.ACCEPTED)
    assert load_cert(response.certificate).subject == name("p10")
    # A CSR whose signature (the POP) does not verify is rejected.
    bad = bytearray(csr.public_bytes(serialization.Encoding.DER))
    bad[-3] ^= 1
    reply = server.handle(craft(MacProtector(SECRET, reference=REF), BodyType.P10CR, messages.P10Request(bytes(bad))), time.time())
    assert error_of(reply.data).fail_names == ("badPOP",)


def test_sans_and_critical_policies_accepted(server: CmpServer, authority: Authority) -> None:
    policies = x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier("1.2.3.4"), None)])
    done, _ = enroll(
        server, authority, sans=[x509.DNSName("dev.example"), x509.UniformResourceIdentifier("urn:uuid:1")],
        extensions=[x509.Extension(policies.oid, True, policies)],
    )
    cert = load_cert(done.certificate)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["dev.example"]


def test_derived_device_secret(server: CmpServer, authority: Authority) -> None:
    ref = b"device-000042"
    secret = derive_device_secret(b"master-secret", ref)
    assert len(secret) == 64 and secret == derive_device_secret(b"master-secret", ref)
    tx = ClientTransaction(mac_config(authority, secret=secret, ref=ref), CertRequest(BodyType.IR, new_key(), subject=name("d42")))
    done, _ = drive(server, tx)
    assert done.certificate
    wrong = ClientTransaction(mac_config(authority, secret=b"guess", ref=ref), CertRequest(BodyType.IR, new_key(), subject=name("d42")))
    with pytest.raises(ServerError) as err:  # answered with an RA-signed error: the MAC cannot be used
        drive(server, wrong)
    assert err.value.fail_names == ("badMessageCheck",)


# ---------------------------------------------------------------------------------------------
# Revocation and support messages


def test_rr_revokes_and_crl_and_ocsp_show_it(server: CmpServer, authority: Authority) -> None:
    done, key = enroll(server, authority, cn="gone")
    cert = load_cert(done.certificate)
    rr = RevocationRequest.for_certificate(cert, reason=1)
    result, labels = drive(server, ClientTransaction(sig_config(authority, key, cert), rr))
    assert labels == ["rp"] and result.status.status == PKIStatus.ACCEPTED
    assert authority.store.get(cert.serial_number).status is CertRecordStatus.REVOKED
    crl = x509.load_der_x509_crl(authority.crl.current_crl_der())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    req = ocsp.OCSPRequestBuilder().add_certificate(cert, authority.hierarchy.issuing, hashes.SHA1()).build()
    answer = ocsp.load_der_ocsp_response(authority.ocsp.respond(req.public_bytes(serialization.Encoding.DER)))
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    # Revoking twice: certRevoked; a revoked certificate may not sign a kur.
    with pytest.raises(RequestRejected) as err:
        drive(server, ClientTransaction(sig_config(authority, key, cert), RevocationRequest.for_certificate(cert)))
    assert err.value.fail_names == ("certRevoked",)


def test_hold_then_remove_from_crl_makes_the_certificate_good_again(server: CmpServer, authority: Authority) -> None:
    done, key = enroll(server, authority, cn="held")
    cert = load_cert(done.certificate)
    config = sig_config(authority, key, cert)

    def rr(reason: int) -> PKIStatus:
        result, _ = drive(server, ClientTransaction(config, RevocationRequest.for_certificate(cert, reason=reason)))
        return result.status.status

    def ocsp_status() -> ocsp.OCSPCertStatus:
        req = ocsp.OCSPRequestBuilder().add_certificate(cert, authority.hierarchy.issuing, hashes.SHA1()).build()
        der_req = req.public_bytes(serialization.Encoding.DER)
        return ocsp.load_der_ocsp_response(authority.ocsp.respond(der_req)).certificate_status

    def on_crl() -> bool:
        crl = x509.load_der_x509_crl(authority.crl.current_crl_der())
        return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None

    # removeFromCRL for a certificate that is not on hold: refused.
    with pytest.raises(RequestRejected) as err:
        rr(8)
    assert err.value.fail_names == ("badRequest",)
    assert rr(6) == PKIStatus.ACCEPTED  # certificateHold
    assert on_crl() and ocsp_status() is ocsp.OCSPCertStatus.REVOKED
    assert rr(8) == PKIStatus.ACCEPTED  # removeFromCRL releases the hold
    assert authority.store.get(cert.serial_number).status is CertRecordStatus.ISSUED
    assert not on_crl() and ocsp_status() is ocsp.OCSPCertStatus.GOOD
    # Held again, then revoked for good: a final revocation cannot be released.
    assert rr(6) == PKIStatus.ACCEPTED and on_crl()
    assert rr(8) == PKIStatus.ACCEPTED and not on_crl()
    assert rr(1) == PKIStatus.ACCEPTED and on_crl()
    with pytest.raises(RequestRejected) as err:
        rr(8)
    assert err.value.fail_names == ("badRequest",)
    assert authority.store.get(cert.serial_number).revocation_reason is x509.ReasonFlags.key_compromise


def test_rr_by_another_certificate_is_not_authorized(server: CmpServer, authority: Authority) -> None:
    target, _ = enroll(server, authority, cn="target")
    other, other_key = enroll(server, authority, cn="other")
    rr = RevocationRequest.for_certificate(load_cert(target.certificate))
    with pytest.raises(RequestRejected) as err:
        drive(server, ClientTransaction(sig_config(authority, other_key, load_cert(other.certificate)), rr))
    assert err.value.fail_names == ("notAuthorized",)
    # rr for a certificate this CA did not issue (its own root): badCertId.
    root_rr = RevocationRequest.for_certificate(authority.hierarchy.root)
    with pytest.raises(RequestRejected) as err:
        drive(server, ClientTransaction(sig_config(authority, other_key, load_cert(other.certificate)), root_rr))
    assert err.value.fail_names == ("badCertId",)


def test_genm_support_messages(server: CmpServer, authority: Authority) -> None:
    items = (
        genm.ca_certs_request(),
        genm.root_ca_cert_request(authority.hierarchy.root_der),
        genm.cert_req_template_request(),
        genm.crl_status_list_request(authority.hierarchy.issuing.subject.public_bytes()),
        messages.InfoTypeAndValue(oids.IT_SIGN_KEY_PAIR_TYPES),
        messages.InfoTypeAndValue("1.2.3.4.5"),
    )
    done, labels = drive(server, ClientTransaction(mac_config(authority), GeneralRequest(items)))
    assert labels == ["genp"]
    got = {i.oid: i for i in done.items}
    assert genm.decode_ca_certs(got[oids.IT_CA_CERTS])[0] == authority.hierarchy.issuing_der
    assert genm.decode_root_ca_key_update(got[oids.IT_ROOT_CA_KEY_UPDATE]) is None
    _template, key_spec = genm.decode_cert_req_template(got[oids.IT_CERT_REQ_TEMPLATE])
    assert key_spec is not None
    crl = x509.load_der_x509_crl(genm.decode_crls(got[oids.IT_CRLS])[0])
    assert crl.issuer == authority.hierarchy.issuing.subject
    assert len(der.parse(got[oids.IT_SIGN_KEY_PAIR_TYPES].value).children()) >= 3
    assert got["1.2.3.4.5"].value is None  # unknown: answered, without a value


# ---------------------------------------------------------------------------------------------
# Confirmation deadlines, delayed delivery, limits


def test_unconfirmed_certificate_rejected_after_deadline(authority: Authority) -> None:
    server = make_server(authority, confirm_wait=10)
    tx = ClientTransaction(mac_config(authority), CertRequest(BodyType.IR, new_key(), subject=name("slow")))
    now = time.time()
    certconf = tx.receive(server.handle(tx.start().data, now).data)
    assert isinstance(certconf, Send) and server.state_of(tx.transaction_id) is TxState.AWAIT_CONFIRM
    assert server.tick(now + 5) == []
    expired = server.tick(now + 11)
    assert [o.status for o in expired] == ["confirm_timeout"]
    serial = expired[0].serial
    assert authority.store.get(serial).status is CertRecordStatus.REJECTED
    crl = x509.load_der_x509_crl(authority.crl.current_crl_der())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    reply = server.handle(certconf.data, now + 12)
    assert error_of(reply.data).fail_names == ("systemUnavail",)


def test_delayed_delivery_with_polling(authority: Authority) -> None:
    server = make_server(authority)
    tx = ClientTransaction(mac_config(authority), CertRequest(BodyType.IR, new_key(), subject=name("poll")))
    now = time.time()
    reply = server.handle(tx.start().data, now, defer=3)
    assert reply.outcome.status == "waiting" and server.state_of(tx.transaction_id) is TxState.WAITING
    poll = tx.receive(reply.data)
    assert isinstance(poll, Send) and poll.body_type is BodyType.POLLREQ
    reply = server.handle(poll.data, now + 1)
    msg = messages.decode(reply.data)
    assert isinstance(msg.body, PollRepContent) and msg.body.entries[0].check_after == 2
    poll = tx.receive(reply.data)
    assert isinstance(poll, Send) and poll.delay == 2
    reply = server.handle(poll.data, now + 3)
    assert reply.outcome.response == "ip"
    conf = tx.receive(reply.data)
    done = tx.receive(server.handle(conf.data, now + 3).data)
    assert isinstance(done, Done) and done.polls == 2


def test_delayed_genm_uses_error_waiting(authority: Authority) -> None:
    server = make_server(authority)
    tx = ClientTransaction(mac_config(authority), GeneralRequest((genm.ca_certs_request(),)))
    now = time.time()
    reply = server.handle(tx.start().data, now, defer=1)
    assert reply.outcome.response == "error" and reply.outcome.status == "waiting"
    poll = tx.receive(reply.data)
    done = tx.receive(server.handle(poll.data, now + 1).data)
    assert isinstance(done, Done) and done.items[0].oid == oids.IT_CA_CERTS


def test_hung_waiting_transaction_closed(authority: Authority) -> None:
    server = make_server(authority, hung_timeout=30)
    tx = ClientTransaction(mac_config(authority), CertRequest(BodyType.IR, new_key(), subject=name("hung")))
    now = time.time()
    reply = server.handle(tx.start().data, now, defer=1)
    expired = server.tick(now + 40)
    assert [o.status for o in expired] == ["hung"]
    assert authority.store.get(reply.outcome.serial).status is CertRecordStatus.REJECTED


def test_concurrent_transaction_cap_answers_system_unavail(authority: Authority) -> None:
    server = make_server(authority, max_transactions=2)
    now = time.time()
    pending = []
    for i in range(2):
        tx = ClientTransaction(mac_config(authority), CertRequest(BodyType.IR, new_key(), subject=name(f"c{i}")))
        pending.append((tx, tx.receive(server.handle(tx.start().data, now).data)))
    tx = ClientTransaction(mac_config(authority), CertRequest(BodyType.IR, new_key(), subject=name("c3")))
    reply = server.handle(tx.start().data, now)
    assert error_of(reply.data).fail_names == ("systemUnavail",)
    for tx, conf in pending:  # the live ones still complete
        assert isinstance(tx.receive(server.handle(conf.data, now).data), Done)



def test_issue_rate_cap_answers_system_unavail_beyond_the_rate(authority: Authority) -> None:
    """--issue-rate 10: the bucket holds one request (a tenth of a second's), so at one instant
    the second ir is refused; a tenth of a second on, one more starts; genm is not counted."""
    server = make_server(authority, max_issue_rate=10.0)
    now = time.time()

    def ir(cn: str, at: float) -> tuple[str, tuple[str, ...]]:
        tx = ClientTransaction(mac_config(authority), CertRequest(BodyType.IR, new_key(), subject=name(cn)))
        reply = server.handle(tx.start().data, at)
        return reply.outcome.status, (error_of(reply.data).fail_names if reply.outcome.response == "error" else ())

    assert ir("r1", now)[0] == "accepted"
    assert ir("r2", now) == ("error", ("systemUnavail",))
    support = ClientTransaction(mac_config(authority), GeneralRequest((genm.ca_certs_request(),)))
    assert server.handle(support.start().data, now).outcome.status != "error"
    assert ir("r3", now + 0.15)[0] == "accepted"
    assert ir("r4", now + 0.15)[1] == ("systemUnavail",)

def test_injected_error(server: CmpServer, authority: Authority) -> None:
    tx = ClientTransaction(mac_config(authority), CertRequest(BodyType.IR, new_key(), subject=name("x")))
    reply = server.handle(tx.start().data, time.time(), inject_error=True)
    with pytest.raises(ServerError) as err:
        tx.receive(reply.data)
    assert err.value.fail_names == ("systemFailure",)


def test_3gpp_mode_puts_root_in_extra_certs(authority: Authority) -> None:
    server = make_server(authority, mode="3gpp")
    done, _ = drive(
        server,
        ClientTransaction(mac_config(authority, mode="3gpp"), CertRequest(BodyType.IR, new_key(), subject=name("gnb"))),
    )
    assert authority.hierarchy.root_der in done.extra_certs and done.ca_pubs == ()
    assert done.operator_root == authority.hierarchy.root_der


def test_vendor_signed_ir_accepted_only_for_ir(tmp_path: Path, authority: Authority) -> None:
    vendor = Authority.open(tmp_path / "vendor")
    try:
        idevid_key = new_key()
        idevid = vendor.issuer.issue(idevid_key.public_key(), name("vendor-device-1")).cert
        server = make_server(authority, vendor=[vendor.hierarchy.root])
        cfg = ClientConfig(
            protector=SignatureProtector(idevid_key, idevid, vendor.hierarchy.chain_for_issued),
            trust=TrustStore([authority.hierarchy.root]),
        )
        done, _ = drive(server, ClientTransaction(cfg, CertRequest(BodyType.IR, new_key(), subject=name("gnb-1"))))
        assert load_cert(done.certificate).issuer == authority.hierarchy.issuing.subject
        with pytest.raises(ServerError) as err:
            drive(server, ClientTransaction(cfg, CertRequest(BodyType.CR, new_key(), subject=name("gnb-1"))))
        assert err.value.fail_names == ("signerNotTrusted",)
    finally:
        vendor.close()


# ---------------------------------------------------------------------------------------------
# Bad requests: each gets the right failInfo, and the server goes on serving


def test_malformed_and_bad_requests(server: CmpServer, authority: Authority) -> None:
    mac = MacProtector(SECRET, reference=REF)
    now = time.time()
    key = new_key()
    good = craft(mac, BodyType.IR, ir_body(key))
    cases = {
        "truncated": (good[: len(good) // 2], "badDataFormat"),
        "garbage": (b"\x30\x84\xff\xff\xff\xff" + b"\x00" * 10, "badDataFormat"),
        "empty": (b"", "badDataFormat"),
        "pvno 1": (craft(mac, BodyType.IR, ir_body(key), pvno=1), "unsupportedVersion"),
        "bad MAC": (craft(MacProtector(b"wrong", reference=REF), BodyType.IR, ir_body(key)), "badMessageCheck"),
        "unprotected": (craft(None, BodyType.IR, ir_body(key)), "badMessageCheck"),
        "old time": (craft(mac, BodyType.IR, ir_body(key), message_time=datetime.now(UTC) - timedelta(hours=2)), "badTime"),
        "short nonce": (craft(mac, BodyType.IR, ir_body(key), sender_nonce=b"12345678"), "badSenderNonce"),
        "no tid": (craft(mac, BodyType.IR, ir_body(key), transaction_id=None), "badDataFormat"),  # RFC 9483 §3.5
        "raVerified POP": (craft(mac, BodyType.IR, ir_body(key, pop="raVerified")), "badPOP"),
        "missing POP": (craft(mac, BodyType.IR, ir_body(key, pop="none")), "badPOP"),
        "orphan certConf": (craft(mac, BodyType.CERTCONF, CertConfirmContent((CmpCertStatus(b"x" * 32, 0),))), "badRequest"),
        "iterations": (craft(MacProtector(SECRET, reference=REF, iterations=100_001), BodyType.IR, ir_body(key)), "badAlg"),
        "unknown ref": (craft(MacProtector(SECRET, reference=None), BodyType.IR, ir_body(key)), "badMessageCheck"),
    }
    for label, (data, expected) in cases.items():
        reply = server.handle(data, now)
        status = error_of(reply.data)
        assert status.fail_names == (expected,), label
        assert reply.outcome.status in ("error", "rejection"), label
    done, _ = enroll(server, authority)  # still serving
    assert done.certificate


def _signed_template_body(key: ec.EllipticCurvePrivateKey, template: messages.CertTemplate) -> messages.Body:
    """An ir body for ``template`` with a valid signature POP by ``key`` (whatever the template says)."""
    request = messages.encode_cert_request(0, template)
    popo = messages.Popo("signature", der.algorithm_identifier(oids.ECDSA_SHA256),
                         key.sign(request, ec.ECDSA(hashes.SHA256())))
    return messages.CertReqMessages((messages.CertReqMsg(0, template, popo, cert_request_der=request),))


def test_unusable_templates_are_rejected_with_bad_cert_template(server: CmpServer) -> None:
    """A plain certTemplate (no extensions) is read without a wrapping CSR: its key and subject
    are still checked, and what is not a key or a Name is refused with badCertTemplate."""
    mac = MacProtector(SECRET, reference=REF)
    key = new_key()
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    not_printable = b"\x30\x0d\x31\x0b\x30\x09\x06\x03\x55\x04\x03\x13\x02a@"
    cases = {
        "key is junk": messages.CertTemplate(subject=name("t").public_bytes(), public_key=b"\x30\x03\x02\x01\x00"),
        "subject is no Name": messages.CertTemplate(subject=b"\x30\x03\x02\x01\x00", public_key=spki),
        "PrintableString with @": messages.CertTemplate(subject=not_printable, public_key=spki),
    }
    for label, template in cases.items():
        reply = server.handle(craft(mac, BodyType.IR, _signed_template_body(key, template)), time.time())
        assert error_of(reply.data).fail_names == ("badCertTemplate",), label
        assert reply.outcome.status == "rejection", label
    ok = server.handle(craft(mac, BodyType.IR, _signed_template_body(
        key, messages.CertTemplate(subject=name("t").public_bytes(), public_key=spki))), time.time())
    assert ok.outcome.status == "accepted"


def test_error_responses_are_protected(server: CmpServer, authority: Authority) -> None:
    mac = MacProtector(SECRET, reference=REF)
    reply = server.handle(craft(mac, BodyType.IR, ir_body(new_key()), pvno=1), time.time())
    msg = messages.decode(reply.data)
    assert msg.header.protection_alg == mac.algorithm  # MAC answered with MAC
    reply = server.handle(b"\x30\x03\x02\x01", time.time())  # undecodable: signed by the RA
    msg = messages.decode(reply.data)
    assert msg.extra_certs[0] == authority.hierarchy.signer_der and msg.protection


def test_replayed_transaction_id(server: CmpServer, authority: Authority) -> None:
    mac = MacProtector(SECRET, reference=REF)
    tid = os.urandom(16)
    now = time.time()
    first = server.handle(craft(mac, BodyType.IR, ir_body(new_key()), transaction_id=tid), now)
    assert first.outcome.status == "accepted"
    live = server.handle(craft(mac, BodyType.IR, ir_body(new_key()), transaction_id=tid), now)
    assert error_of(live.data).fail_names == ("transactionIdInUse",)
    # Complete it, then replay the ID: still in use (closed IDs are remembered).
    tx = ClientTransaction(mac_config(authority), CertRequest(BodyType.IR, new_key(), subject=name("r")))
    drive(server, tx)
    replay = server.handle(craft(mac, BodyType.IR, ir_body(new_key()), transaction_id=tx.transaction_id), now)
    assert error_of(replay.data).fail_names == ("transactionIdInUse",)


def test_cert_conf_checks(server: CmpServer, authority: Authority) -> None:
    mac = MacProtector(SECRET, reference=REF)
    now = time.time()
    # Wrong recipNonce: refused, transaction stays open.
    tx = ClientTransaction(mac_config(authority), CertRequest(BodyType.IR, new_key(), subject=name("n")))
    conf = tx.receive(server.handle(tx.start().data, now).data)
    msg = messages.decode(conf.data)
    bad = craft(mac, BodyType.CERTCONF, msg.body, transaction_id=tx.transaction_id, recip_nonce=os.urandom(16))
    assert error_of(server.handle(bad, now).data).fail_names == ("badRecipientNonce",)
    assert server.state_of(tx.transaction_id) is TxState.AWAIT_CONFIRM
    # Wrong certHash: badCertId, certificate rejected, transaction closed.
    ip = messages.decode(server.handle(craft(mac, BodyType.IR, ir_body(new_key())), now).data)
    wrong = CertConfirmContent((CmpCertStatus(b"\x00" * 32, 0),))
    reply = server.handle(
        craft(mac, BodyType.CERTCONF, wrong, transaction_id=ip.header.transaction_id, recip_nonce=ip.header.sender_nonce),
        now,
    )
    assert error_of(reply.data).fail_names == ("badCertId",)
    serial = load_cert(ip.body.responses[0].certificate).serial_number
    assert authority.store.get(serial).status is CertRecordStatus.REJECTED
    # Protection switched mid-transaction (signature certConf after a MAC ir): refused.
    first, key = enroll(server, authority, cn="s")
    signer = SignatureProtector(key, load_cert(first.certificate), authority.hierarchy.chain_for_issued)
    conf_body = messages.decode(conf.data).body
    reply = server.handle(
        craft(signer, BodyType.CERTCONF, conf_body, transaction_id=tx.transaction_id,
              recip_nonce=messages.decode(conf.data).header.recip_nonce),
        now,
    )
    assert error_of(reply.data).fail_names == ("wrongIntegrity",)


def test_rejected_cert_conf_marks_certificate_rejected(server: CmpServer, authority: Authority) -> None:
    mac = MacProtector(SECRET, reference=REF)
    now = time.time()
    ip = messages.decode(server.handle(craft(mac, BodyType.IR, ir_body(new_key())), now).data)
    cert_der = ip.body.responses[0].certificate
    from fleet.cmp.client import cert_hash

    status = messages.PKIStatusInfo(PKIStatus.REJECTION, ("no thanks",), FailInfo.badCertTemplate.mask)
    body = CertConfirmContent((CmpCertStatus(cert_hash(cert_der), 0, status),))
    reply = server.handle(
        craft(mac, BodyType.CERTCONF, body, transaction_id=ip.header.transaction_id, recip_nonce=ip.header.sender_nonce), now
    )
    assert messages.decode(reply.data).body_type is BodyType.PKICONF
    assert authority.store.get(load_cert(cert_der).serial_number).status is CertRecordStatus.REJECTED


def test_p10cr_with_fleet_client(server: CmpServer, authority: Authority) -> None:
    key = new_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(name("p10-client")).sign(key, hashes.SHA256())
    done, labels = drive(server, ClientTransaction(mac_config(authority), CsrRequest(csr)))
    assert labels == ["cp", "pkiconf"]
    assert load_cert(done.certificate).subject == name("p10-client")


# ---------------------------------------------------------------------------------------------
# Responses are byte for byte what ``messages`` encodes (the writers' own equivalence tests are
# in test_fastwire.py, with the request reader's)


def test_every_response_reencodes_identically(server: CmpServer, authority: Authority) -> None:
    """ip, pkiConf, error, rp, genp, signed and MAC-protected: what the server sends is what
    ``messages.encode`` makes of the decoded message (no field lost or encoded differently)."""
    sent: list[bytes] = []
    original = server._encode

    def recording(*args: object, **kwargs: object) -> tuple[bytes, bytes]:
        data, nonce = original(*args, **kwargs)  # type: ignore[arg-type]
        sent.append(data)
        return data, nonce

    server._encode = recording  # type: ignore[method-assign]
    done, key = enroll(server, authority)
    cert = load_cert(done.certificate)
    signed = sig_config(authority, key, cert)
    drive(server, ClientTransaction(signed, GeneralRequest((messages.InfoTypeAndValue(oids.IT_CA_CERTS),))))
    drive(server, ClientTransaction(signed, RevocationRequest(cert.issuer, cert.serial_number)))
    server.handle(b"\x30\x03\x02\x01\x02", time.time())  # malformed: an error answer
    drive(server, ClientTransaction(mac_config(authority), CertRequest(BodyType.IR, new_key(), subject=name("i"), implicit_confirm=True)))
    assert len(sent) >= 6
    for data in sent:
        assert messages.encode(messages.decode(data)) == data


# ---------------------------------------------------------------------------------------------
# Per-second messageTime and pooled randomness
