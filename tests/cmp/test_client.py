"""ClientTransaction without I/O, in the manner of h11's test_state: drive the machine with
hand-built responses (tests/cmp/ca_stub.py) and real OpenSSL bytes (tests/data/openssl), and
assert the state after every step; moves the table does not allow raise LocalProtocolError."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.cmp import der, messages, oids
from fleet.cmp.client import (
    _TRANSITIONS,
    ClientConfig,
    ClientTransaction,
    Done,
    Event,
    Send,
    State,
    cert_hash,
    transitions,
)
from fleet.cmp.errors import (
    BadVersion,
    CaPubsNotAllowed,
    CertReqIdMismatch,
    CmpError,
    LocalProtocolError,
    MalformedMessage,
    PollingLimit,
    RecipNonceMismatch,
    RequestRejected,
    ServerError,
    StatusError,
    TransactionIdMismatch,
    UnexpectedBody,
    UnprotectedMessage,
    UnverifiedRefusal,
    WrongPublicKey,
)
from fleet.cmp.messages import (
    BodyType,
    CertRepMessage,
    CertResponse,
    FailInfo,
    InfoTypeAndValue,
    PKIMessage,
    PKIStatus,
    PKIStatusInfo,
    PollRepContent,
    PollRepEntry,
    RevRepContent,
)
from fleet.cmp.protection import (
    BadMac,
    BadSignature,
    MacProtector,
    PbmParams,
    ProtectionError,
    SignatureProtector,
    UnsupportedAlgorithm,
)
from fleet.cmp.requests import CertRequest, CsrRequest, GeneralRequest, RevocationRequest
from fleet.cmp.trust import CertificateError, TrustStore, UntrustedSigner

from .ca_stub import CaStub, Reply, error_reply, issue, make_ca

KEY = ec.generate_private_key(ec.SECP256R1())
SUBJECT = x509.Name.from_rfc4514_string("CN=device 1")
CORPUS = Path(__file__).parent.parent / "data" / "openssl"


def spki(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def stub() -> CaStub:
    return CaStub()


def mac_config(stub: CaStub, **kw: object) -> ClientConfig:
    return ClientConfig(stub.mac_protector(), **kw)  # type: ignore[arg-type]


def sig_config(stub: CaStub, **kw: object) -> ClientConfig:
    device = stub.device()
    protector = SignatureProtector(device.key, device.cert, list(device.chain))
    return ClientConfig(protector, TrustStore([stub.root.cert]), **kw)  # type: ignore[arg-type]


def ir(**kw: object) -> CertRequest:
    return CertRequest(BodyType.IR, KEY, SUBJECT, **kw)  # type: ignore[arg-type]


def step(tx: ClientTransaction, stub: CaStub, event: Send, expect: State) -> Send | Done:
    """One round trip through the stub, asserting the state it leaves the transaction in."""
    result = tx.receive(stub.answer(event.data))
    assert tx.state is expect
    return result


def answer_with(stub: CaStub, make: Callable[[Reply, PKIMessage], Reply]) -> None:
    stub.mutate = make


# ---------------------------------------------------------------------------------------------
# Happy paths, every operation, both protections


def test_ir_with_mac_walks_request_confirm_done(stub: CaStub) -> None:
    tx = ClientTransaction(mac_config(stub), ir())
    assert tx.state is State.IDLE and tx.result is None
    first = tx.start()
    assert tx.state is State.AWAIT_RESPONSE
    assert first.body_type is BodyType.IR and first.delay == 0
    conf = step(tx, stub, first, State.AWAIT_CONFIRM)
    assert isinstance(conf, Send) and conf.body_type is BodyType.CERTCONF
    assert tx.result is not None  # known, but not final until pkiConf
    done = step(tx, stub, conf, State.DONE)
    assert isinstance(done, Done) and tx.result is done
    cert = x509.load_der_x509_certificate(done.certificate or b"")
    assert spki(cert) == spki(KEY)
    assert cert.subject == SUBJECT
    assert done.ca_pubs == (stub.root_der,) and done.chain == (stub.root_der,)
    assert done.status.status == PKIStatus.ACCEPTED and not done.implicit_confirm and done.polls == 0

    ir_msg, conf_msg = stub.received
    assert ir_msg.header.transaction_id == conf_msg.header.transaction_id == tx.transaction_id
    assert ir_msg.header.sender_kid == stub.reference
    assert conf_msg.header.sender_nonce != ir_msg.header.sender_nonce
    assert conf_msg.header.recip_nonce == messages.decode(stub.sent[0]).header.sender_nonce
    status = conf_msg.body.statuses[0]  # type: ignore[union-attr]
    assert status.cert_hash == cert_hash(done.certificate or b"") and status.cert_req_id == 0
    assert status.status_info is None  # accepted


@pytest.mark.parametrize(
    "config, request_kw",
    [
        ({}, {}),
        ({"message_time": False}, {}),
        ({"confirm_hash_alg": "sha256"}, {"cert_profile": "tls"}),
        ({}, {"implicit_confirm": True}),
        ({"sender": messages.directory_name(messages.NULL_DN)}, {}),
    ],
)
def test_sent_headers_are_the_canonical_encoding(stub: CaStub, config: dict, request_kw: dict) -> None:
    """The client builds headers from per-transaction parts; each must equal ``encode_header``
    of its own decoded fields, byte for byte, and carry the fields the transaction implies."""
    stub.grant_implicit_confirm = request_kw.get("implicit_confirm", False)
    tx = ClientTransaction(mac_config(stub, **config), ir(**request_kw))
    event: Send | Done = tx.start()
    sent = []
    while isinstance(event, Send):
        sent.append(event.data)
        event = tx.receive(stub.answer(event.data))
    for k, data in enumerate(sent):
        header_node = der.parse(data).children()[0]
        header = messages.decode_header(header_node)
        assert messages.encode_header(header) == header_node.raw
        assert header.transaction_id == tx.transaction_id and header.sender_kid == stub.reference
        assert (header.message_time is not None) == config.get("message_time", True)
        expected_recip = None if k == 0 else messages.decode(stub.sent[k - 1]).header.sender_nonce
        assert header.recip_nonce == expected_recip
        assert header.implicit_confirm == (k == 0 and request_kw.get("implicit_confirm", False))
        assert header.pvno == (3 if k == 1 and config.get("confirm_hash_alg") else 2)
    assert len(sent) == (1 if request_kw.get("implicit_confirm") else 2)


REQUESTS: dict[str, Callable[[CaStub], object]] = {
    "ir": lambda s: ir(),
    "cr": lambda s: CertRequest(BodyType.CR, KEY, SUBJECT),
    "kur": lambda s: CertRequest(BodyType.KUR, KEY, old_cert=s.device("old").cert),
    "p10cr": lambda s: CsrRequest(
        x509.CertificateSigningRequestBuilder().subject_name(SUBJECT).sign(KEY, hashes.SHA256())
    ),
    "rr": lambda s: RevocationRequest.for_certificate(s.device("old").cert, 1),
    "genm": lambda s: GeneralRequest((InfoTypeAndValue(oids.IT_CA_CERTS),)),
}
CERT_OPS = {"ir", "cr", "kur", "p10cr"}


def test_protector_per_transaction_overrides_the_shared_config(stub: CaStub) -> None:
    """Devices that share one ClientConfig and differ in their credentials: the transaction's
    own protector protects its messages and checks the answers."""
    shared = ClientConfig(MacProtector(b"not the stub's secret", reference=b"nobody"))
    tx = ClientTransaction(shared, ir(), protector=stub.mac_protector())
    done = step(tx, stub, step(tx, stub, tx.start(), State.AWAIT_CONFIRM), State.DONE)  # type: ignore[arg-type]
    assert isinstance(done, Done) and done.certificate is not None
    assert [m.header.sender_kid for m in stub.received] == [stub.reference] * 2


@pytest.mark.parametrize("protection", ["mac", "signature"])
@pytest.mark.parametrize("op", list(REQUESTS))
def test_every_operation(stub: CaStub, op: str, protection: str) -> None:
    stub.ca_pubs = protection == "mac"
    config = mac_config(stub) if protection == "mac" else sig_config(stub)
    request = REQUESTS[op](stub)
    tx = ClientTransaction(config, request)  # type: ignore[arg-type]
    event: Send | Done = tx.start()
    assert tx.state is State.AWAIT_RESPONSE
    if op in CERT_OPS:
        event = step(tx, stub, event, State.AWAIT_CONFIRM)
        assert isinstance(event, Send) and event.body_type is BodyType.CERTCONF
    event = step(tx, stub, event, State.DONE)
    assert isinstance(event, Done)
    kinds = [m.body_type for m in stub.received]
    assert kinds[0].label == op
    if op in CERT_OPS:
        assert kinds[1] is BodyType.CERTCONF
        assert spki(x509.load_der_x509_certificate(event.certificate or b"")) == spki(KEY)
        expected_id = -1 if op == "p10cr" else 0
        assert stub.received[1].body.statuses[0].cert_req_id == expected_id  # type: ignore[union-attr]
    if op == "genm":
        assert event.items[0].oid == oids.IT_CA_CERTS
    if op == "kur":
        assert stub.received[0].body.messages[0].controls is not None  # type: ignore[union-attr]
    if protection == "signature":
        assert event.ca_pubs == ()
        assert stub.received[0].extra_certs[0] == config.protector.extra_certs[0]  # type: ignore[union-attr]


def test_operation_paths() -> None:
    stub = CaStub()
    assert ClientTransaction(mac_config(stub), ir()).operation == "initialization"
    assert ClientTransaction(mac_config(stub), REQUESTS["p10cr"](stub)).operation == "pkcs10"  # type: ignore[arg-type]
    genm = GeneralRequest((InfoTypeAndValue(oids.IT_CA_CERTS),))
    assert ClientTransaction(mac_config(stub), genm).operation == "getcacerts"


# ---------------------------------------------------------------------------------------------
# Polling and implicit confirmation


def test_polling_returns_check_after_as_delay(stub: CaStub) -> None:
    stub.polls, stub.check_after = 3, 7
    tx = ClientTransaction(mac_config(stub), ir())
    event = tx.start()
    delays = []
    for _ in range(3):
        event = step(tx, stub, event, State.AWAIT_POLL)  # type: ignore[arg-type]
        assert isinstance(event, Send) and event.body_type is BodyType.POLLREQ
        delays.append(event.delay)
    assert delays == [0, 7, 7]  # "waiting" ip: poll at once; pollRep: after checkAfter
    event = step(tx, stub, event, State.AWAIT_CONFIRM)  # type: ignore[arg-type]
    done = step(tx, stub, event, State.DONE)  # type: ignore[arg-type]
    assert isinstance(done, Done) and done.polls == 3
    assert [m.body.cert_req_ids for m in stub.received[1:4]] == [(0,)] * 3  # type: ignore[union-attr]


@pytest.mark.parametrize("op", ["rr", "genm"])
def test_polling_for_non_certificate_responses_starts_with_error_waiting(stub: CaStub, op: str) -> None:
    stub.polls = 2
    tx = ClientTransaction(mac_config(stub), REQUESTS[op](stub))  # type: ignore[arg-type]
    event = step(tx, stub, tx.start(), State.AWAIT_POLL)
    event = step(tx, stub, event, State.AWAIT_POLL)  # type: ignore[arg-type]
    done = step(tx, stub, event, State.DONE)  # type: ignore[arg-type]
    assert isinstance(done, Done) and done.polls == 2
    assert [m.body.cert_req_ids for m in stub.received[1:]] == [(-1,), (-1,)]  # type: ignore[union-attr]


def test_implicit_confirm_granted_skips_certconf(stub: CaStub) -> None:
    stub.grant_implicit_confirm = True
    tx = ClientTransaction(mac_config(stub), ir(implicit_confirm=True))
    done = step(tx, stub, tx.start(), State.DONE)
    assert isinstance(done, Done) and done.implicit_confirm
    assert stub.received[0].header.implicit_confirm
    with pytest.raises(LocalProtocolError):
        tx.receive(b"")
    assert tx.state is State.DONE


def test_implicit_confirm_refused_means_certconf(stub: CaStub) -> None:
    tx = ClientTransaction(mac_config(stub), ir(implicit_confirm=True))
    conf = step(tx, stub, tx.start(), State.AWAIT_CONFIRM)
    done = step(tx, stub, conf, State.DONE)  # type: ignore[arg-type]
    assert isinstance(done, Done) and not done.implicit_confirm


def test_implicit_confirm_not_asked_for_is_not_taken(stub: CaStub) -> None:
    stub.grant_implicit_confirm = True
    answer_with(stub, lambda r, q: dataclasses.replace(
        r, header=dataclasses.replace(r.header, general_info=(InfoTypeAndValue(oids.IT_IMPLICIT_CONFIRM, der.NULL_DER),))
    ))
    tx = ClientTransaction(mac_config(stub), ir())
    step(tx, stub, tx.start(), State.AWAIT_CONFIRM)


def test_certconf_with_hash_alg_uses_pvno_3(stub: CaStub) -> None:
    tx = ClientTransaction(mac_config(stub, confirm_hash_alg="sha384"), ir())
    conf = step(tx, stub, tx.start(), State.AWAIT_CONFIRM)
    step(tx, stub, conf, State.DONE)  # type: ignore[arg-type]
    msg = stub.received[1]
    assert msg.header.pvno == 3
    status = msg.body.statuses[0]  # type: ignore[union-attr]
    assert status.hash_alg is not None and len(status.cert_hash) == 48


# ---------------------------------------------------------------------------------------------
# Refusals by the server


def test_rejection_names_fail_info(stub: CaStub) -> None:
    status = PKIStatusInfo(PKIStatus.REJECTION, ("no",), FailInfo.badRequest.mask | FailInfo.badPOP.mask)

    def reject(reply: Reply, request: PKIMessage) -> Reply:
        return dataclasses.replace(reply, body=CertRepMessage((CertResponse(0, status),)))

    answer_with(stub, reject)
    tx = ClientTransaction(mac_config(stub), ir())
    event = tx.start()
    with pytest.raises(RequestRejected) as info:
        tx.receive(stub.answer(event.data))
    assert tx.state is State.FAILED and tx.result is None
    assert info.value.kind == "rejected"
    assert set(info.value.fail_names) == {"badRequest", "badPOP"}
    assert "badPOP" in str(info.value) and "\n" not in str(info.value)


def test_rr_rejection(stub: CaStub) -> None:
    status = PKIStatusInfo(PKIStatus.REJECTION, (), FailInfo.certRevoked.mask)
    answer_with(stub, lambda r, q: dataclasses.replace(r, body=RevRepContent((status,))))
    tx = ClientTransaction(mac_config(stub), REQUESTS["rr"](stub))  # type: ignore[arg-type]
    with pytest.raises(RequestRejected) as info:
        tx.receive(stub.answer(tx.start().data))
    assert info.value.fail_names == ("certRevoked",) and tx.state is State.FAILED


@pytest.mark.parametrize("when", ["response", "poll", "confirm"])
def test_error_message_in_every_waiting_state(stub: CaStub, when: str) -> None:
    status = PKIStatusInfo(PKIStatus.REJECTION, ("system down",), FailInfo.systemUnavail.mask)
    stub.polls = 2 if when == "poll" else 0
    target = {"response": BodyType.IR, "poll": BodyType.POLLREQ, "confirm": BodyType.CERTCONF}[when]
    answer_with(stub, lambda r, q: error_reply(stub, q, status) if q.body_type is target else r)
    tx = ClientTransaction(mac_config(stub), ir())
    event = tx.start()
    with pytest.raises(ServerError) as info:
        while True:
            event = tx.receive(stub.answer(event.data))  # type: ignore[union-attr]
    assert tx.state is State.FAILED
    assert info.value.kind == "error_message" and info.value.protected
    assert info.value.fail_names == ("systemUnavail",)


def test_unprotected_error_is_a_server_error_unless_refused(stub: CaStub) -> None:
    status = PKIStatusInfo(PKIStatus.REJECTION, (), FailInfo.badMessageCheck.mask)
    answer_with(stub, lambda r, q: dataclasses.replace(error_reply(stub, q, status), protect="none"))
    tx = ClientTransaction(mac_config(stub), ir())
    with pytest.raises(ServerError) as info:
        tx.receive(stub.answer(tx.start().data))
    assert not info.value.protected and info.value.fail_names == ("badMessageCheck",)

    tx = ClientTransaction(mac_config(stub, accept_unprotected_errors=False), ir())
    with pytest.raises(UnprotectedMessage) as refused:
        tx.receive(stub.answer(tx.start().data))
    assert refused.value.kind == "unprotected" and tx.state is State.FAILED


# ---------------------------------------------------------------------------------------------
# Responses that must not be believed (each with its own error)


def _tid(reply: Reply, request: PKIMessage) -> Reply:
    return dataclasses.replace(reply, header=dataclasses.replace(reply.header, transaction_id=b"\x01" * 16))


def _nonce(reply: Reply, request: PKIMessage) -> Reply:
    return dataclasses.replace(reply, header=dataclasses.replace(reply.header, recip_nonce=b"\x02" * 16))


def _no_nonce(reply: Reply, request: PKIMessage) -> Reply:
    return dataclasses.replace(reply, header=dataclasses.replace(reply.header, recip_nonce=None))


def _pvno(reply: Reply, request: PKIMessage) -> Reply:
    return dataclasses.replace(reply, header=dataclasses.replace(reply.header, pvno=1))


def _unprotected(reply: Reply, request: PKIMessage) -> Reply:
    return dataclasses.replace(reply, protect="none")


def _wrong_body(reply: Reply, request: PKIMessage) -> Reply:
    return dataclasses.replace(reply, body_type=BodyType.KUP)


def _rp_for_ir(reply: Reply, request: PKIMessage) -> Reply:
    return dataclasses.replace(reply, body_type=BodyType.RP, body=RevRepContent((messages.ACCEPTED,)))


def _pkiconf_early(reply: Reply, request: PKIMessage) -> Reply:
    return dataclasses.replace(reply, body_type=BodyType.PKICONF, body=messages.PKIConfirmContent())


def _cert_req_id(reply: Reply, request: PKIMessage) -> Reply:
    resp = reply.body.responses[0]  # type: ignore[union-attr]
    return dataclasses.replace(reply, body=CertRepMessage((dataclasses.replace(resp, cert_req_id=5),), ()))


def _two_responses(reply: Reply, request: PKIMessage) -> Reply:
    resp = reply.body.responses[0]  # type: ignore[union-attr]
    return dataclasses.replace(reply, body=CertRepMessage((resp, resp), ()))


def _no_cert(reply: Reply, request: PKIMessage) -> Reply:
    return dataclasses.replace(reply, body=CertRepMessage((CertResponse(0, messages.ACCEPTED),), ()))


def _pollrep_unasked(reply: Reply, request: PKIMessage) -> Reply:
    return dataclasses.replace(reply, body_type=BodyType.POLLREP, body=PollRepContent((PollRepEntry(0, 1),)))


HOSTILE: dict[str, tuple[Callable[[Reply, PKIMessage], Reply], type[CmpError], str]] = {
    "wrong transactionID": (_tid, TransactionIdMismatch, "wrong_transaction_id"),
    "wrong recipNonce": (_nonce, RecipNonceMismatch, "wrong_recip_nonce"),
    "missing recipNonce": (_no_nonce, RecipNonceMismatch, "wrong_recip_nonce"),
    "pvno 1": (_pvno, BadVersion, "unsupported_version"),
    "unprotected ip": (_unprotected, UnprotectedMessage, "unprotected"),
    "kup for ir": (_wrong_body, UnexpectedBody, "unexpected_body"),
    "rp for ir": (_rp_for_ir, UnexpectedBody, "unexpected_body"),
    "pkiconf for ir": (_pkiconf_early, UnexpectedBody, "unexpected_body"),
    "pollRep unasked": (_pollrep_unasked, UnexpectedBody, "unexpected_body"),
    "certReqId 5": (_cert_req_id, CertReqIdMismatch, "wrong_cert_req_id"),
    "two responses": (_two_responses, UnexpectedBody, "unexpected_body"),
    "accepted without cert": (_no_cert, UnexpectedBody, "unexpected_body"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_response_is_refused(stub: CaStub, case: str) -> None:
    mutate, error, kind = HOSTILE[case]
    answer_with(stub, mutate)
    tx = ClientTransaction(mac_config(stub), ir())
    with pytest.raises(error) as info:
        tx.receive(stub.answer(tx.start().data))
    assert info.value.kind == kind
    assert tx.state is State.FAILED and tx.result is None
    assert "\n" not in str(info.value)


def test_replayed_response_is_refused(stub: CaStub) -> None:
    """The ip sent again in answer to certConf: its recipNonce is the ir's, not the certConf's."""
    tx = ClientTransaction(mac_config(stub), ir())
    ip = stub.answer(tx.start().data)
    tx.receive(ip)
    assert tx.state is State.AWAIT_CONFIRM
    with pytest.raises(RecipNonceMismatch):
        tx.receive(ip)
    assert tx.state is State.FAILED


def test_response_from_another_transaction_is_refused(stub: CaStub) -> None:
    other = ClientTransaction(mac_config(stub), ir())
    ip = stub.answer(other.start().data)
    tx = ClientTransaction(mac_config(stub), ir())
    tx.start()
    with pytest.raises(TransactionIdMismatch):
        tx.receive(ip)


def test_wrong_mac(stub: CaStub) -> None:
    stub.reply_secret = b"not the secret"
    tx = ClientTransaction(mac_config(stub), ir())
    with pytest.raises(BadMac) as info:
        tx.receive(stub.answer(tx.start().data))
    assert info.value.kind == "bad_mac" and tx.state is State.FAILED


def flip_protection(data: bytes) -> bytes:
    """The same message with one bit of its MAC or signature flipped."""
    msg = messages.decode(data)
    protection = bytearray(msg.protection or b"")
    protection[-1] ^= 1
    return messages.assemble(*_parts(msg), bytes(protection), msg.extra_certs)


def test_flipped_mac_bit(stub: CaStub) -> None:
    stub.tamper = flip_protection
    tx = ClientTransaction(mac_config(stub), ir())
    with pytest.raises(BadMac):
        tx.receive(stub.answer(tx.start().data))


def test_flipped_signature_bit(stub: CaStub) -> None:
    stub.ca_pubs = False
    stub.tamper = flip_protection
    tx = ClientTransaction(sig_config(stub), ir())
    with pytest.raises(BadSignature) as info:
        tx.receive(stub.answer(tx.start().data))
    assert info.value.kind == "bad_signature"


def _parts(msg: PKIMessage) -> tuple[bytes, bytes]:
    part = der.parse(msg.protected_part).children()
    return part[0].raw, part[1].raw


def test_signer_outside_the_trust_anchors(stub: CaStub) -> None:
    stub.ca_pubs = False
    config = sig_config(stub)
    stub.signer = issue(make_ca("Mallory Root"), "Mallory RA")
    tx = ClientTransaction(config, ir())
    with pytest.raises(UntrustedSigner) as info:
        tx.receive(stub.answer(tx.start().data))
    assert info.value.kind == "untrusted_signer" and tx.state is State.FAILED


def test_signature_response_without_trust_anchors(stub: CaStub) -> None:
    stub.ca_pubs = False
    device = stub.device()
    tx = ClientTransaction(ClientConfig(SignatureProtector(device.key, device.cert)), ir())
    with pytest.raises(UntrustedSigner):
        tx.receive(stub.answer(tx.start().data))


def test_mac_response_to_signed_request(stub: CaStub) -> None:
    answer_with(stub, lambda r, q: dataclasses.replace(r, protect="mac"))
    tx = ClientTransaction(sig_config(stub), ir())
    with pytest.raises(ProtectionError) as info:
        tx.receive(stub.answer(tx.start().data))
    assert info.value.kind == "bad_protection"


def test_signed_response_to_mac_request_needs_trust(stub: CaStub) -> None:
    stub.ca_pubs = False
    answer_with(stub, lambda r, q: dataclasses.replace(r, protect="signature"))
    tx = ClientTransaction(mac_config(stub, trust=TrustStore([stub.root.cert])), ir())
    assert isinstance(tx.receive(stub.answer(tx.start().data)), Send)  # trusted signer: fine
    tx = ClientTransaction(mac_config(stub), ir())
    with pytest.raises(UntrustedSigner):
        tx.receive(stub.answer(tx.start().data))


_WRONG_SECRET = PKIStatusInfo(PKIStatus.REJECTION, ("MAC does not verify",), FailInfo.badMessageCheck.mask)


def _signed_error(stub: CaStub, status: PKIStatusInfo = _WRONG_SECRET) -> None:
    """The CA answers a MAC request it cannot verify as a CA must: an error signed by its RA."""
    answer_with(stub, lambda r, q: dataclasses.replace(error_reply(stub, q, status), protect="signature"))


def test_signed_refusal_without_trust_anchors_is_reported_unverified(stub: CaStub) -> None:
    """Wrong secret, no --trusted: the user learns what the CA said (status, failInfo, text) and
    that it could not be checked, not only "signer does not chain"."""
    _signed_error(stub)
    tx = ClientTransaction(mac_config(stub), ir())
    with pytest.raises(UnverifiedRefusal) as info:
        tx.receive(stub.answer(tx.start().data))
    error = info.value
    assert isinstance(error, StatusError) and error.kind == "unverified_refusal"
    assert error.fail_names == ("badMessageCheck",) and "does not chain to a trusted anchor" in error.reason
    text = str(error)
    assert text.startswith("server error (unverified: ")
    assert 'rejection failInfo badMessageCheck "MAC does not verify"' in text and "--trusted" in text
    assert "\n" not in text and tx.state is State.FAILED and tx.result is None


def test_the_same_refusal_with_trust_anchors_is_a_verified_server_error(stub: CaStub) -> None:
    _signed_error(stub)
    tx = ClientTransaction(mac_config(stub, trust=TrustStore([stub.root.cert])), ir())
    with pytest.raises(ServerError) as info:
        tx.receive(stub.answer(tx.start().data))
    assert not isinstance(info.value, UnverifiedRefusal) and info.value.protected
    assert info.value.fail_names == ("badMessageCheck",) and "unverified" not in str(info.value)


def test_unverified_rejection_in_ip_gives_no_certificate(stub: CaStub) -> None:
    """An ip whose status is a rejection, signed by a stranger: reported, nothing taken from it
    (the stray certificate the body carries included)."""
    stranger = issue(make_ca("Mallory Root"), "Mallory RA")
    rejected = PKIStatusInfo(PKIStatus.REJECTION, ("policy\nsays\x07no",), FailInfo.badCertTemplate.mask)

    def reject(reply: Reply, request: PKIMessage) -> Reply:
        body = CertRepMessage((CertResponse(0, rejected, stub.issue_for(KEY.public_key())),))
        return dataclasses.replace(reply, body=body, protect="signature")

    answer_with(stub, reject)
    stub.signer = stranger
    tx = ClientTransaction(sig_config(stub), ir())  # trusts the stub's root, not Mallory's
    with pytest.raises(UnverifiedRefusal) as info:
        tx.receive(stub.answer(tx.start().data))
    text = str(info.value)
    assert text.startswith("ip: request rejected (unverified: signer certificate 'CN=Mallory RA'")
    assert "--trusted" not in text  # anchors were given; the signer just is not under them
    assert text.endswith('rejection failInfo badCertTemplate "policy says no"')  # one printable line
    assert tx.result is None and tx.state is State.FAILED


def test_untrusted_acceptance_is_never_believed(stub: CaStub) -> None:
    """Only refusals are reported unverified; an accepting ip from an unchecked signer still fails
    on its protection, its certificate never offered for certConf."""
    stub.ca_pubs = False
    answer_with(stub, lambda r, q: dataclasses.replace(r, protect="signature"))
    tx = ClientTransaction(mac_config(stub), ir())
    with pytest.raises(UntrustedSigner):
        tx.receive(stub.answer(tx.start().data))
    assert tx.result is None and tx.state is State.FAILED


def test_refusal_with_a_wrong_mac_is_unverified_and_can_be_refused(stub: CaStub) -> None:
    stub.reply_secret = b"not our secret"
    answer_with(stub, lambda r, q: error_reply(stub, q, _WRONG_SECRET))
    tx = ClientTransaction(mac_config(stub), ir())
    with pytest.raises(UnverifiedRefusal) as info:
        tx.receive(stub.answer(tx.start().data))
    assert info.value.fail_names == ("badMessageCheck",) and "--trusted" not in str(info.value)
    # A caller that accepts no unprotected errors gets no unverified ones either.
    _signed_error(stub)
    tx = ClientTransaction(mac_config(stub, accept_unprotected_errors=False), ir())
    with pytest.raises(UntrustedSigner):
        tx.receive(stub.answer(tx.start().data))


def test_ca_pubs_only_under_mac(stub: CaStub) -> None:
    """A conformance run can still refuse caPubs under signature protection (RFC 9483 §4.1.1)."""
    tx = ClientTransaction(sig_config(stub, refuse_signed_ca_pubs=True), ir())  # stub.ca_pubs is on by default
    with pytest.raises(CaPubsNotAllowed) as info:
        tx.receive(stub.answer(tx.start().data))
    assert info.value.kind == "capubs_not_allowed" and tx.state is State.FAILED
    assert "RFC 9483 §4.1.1" in str(info.value)


def test_ca_pubs_under_signature_are_dropped_and_the_certificate_accepted(stub: CaStub) -> None:
    """What real CAs do (OpenSSL's mock with -rsp_capubs): the enrollment succeeds, the caPubs
    never reach the caller as trust anchors, and the transaction says so once."""
    tx = ClientTransaction(sig_config(stub), ir())
    conf = step(tx, stub, tx.start(), State.AWAIT_CONFIRM)
    assert isinstance(conf, Send) and conf.body_type is BodyType.CERTCONF
    sent = messages.decode(conf.data).body.statuses[0]  # type: ignore[union-attr]
    assert sent.status_info is None  # the certConf accepts the certificate
    done = step(tx, stub, conf, State.DONE)
    assert isinstance(done, Done) and done.certificate is not None
    assert done.ca_pubs == () and done.warnings == ("capubs_ignored",)
    # Under MAC protection the same caPubs are the trust anchors, without a warning.
    tx = ClientTransaction(mac_config(stub), ir())
    done = step(tx, stub, step(tx, stub, tx.start(), State.AWAIT_CONFIRM), State.DONE)  # type: ignore[arg-type]
    assert done.ca_pubs == (stub.root_der,) and done.warnings == ()  # type: ignore[union-attr]


def test_3gpp_mode_takes_operator_root_from_ip_extra_certs(stub: CaStub) -> None:
    stub.ca_pubs = False
    device = stub.device()
    config = ClientConfig(SignatureProtector(device.key, device.cert), mode="3gpp")
    tx = ClientTransaction(config, ir())
    conf = step(tx, stub, tx.start(), State.AWAIT_CONFIRM)
    done = step(tx, stub, conf, State.DONE)  # type: ignore[arg-type]
    assert isinstance(done, Done) and done.operator_root == stub.root_der
    # Not for a cr: there the trust anchors must be configured.
    tx = ClientTransaction(config, CertRequest(BodyType.CR, KEY, SUBJECT))
    with pytest.raises(UntrustedSigner):
        tx.receive(stub.answer(tx.start().data))


def test_mac_iteration_count_is_capped(stub: CaStub) -> None:
    tx = ClientTransaction(mac_config(stub, max_iterations=1000), ir())
    request = messages.decode(tx.start().data)
    reply = stub.reply_to(request)
    params = PbmParams(b"salt", "sha256", 10**9, "sha256")
    header = dataclasses.replace(reply.header, protection_alg=params.encode())
    header_der = messages.encode_header(header)
    body_der = messages.encode_body(reply.body_type, reply.body)
    data = messages.assemble(header_der, body_der, b"\x00" * 32)
    with pytest.raises(UnsupportedAlgorithm) as info:
        tx.receive(data)
    assert info.value.kind == "bad_alg"


def test_issued_certificate_for_another_key_is_rejected_in_certconf(stub: CaStub) -> None:
    other = ec.generate_private_key(ec.SECP256R1())

    def swap(reply: Reply, request: PKIMessage) -> Reply:
        if reply.body_type is not BodyType.IP:
            return reply
        cert = stub.issue_for(other.public_key())
        return dataclasses.replace(reply, body=CertRepMessage((CertResponse(0, messages.ACCEPTED, cert),), ()))

    answer_with(stub, swap)
    tx = ClientTransaction(mac_config(stub), ir())
    conf = step(tx, stub, tx.start(), State.AWAIT_CONFIRM)
    assert isinstance(conf, Send) and conf.body_type is BodyType.CERTCONF
    status = messages.decode(conf.data).body.statuses[0]  # type: ignore[union-attr]
    assert status.status_info is not None and status.status_info.status == PKIStatus.REJECTION
    assert status.status_info.fail_names == ("badCertTemplate",)
    with pytest.raises(WrongPublicKey) as info:
        tx.receive(stub.answer(conf.data))
    assert info.value.kind == "wrong_public_key"
    assert tx.state is State.FAILED and tx.result is None


def test_caller_can_reject_a_certificate_it_cannot_keep(stub: CaStub) -> None:
    """A caller that cannot store the certificate sends a rejecting certConf instead of the
    accepting one; pkiConf then ends the transaction with that rejection and no certificate."""
    tx = ClientTransaction(mac_config(stub), ir())
    accepting = step(tx, stub, tx.start(), State.AWAIT_CONFIRM)
    assert isinstance(accepting, Send) and tx.result is not None and tx.result.certificate is not None
    issued = tx.result.certificate
    rejecting = tx.reject_certificate("the certificate could not be stored")
    assert rejecting.body_type is BodyType.CERTCONF and rejecting.data != accepting.data
    status = messages.decode(rejecting.data).body.statuses[0]  # type: ignore[union-attr]
    assert status.cert_hash == cert_hash(issued) and status.cert_req_id == 0
    assert status.status_info is not None and status.status_info.status == PKIStatus.REJECTION
    assert status.status_info.fail_names == ("systemFailure",)
    assert status.status_info.texts == ("the certificate could not be stored",)
    with pytest.raises(LocalProtocolError):
        tx.reject_certificate("twice")  # the rejection is already the answer
    done = step(tx, stub, rejecting, State.DONE)
    assert isinstance(done, Done) and done.certificate is None and done.status.status == PKIStatus.REJECTION
    assert len(stub.received) == 2  # the accepting certConf was never sent

    fresh = ClientTransaction(mac_config(stub), ir())
    with pytest.raises(LocalProtocolError):
        fresh.reject_certificate("nothing received yet")


def test_wrong_key_stays_the_error_when_the_rejection_is_answered_with_an_error(stub: CaStub) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    refused = PKIStatusInfo(PKIStatus.REJECTION, (), FailInfo.badCertTemplate.mask)

    def swap(reply: Reply, request: PKIMessage) -> Reply:
        if request.body_type is BodyType.CERTCONF:
            return error_reply(stub, request, refused)
        cert = stub.issue_for(other.public_key())
        return dataclasses.replace(reply, body=CertRepMessage((CertResponse(0, messages.ACCEPTED, cert),), ()))

    answer_with(stub, swap)
    tx = ClientTransaction(mac_config(stub), ir())
    conf = step(tx, stub, tx.start(), State.AWAIT_CONFIRM)
    with pytest.raises(WrongPublicKey):
        tx.receive(stub.answer(conf.data))  # type: ignore[union-attr]


def test_polling_limits(stub: CaStub) -> None:
    stub.polls = 10
    tx = ClientTransaction(mac_config(stub, max_polls=3), ir())
    event: Send | Done = tx.start()
    with pytest.raises(PollingLimit) as info:
        for _ in range(10):
            event = tx.receive(stub.answer(event.data))  # type: ignore[union-attr]
            assert tx.state is State.AWAIT_POLL
    assert info.value.kind == "poll_limit" and tx.state is State.FAILED and len(stub.received) == 4

    stub = CaStub(polls=3, check_after=86400 * 365)
    tx = ClientTransaction(mac_config(stub), ir())
    event = step(tx, stub, tx.start(), State.AWAIT_POLL)
    with pytest.raises(PollingLimit):
        tx.receive(stub.answer(event.data))  # type: ignore[union-attr]


def test_pollrep_for_another_cert_req_id(stub: CaStub) -> None:
    stub.polls = 3

    def other_id(reply: Reply, request: PKIMessage) -> Reply:
        if reply.body_type is BodyType.POLLREP:
            return dataclasses.replace(reply, body=PollRepContent((PollRepEntry(9, 0),)))
        return reply

    answer_with(stub, other_id)
    tx = ClientTransaction(mac_config(stub), ir())
    event = step(tx, stub, tx.start(), State.AWAIT_POLL)
    with pytest.raises(CertReqIdMismatch):
        tx.receive(stub.answer(event.data))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [b"", b"\x30", b"\x30\x03\x02\x01\x02", b"\x30\x84\xff\xff\xff\xff", b"garbage" * 10],
    ids=["empty", "one byte", "no body", "absurd length", "garbage"],
)
def test_malformed_bytes(stub: CaStub, data: bytes) -> None:
    tx = ClientTransaction(mac_config(stub), ir())
    tx.start()
    with pytest.raises(MalformedMessage) as info:
        tx.receive(data)
    assert info.value.kind == "malformed" and tx.state is State.FAILED


def test_truncated_response_at_every_length(stub: CaStub) -> None:
    """Every proper prefix of a valid ip is refused as malformed, never with another error."""
    tx = ClientTransaction(mac_config(stub), ir())
    request = tx.start()
    ip = stub.answer(request.data)
    for cut in range(0, len(ip), 7):
        copy = ClientTransaction(tx.config, ir(), transaction_id=tx.transaction_id, random=lambda n, d=request: _nonce_of(d))
        copy.start()
        with pytest.raises(MalformedMessage):
            copy.receive(ip[:cut])


def _nonce_of(send: Send) -> bytes:
    return messages.decode(send.data).header.sender_nonce or b""


# ---------------------------------------------------------------------------------------------
# Illegal moves by the caller


def test_illegal_moves_raise_local_protocol_error(stub: CaStub) -> None:
    tx = ClientTransaction(mac_config(stub), ir())
    with pytest.raises(LocalProtocolError) as info:
        tx.receive(b"anything")
    assert tx.state is State.IDLE and info.value.kind == "local_protocol_error"
    event = tx.start()
    with pytest.raises(LocalProtocolError):
        tx.start()
    assert tx.state is State.AWAIT_RESPONSE
    conf = step(tx, stub, event, State.AWAIT_CONFIRM)
    with pytest.raises(LocalProtocolError):
        tx.start()
    step(tx, stub, conf, State.DONE)  # type: ignore[arg-type]
    for move in (tx.start, lambda: tx.receive(b"")):
        with pytest.raises(LocalProtocolError):
            move()
        assert tx.state is State.DONE


def test_no_moves_after_failure(stub: CaStub) -> None:
    tx = ClientTransaction(mac_config(stub), ir())
    tx.start()
    with pytest.raises(MalformedMessage):
        tx.receive(b"\x00")
    for move in (tx.start, lambda: tx.receive(b"")):
        with pytest.raises(LocalProtocolError):
            move()
        assert tx.state is State.FAILED


def test_reprs_hide_the_secret(stub: CaStub) -> None:
    protector = MacProtector(b"sup3r-s3cret", reference=b"ref")
    assert "sup3r" not in repr(protector) and "sup3r" not in repr(ClientConfig(protector))


# ---------------------------------------------------------------------------------------------
# Real OpenSSL 3.0 responses (tests/data/openssl), replayed into a transaction whose
# transactionID and senderNonces are those of the captured requests


def _corpus(flow: str) -> tuple[list[PKIMessage], list[bytes]]:
    reqs = sorted(CORPUS.glob(f"{flow}.req*.der"))
    rsps = sorted(CORPUS.glob(f"{flow}.rsp*.der"))
    return [messages.decode(p.read_bytes()) for p in reqs], [p.read_bytes() for p in rsps]


def _pki(name: str) -> bytes:
    return (CORPUS / "pki" / name).read_bytes()


def _key(name: str) -> object:
    return serialization.load_pem_private_key(_pki(name), None)


def _cert(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(_pki(name))


def replay(flow: str, config: ClientConfig, request: object) -> Iterator[tuple[State, Send | Done]]:
    """Feed the flow's responses in order; yields the state and event after each."""
    reqs, rsps = _corpus(flow)
    nonces = iter(r.header.sender_nonce for r in reqs)
    tx = ClientTransaction(config, request, transaction_id=reqs[0].header.transaction_id, random=lambda n: next(nonces))  # type: ignore[arg-type]
    event: Send | Done = tx.start()
    for i, data in enumerate(rsps):
        assert isinstance(event, Send) and event.body_type is reqs[i].body_type
        event = tx.receive(data)
        yield tx.state, event


def _openssl_mac() -> ClientConfig:
    return ClientConfig(MacProtector(b"test1234", reference=b"1234"))  # as in pki/secret.txt


def _openssl_sig(cert: str = "client.crt", key: str = "client.key") -> ClientConfig:
    return ClientConfig(SignatureProtector(_key(key), _cert(cert)), TrustStore([_cert("root.crt")]))  # type: ignore[arg-type]


def _new_ir(**kw: object) -> CertRequest:
    return CertRequest(BodyType.IR, _key("new.key"), x509.Name.from_rfc4514_string("CN=Enrolled Device"), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("flow", ["ir_pbm", "ir_pbm_hmacsha256"])
def test_openssl_ip_with_hmac_sha1_pbm(flow: str) -> None:
    states = [(state, type(ev)) for state, ev in replay(flow, _openssl_mac(), _new_ir())]
    assert states == [(State.AWAIT_CONFIRM, Send), (State.DONE, Done)]


def test_openssl_polling() -> None:
    steps = list(replay("ir_poll", _openssl_mac(), _new_ir()))
    assert [state for state, _ in steps] == [State.AWAIT_POLL, State.AWAIT_POLL, State.AWAIT_CONFIRM, State.DONE]
    assert steps[-1][1].polls == 2  # type: ignore[union-attr]


def test_openssl_implicit_confirm() -> None:
    [(state, done)] = list(replay("ir_implicit", _openssl_mac(), _new_ir(implicit_confirm=True)))
    assert state is State.DONE and done.implicit_confirm  # type: ignore[union-attr]


def test_openssl_rejection_and_errors() -> None:
    with pytest.raises(RequestRejected) as rejected:
        list(replay("ir_rejected", _openssl_mac(), _new_ir()))
    assert rejected.value.fail_names  # the flow's -failure bit
    with pytest.raises(ServerError) as error:
        list(replay("ir_error", _openssl_mac(), _new_ir()))
    assert error.value.protected
    with pytest.raises(ServerError) as unprotected:
        list(replay("ir_error_unprot", _openssl_mac(), _new_ir()))
    assert not unprotected.value.protected


def test_openssl_signed_flows() -> None:
    new_key = _key("new.key")
    steps = list(replay("cr", _openssl_sig(), CertRequest(BodyType.CR, new_key, SUBJECT)))  # type: ignore[arg-type]
    assert [state for state, _ in steps] == [State.AWAIT_CONFIRM, State.DONE]
    kur = CertRequest(BodyType.KUR, new_key, old_cert=_cert("rsp.crt"))  # type: ignore[arg-type]
    assert list(replay("kur", _openssl_sig("rsp.crt", "new.key"), kur))[-1][0] is State.DONE
    csr = x509.load_pem_x509_csr(_pki("new.csr"))
    assert list(replay("p10cr", _openssl_sig(), CsrRequest(csr)))[-1][0] is State.DONE
    rr = RevocationRequest.for_certificate(_cert("rsp.crt"))
    [(state, done)] = list(replay("rr", _openssl_sig("rsp.crt", "new.key"), rr))
    assert state is State.DONE and done.status.status == PKIStatus.ACCEPTED  # type: ignore[union-attr]


def test_openssl_genm_echo() -> None:
    reqs, _ = _corpus("genm")
    items = reqs[0].body.items  # type: ignore[union-attr]
    [(state, done)] = list(replay("genm", _openssl_mac(), GeneralRequest(items)))
    assert state is State.DONE and done.items == items  # type: ignore[union-attr]


def test_openssl_signed_ip_with_ca_pubs_is_refused_when_asked() -> None:
    """The 3.0 mock puts caPubs into signature-protected ip: valid signature, refused by a strict
    client (RFC 9483 §4.1.1)."""
    config = dataclasses.replace(_openssl_sig(), refuse_signed_ca_pubs=True)
    with pytest.raises(CaPubsNotAllowed):
        list(replay("ir_sig", config, _new_ir()))


def test_openssl_signed_ip_with_ca_pubs_enrolls_without_trusting_them() -> None:
    """By default the same exchange enrolls; the caPubs are dropped and reported."""
    *_, (state, done) = list(replay("ir_sig", _openssl_sig(), _new_ir()))
    assert state is State.DONE and isinstance(done, Done)
    assert done.certificate is not None and done.ca_pubs == () and "capubs_ignored" in done.warnings


def test_openssl_response_with_one_byte_changed_is_refused() -> None:
    _, rsps = _corpus("ir_pbm")
    ip = bytearray(rsps[0])
    ip[len(ip) // 2] ^= 0x01  # somewhere inside the body: DER may still parse, the MAC must not
    reqs, _ = _corpus("ir_pbm")
    nonces = iter(r.header.sender_nonce for r in reqs)
    tx = ClientTransaction(_openssl_mac(), _new_ir(), transaction_id=reqs[0].header.transaction_id, random=lambda n: next(nonces))  # type: ignore[arg-type]
    tx.start()
    with pytest.raises((BadMac, MalformedMessage)):
        tx.receive(bytes(ip))


# ---------------------------------------------------------------------------------------------
# Certificates a hostile peer malformed: typed errors, never a bare ValueError from cryptography
# (which parses keys, names and extensions lazily)


def corrupt_key(cert_der: bytes) -> bytes:
    """The certificate with its EC point made unreadable (0x04 uncompressed -> 0x05, no such form)."""
    point = x509.load_der_x509_certificate(cert_der).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert cert_der.count(point) == 1
    return cert_der.replace(point, b"\x05" + point[1:])


def answer_with_certificate(stub: CaStub, change: Callable[[bytes], bytes]) -> None:
    """The stub's ip carries ``change`` of the certificate it issued."""

    def corrupt(reply: Reply, request: PKIMessage) -> Reply:
        resp = reply.body.responses[0]  # type: ignore[union-attr]
        bad = dataclasses.replace(resp, certificate=change(resp.certificate))
        return dataclasses.replace(reply, body=CertRepMessage((bad,), ()))

    answer_with(stub, corrupt)


def test_issued_certificate_with_a_malformed_key(stub: CaStub) -> None:
    answer_with_certificate(stub, corrupt_key)
    tx = ClientTransaction(mac_config(stub), ir())
    with pytest.raises(CertificateError) as info:
        tx.receive(stub.answer(tx.start().data))
    assert info.value.kind == "bad_certificate" and tx.state is State.FAILED


@pytest.mark.parametrize("mangle", [lambda c: c[:-10], lambda c: b"\x30\x03\x02\x01\x01", lambda c: c + b"\x00"])
def test_issued_certificate_that_is_not_a_certificate(stub: CaStub, mangle: Callable[[bytes], bytes]) -> None:
    answer_with_certificate(stub, mangle)
    tx = ClientTransaction(mac_config(stub), ir())
    with pytest.raises((CertificateError, MalformedMessage)):
        tx.receive(stub.answer(tx.start().data))
    assert tx.state is State.FAILED


def test_signer_certificate_with_a_malformed_key(stub: CaStub) -> None:
    stub.ca_pubs = False
    signer = stub.signer.der
    stub.tamper = lambda data: data.replace(signer, corrupt_key(signer))
    tx = ClientTransaction(sig_config(stub), ir())
    with pytest.raises(CertificateError):
        tx.receive(stub.answer(tx.start().data))


@pytest.mark.parametrize("protection", ["mac", "signature"])
def test_random_corruption_only_ever_raises_cmp_errors(stub: CaStub, protection: str) -> None:
    """Seeded byte edits of a valid ip (the signed one carries its unprotected extraCerts):
    each is accepted or refused with a CmpError, nothing else escapes."""
    stub.ca_pubs = False
    config = mac_config(stub) if protection == "mac" else sig_config(stub)
    the_request = ir()
    first = ClientTransaction(config, the_request)
    request = first.start()
    nonce = _nonce_of(request)
    good = stub.answer(request.data)
    rnd = random.Random(2024)
    outcomes: set[str] = set()
    for _ in range(400):
        data = bytearray(good)
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randrange(len(data))
            choice = rnd.random()
            if choice < 0.6:
                data[at] = rnd.randrange(256)
            elif choice < 0.8:
                del data[at]
            else:
                data.insert(at, rnd.randrange(256))
        tx = ClientTransaction(config, the_request, transaction_id=first.transaction_id, random=lambda n: nonce)
        tx.start()
        try:
            tx.receive(bytes(data))
            outcomes.add("accepted")
        except CmpError as exc:
            outcomes.add(exc.kind)
            assert tx.state is State.FAILED
    assert "malformed" in outcomes and len(outcomes) >= 4


@pytest.mark.parametrize(
    ("reference", "expected"),
    [(None, SUBJECT.public_bytes()),  # nothing names the secret: the subject, as openssl cmp sends
     (b"stub-ref", x509.Name.from_rfc4514_string("CN=stub-ref").public_bytes())],
    ids=["no reference: the subject", "reference: its name"],
)
def test_certconf_names_the_same_sender_as_the_request(stub: CaStub, reference: bytes | None, expected: bytes) -> None:
    # The request is released after start(); the sender is chosen once, so certConf still
    # names the subject rather than falling back to another name.
    config = ClientConfig(MacProtector(stub.secret, reference=reference, iterations=100))
    tx = ClientTransaction(config, ir())
    conf = step(tx, stub, tx.start(), State.AWAIT_CONFIRM)
    assert isinstance(conf, Send)
    step(tx, stub, conf, State.DONE)
    ir_msg, conf_msg = stub.received
    assert ir_msg.header.sender == conf_msg.header.sender == messages.directory_name(expected)


def test_same_key_compares_the_certificate_spki() -> None:
    from fleet.cmp.client import _same_key

    other = ec.generate_private_key(ec.SECP256R1())
    stub = CaStub()
    cert = issue(stub.root, "device 1", KEY).cert
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    assert _same_key(cert_der, cert, spki(KEY))
    assert not _same_key(cert_der, cert, spki(other))
    # bytes the fast path cannot walk: the answer comes from the re-encoded key instead
    assert _same_key(cert_der[:40], cert, spki(KEY))
    assert not _same_key(b"", cert, spki(other))


# ---------------------------------------------------------------------------------------------
# The transaction's clock


def test_message_time_is_the_system_clock_without_now(stub: CaStub) -> None:
    before = int(time.time())
    sent = ClientTransaction(mac_config(stub), ir()).start()
    after = int(time.time())
    stamp = messages.decode(sent.data).header.message_time
    assert stamp is not None and before <= stamp.timestamp() <= after


def test_message_time_is_the_transactions_now(stub: CaStub) -> None:
    when = datetime(2031, 5, 6, 7, 8, 9, 654321, tzinfo=UTC)
    sent = ClientTransaction(mac_config(stub), ir(), now=lambda: when).start()
    assert messages.decode(sent.data).header.message_time == when.replace(microsecond=0)


def test_signer_certificates_are_checked_at_the_transactions_time(stub: CaStub) -> None:
    """The RA certificate is valid for 30 days from a few minutes ago: a transaction whose clock
    is past that, or before it, refuses the signed answer, even after the same TrustStore has
    verified the path for a transaction running now."""
    stub.ca_pubs = False
    config = sig_config(stub)
    signer_validity = (stub.signer.cert.not_valid_before_utc, stub.signer.cert.not_valid_after_utc)

    def run(now: datetime) -> Send | Done:
        tx = ClientTransaction(config, ir(), now=lambda: now)
        return tx.receive(stub.answer(tx.start().data))

    assert isinstance(run(datetime.now(UTC)), Send)  # certConf: the path verified (and cached)
    for outside in (signer_validity[1] + timedelta(days=1), signer_validity[0] - timedelta(days=1)):
        with pytest.raises(UntrustedSigner, match="is not valid now"):
            run(outside)
    assert isinstance(run(signer_validity[1] - timedelta(hours=1)), Send)


# ---------------------------------------------------------------------------------------------
# The table


def test_events_are_an_enum_and_the_table_holds_the_next_states() -> None:
    assert all(isinstance(state, State) and isinstance(event, Event) for state, event in _TRANSITIONS)
    for (state, event), transition in _TRANSITIONS.items():
        assert transition.targets <= set(State) - {State.IDLE, State.FAILED}, (state, event)
        assert transition.handler.__qualname__.startswith("ClientTransaction._on_")
    assert Event.OTHER not in {event for _, event in _TRANSITIONS}


def test_the_table_renders_as_text_and_dot() -> None:
    assert transitions() == (
        "idle --start--> await_response | failed\n"
        "await_response --ip|cp|kup--> await_poll | await_confirm | done | failed\n"
        "await_response --rp--> await_poll | done | failed\n"
        "await_response --genp--> done | failed\n"
        "await_response --error--> await_poll | failed\n"
        "await_poll --ip|cp|kup--> await_poll | await_confirm | done | failed\n"
        "await_poll --rp--> await_poll | done | failed\n"
        "await_poll --genp--> done | failed\n"
        "await_poll --pollRep--> await_poll | failed\n"
        "await_poll --error--> failed\n"
        "await_confirm --pkiconf--> done | failed\n"
        "await_confirm --error--> failed\n"
    )
    dot = transitions("dot")
    assert dot.startswith("digraph cmp_client {\n") and dot.endswith("}\n")
    edges = {line.strip() for line in dot.splitlines() if "->" in line}
    expected = {
        f'{state.value} -> {target.value} [label="{event.value}"];'
        for (state, event), t in _TRANSITIONS.items()
        for target in t.targets
    }
    assert edges == expected
    with pytest.raises(ValueError, match="text or dot"):
        transitions("svg")  # type: ignore[arg-type]


def test_only_advance_assigns_the_state() -> None:
    """h11's rule: one place sets the state (besides the constructor's IDLE)."""
    import ast
    import inspect

    from fleet.cmp import client as client_module

    tree = ast.parse(inspect.getsource(client_module))
    assigning = {
        func.name
        for func in ast.walk(tree)
        if isinstance(func, ast.FunctionDef)
        for node in ast.walk(func)
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute) and target.attr == "state"
    }
    assert assigning == {"__init__", "_advance"}


def test_a_transition_leading_outside_its_targets_is_refused(stub: CaStub, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table's targets are enforced: a handler whose output leads elsewhere fails the
    transaction rather than moving it."""
    from fleet.cmp import client as client_module

    key = (State.AWAIT_RESPONSE, Event.CERT_RESPONSE)
    narrowed = client_module.Transition(_TRANSITIONS[key].handler, frozenset({State.DONE}))
    monkeypatch.setitem(_TRANSITIONS, key, narrowed)
    tx = ClientTransaction(mac_config(stub), ir())
    with pytest.raises(LocalProtocolError, match="cannot lead to await_confirm"):
        tx.receive(stub.answer(tx.start().data))
    assert tx.state is State.FAILED
