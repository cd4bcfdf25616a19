"""Nested messages (RFC 9810 §5.1.3.4, RFC 9483 §5.2.2.1) in the core and at the CA.

fleet's envelopes are read back with pyasn1-alt-modules; envelopes built with pyasn1 are sent to
fleet's CA (``NestedServer`` around the real ``Authority``): accepted from a trusted RA and
answered in kind, refused with their own failInfo when the RA is not trusted, when the batch
repeats a transactionID or when the envelope is MAC-protected; a bad inner MAC costs only its
own message. raVerified POP is accepted only from a trusted RA's signature.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import decoder, encoder
from pyasn1_alt_modules import rfc9480

from fleet.ca.authority import Authority
from fleet.cmp import messages
from fleet.cmp.messages import (
    BodyType,
    FailInfo,
    NestedMessageContent,
    PKIConfirmContent,
    PKIHeader,
    PKIMessage,
)
from fleet.cmp.nested import NestedError, index, unwrap, wrap
from fleet.cmp.nested_server import NestedServer, is_nested
from fleet.cmp.protection import SignatureProtector, verify_signature
from fleet.cmp.server import ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets

from . import pyasn1_requests as P
from .ca_stub import Credentials, issue, make_ca

SECRET = b"nested-secret"
REF = b"nested-ref"


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ra_pki() -> tuple[Credentials, Credentials, Credentials]:
    """An RA root, an RA under it, and a stranger signing with a certificate of another root."""
    root = make_ca("RA Root")
    return root, issue(root, "Test RA"), issue(make_ca("Stranger Root"), "Stranger RA")


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[Authority]:
    auth = Authority.open(tmp_path / "ca", base_url="http://127.0.0.1:9")
    yield auth
    auth.close()


def make_server(authority: Authority, ra_trusted: tuple[x509.Certificate, ...] = (),
                trusted: tuple[x509.Certificate, ...] = ()) -> NestedServer:
    return NestedServer(authority.server(
        config=ServerConfig(grant_implicit_confirm=False), secrets=SharedSecrets({REF: SECRET}),
        trusted=trusted, ra_trusted=ra_trusted,
    ))


def mac_ir(cn: str, *, secret: bytes = SECRET, tid: bytes | None = None) -> bytes:
    msg = P.new_message("ir")
    P.cert_request(msg, "ir", new_key(), name(cn))
    return P.protect(msg, P.Mac(secret, REF), P.Header(transaction_id=tid or os.urandom(16)))


def pyasn1_nested(inner: list[bytes], signer: Credentials, *, mac: bool = False) -> bytes:
    """A nested message built by pyasn1: ``inner`` in order, signed by ``signer`` (or MACed)."""
    msg = P.new_message("nested")
    for data in inner:
        msg["body"]["nested"].append(decoder.decode(data, asn1Spec=rfc9480.PKIMessage())[0])
    protection = P.Mac(SECRET, REF) if mac else P.Signed(signer.key, signer.cert)
    return P.protect(msg, protection)


def read_nested(data: bytes) -> tuple[rfc9480.PKIMessage, list[P.Answer]]:
    """A nested answer read with pyasn1: the envelope and each inner answer."""
    msg, rest = decoder.decode(data, asn1Spec=rfc9480.PKIMessage())
    assert rest == b""
    assert msg["body"].getName() == "nested"
    return msg, [P.Answer.read(encoder.encode(m)) for m in msg["body"]["nested"]]


def issued(authority: Authority) -> int:
    return sum(authority.store.counts_by_status().values())


# ---------------------------------------------------------------------------------------------
# The core: wrap and unwrap


def test_wrap_decodes_with_pyasn1_to_the_inner_messages_and_verifies(ra_pki) -> None:  # type: ignore[no-untyped-def]
    _, ra, _ = ra_pki
    inner = [mac_ir("a"), mac_ir("b"), mac_ir("c")]
    signer = SignatureProtector(ra.key, ra.cert, ra.chain)
    tid, nonce = os.urandom(16), os.urandom(16)
    data = wrap(inner, signer, transaction_id=tid, sender_nonce=nonce, now=time.time())
    msg, rest = decoder.decode(data, asn1Spec=rfc9480.PKIMessage())
    assert rest == b""
    assert msg["body"].getName() == "nested"
    assert [encoder.encode(m) for m in msg["body"]["nested"]] == inner
    h = msg["header"]
    assert bytes(h["transactionID"]) == tid and bytes(h["senderNonce"]) == nonce
    assert bytes(h["senderKID"]) == signer.sender_kid
    assert encoder.encode(h["sender"]["directoryName"]["rdnSequence"]) == ra.cert.subject.public_bytes()
    assert x509.load_der_x509_certificate(encoder.encode(msg["extraCerts"][0])) == ra.cert
    ours = messages.decode(data)
    verify_signature(ours.header.protection_alg, ra.cert.public_key(), ours.protected_part, ours.protection)
    assert [m.header.transaction_id for m in unwrap(ours)] == [messages.decode(i).header.transaction_id for i in inner]
    assert is_nested(data) and not is_nested(inner[0])


def _envelope(inner: tuple[bytes, ...]) -> PKIMessage:
    header = PKIHeader(messages.NULL_DN_GENERAL_NAME, messages.NULL_DN_GENERAL_NAME, os.urandom(16), os.urandom(16))
    return PKIMessage(header, BodyType.NESTED, NestedMessageContent(inner))


def test_unwrap_refusals_have_their_own_fail_info() -> None:
    tid = os.urandom(16)
    pkiconf = messages.encode(PKIMessage(
        PKIHeader(messages.NULL_DN_GENERAL_NAME, messages.NULL_DN_GENERAL_NAME, os.urandom(16)),
        BodyType.PKICONF, PKIConfirmContent()))
    nested_inner = messages.encode(_envelope((pkiconf,)))
    cases = [
        ((), FailInfo.badRequest, "no PKIMessage"),
        ((b"\x30\x03\x02\x01\x00",), FailInfo.badDataFormat, "does not decode"),
        ((nested_inner,), FailInfo.badRequest, "itself nested"),
        ((mac_ir("x", tid=tid), mac_ir("y", tid=tid)), FailInfo.transactionIdInUse, "repeats the transactionID"),
    ]
    for read in (unwrap, index):  # the strict reader and the header-only one agree
        for inner, fail, text in cases:
            with pytest.raises(NestedError) as err:
                read(_envelope(inner))
            assert err.value.fail is fail and text in err.value.text, (read, text)
        with pytest.raises(NestedError) as err:
            read(_envelope((mac_ir("a"), mac_ir("b"))), max_messages=1)
        assert err.value.fail is FailInfo.badRequest
    good = (mac_ir("a"), mac_ir("b"))
    assert index(_envelope(good)) == {messages.decode(m).header.transaction_id: m for m in good}


# ---------------------------------------------------------------------------------------------
# The CA: pyasn1 envelopes in, nested answers out


def test_ca_answers_a_trusted_batch_in_kind_and_confirms_in_a_second_batch(authority: Authority, ra_pki) -> None:  # type: ignore[no-untyped-def]
    root, ra, _ = ra_pki
    server = make_server(authority, ra_trusted=(root.cert,))
    inner = [mac_ir(f"batch-{i}") for i in range(3)]
    envelope = pyasn1_nested(inner, ra)
    reply = server.handle(envelope, time.time())
    outer, answers = read_nested(reply.data)
    sent = decoder.decode(envelope, asn1Spec=rfc9480.PKIMessage())[0]["header"]
    assert bytes(outer["header"]["recipNonce"]) == bytes(sent["senderNonce"])
    assert bytes(outer["header"]["transactionID"]) == bytes(sent["transactionID"])
    assert [(a.body, a.status) for a in answers] == [("ip", 0)] * 3
    assert [a.transaction_id for a in answers] == [messages.decode(i).header.transaction_id for i in inner]
    assert [o.status for o in server.inner_outcomes] == ["accepted"] * 3
    # The envelope is signed by the CA's CMP signer.
    ours = messages.decode(reply.data)
    signer = x509.load_der_x509_certificate(ours.extra_certs[0])
    verify_signature(ours.header.protection_alg, signer.public_key(), ours.protected_part, ours.protection)
    # certConf of all three in one more batch: three pkiConf.
    confs = []
    for answer in answers:
        conf = P.new_message("certConf")
        P.cert_conf(conf, answer.certificate)
        confs.append(P.protect(conf, P.Mac(SECRET, REF), P.Header(transaction_id=answer.transaction_id,
                                                                 recip_nonce=answer.sender_nonce)))
    _, done = read_nested(server.handle(pyasn1_nested(confs, ra), time.time()).data)
    assert [a.body for a in done] == ["pkiconf"] * 3
    assert authority.store.counts_by_status().get("issued") == 3


def test_nested_from_an_untrusted_ra_is_refused_and_issues_nothing(authority: Authority, ra_pki) -> None:  # type: ignore[no-untyped-def]
    root, _, stranger = ra_pki
    server = make_server(authority, ra_trusted=(root.cert,))
    answer = P.Answer.read(server.handle(pyasn1_nested([mac_ir("s")], stranger), time.time()).data)
    assert (answer.body, answer.fail) == ("error", ("signerNotTrusted",))
    assert issued(authority) == 0


def test_nested_at_a_ca_trusting_no_ra_is_not_authorized(authority: Authority, ra_pki) -> None:  # type: ignore[no-untyped-def]
    _, ra, _ = ra_pki
    server = make_server(authority)
    answer = P.Answer.read(server.handle(pyasn1_nested([mac_ir("n")], ra), time.time()).data)
    assert (answer.body, answer.fail) == ("error", ("notAuthorized",))
    assert issued(authority) == 0


def test_mac_protected_envelope_is_not_authorized(authority: Authority, ra_pki) -> None:  # type: ignore[no-untyped-def]
    root, ra, _ = ra_pki
    server = make_server(authority, ra_trusted=(root.cert,))
    answer = P.Answer.read(server.handle(pyasn1_nested([mac_ir("m")], ra, mac=True), time.time()).data)
    assert (answer.body, answer.fail) == ("error", ("notAuthorized",))
    assert issued(authority) == 0


def test_bad_inner_mac_costs_only_its_own_answer(authority: Authority, ra_pki) -> None:  # type: ignore[no-untyped-def]
    root, ra, _ = ra_pki
    server = make_server(authority, ra_trusted=(root.cert,))
    inner = [mac_ir("good-1"), mac_ir("forged", secret=b"wrong secret"), mac_ir("good-2")]
    _, answers = read_nested(server.handle(pyasn1_nested(inner, ra), time.time()).data)
    assert [(a.body, a.fail) for a in answers] == [("ip", ()), ("error", ("badMessageCheck",)), ("ip", ())]
    assert issued(authority) == 2


def test_batch_with_duplicate_transaction_ids_is_refused_whole(authority: Authority, ra_pki) -> None:  # type: ignore[no-untyped-def]
    root, ra, _ = ra_pki
    server = make_server(authority, ra_trusted=(root.cert,))
    tid = os.urandom(16)
    envelope = pyasn1_nested([mac_ir("d1", tid=tid), mac_ir("other"), mac_ir("d2", tid=tid)], ra)
    answer = P.Answer.read(server.handle(envelope, time.time()).data)
    assert (answer.body, answer.fail) == ("error", ("transactionIdInUse",))
    assert issued(authority) == 0


def test_tampered_envelope_signature_is_bad_message_check(authority: Authority, ra_pki) -> None:  # type: ignore[no-untyped-def]
    root, ra, _ = ra_pki
    server = make_server(authority, ra_trusted=(root.cert,))
    envelope = bytearray(pyasn1_nested([mac_ir("t")], ra))
    at = bytes(envelope).index(b"nested-ref")  # inside the inner message: the envelope's signature breaks
    envelope[at] ^= 1
    answer = P.Answer.read(server.handle(bytes(envelope), time.time()).data)
    assert (answer.body, answer.fail) == ("error", ("badMessageCheck",))
    assert issued(authority) == 0


# ---------------------------------------------------------------------------------------------
# raVerified POP: only from a trusted RA


def ra_verified_ir(signer: Credentials, cn: str) -> bytes:
    msg = P.new_message("ir")
    crm = msg["body"]["ir"]
    crm.append(crm.componentType.clone())
    req = crm[0]
    req["certReq"]["certReqId"] = 0
    P.set_name(req["certReq"]["certTemplate"]["subject"], name(cn))
    P._spki_into(req["certReq"]["certTemplate"]["publicKey"], new_key().public_key())
    req["popo"]["raVerified"] = req["popo"]["raVerified"].clone("")
    return P.protect(msg, P.Signed(signer.key, signer.cert, tuple(c.public_bytes(Encoding.DER) for c in signer.chain)))


def test_ra_verified_pop_only_from_a_trusted_ra(authority: Authority, ra_pki) -> None:  # type: ignore[no-untyped-def]
    root, ra, _ = ra_pki
    other_root = make_ca("Device Root")
    device = issue(other_root, "signing device")
    server = make_server(authority, ra_trusted=(root.cert,), trusted=(other_root.cert,))
    accepted = P.Answer.read(server.handle(ra_verified_ir(ra, "via-ra"), time.time()).data)
    assert (accepted.body, accepted.status) == ("ip", 0)
    cert = x509.load_der_x509_certificate(accepted.certificate)
    assert cert.subject == name("via-ra")
    refused = P.Answer.read(server.handle(ra_verified_ir(device, "not-an-ra"), time.time()).data)
    assert (refused.body, refused.status, refused.fail) == ("ip", 2, ("badPOP",))
    # Inside a trusted envelope, an inner raVerified request signed by the RA itself is accepted too.
    _, answers = read_nested(server.handle(pyasn1_nested([ra_verified_ir(ra, "inner-ra")], ra), time.time()).data)
    assert (answers[0].body, answers[0].status) == ("ip", 0)


def test_signature_of_a_key_unrelated_to_the_certificate_is_refused(authority: Authority, ra_pki) -> None:  # type: ignore[no-untyped-def]
    """An envelope whose signature is made by another key than its certificate's."""
    root, ra, _ = ra_pki
    server = make_server(authority, ra_trusted=(root.cert,))
    impostor = Credentials(new_key(), ra.cert, ra.chain)
    answer = P.Answer.read(server.handle(pyasn1_nested([mac_ir("i")], impostor), time.time()).data)
    assert (answer.body, answer.fail) == ("error", ("badMessageCheck",))
    assert issued(authority) == 0
