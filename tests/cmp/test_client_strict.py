"""The requests fleet's client sends, checked as a strict RFC 9483 server checks them
(``strict_lwcmp``: pyasn1-alt-modules, independent of fleet's codec): the MAC sender names the
senderKID's entity, an rr carries exactly one CRLReason, a signed request carries the chain of a
certificate an intermediate issued; and the iteration caps a MAC-protected response meets."""

from __future__ import annotations

import dataclasses

import pytest
import strict_lwcmp as strict
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.cmp import messages
from fleet.cmp.client import ClientConfig, ClientTransaction, Done, State
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import (
    DEFAULT_MAX_PBM_ITERATIONS,
    DEFAULT_MAX_PBMAC1_ITERATIONS,
    IterationCountRefused,
    MacProtector,
    Pbmac1Params,
    PbmParams,
    SignatureProtector,
    sender_for_reference,
)
from fleet.cmp.requests import CertRequest, GeneralRequest, RevocationRequest
from fleet.cmp.trust import TrustStore, signer_chain

from .ca_stub import CaStub, Credentials, make_ca, make_cert

KEY = ec.generate_private_key(ec.SECP256R1())
SUBJECT = x509.Name.from_rfc4514_string("CN=device-1")
CN = "2.5.4.3"


def run(tx: ClientTransaction, stub: CaStub) -> list[bytes]:
    """Drive ``tx`` against the stub to the end; the bytes of every request sent."""
    sent = []
    event = tx.start()
    while True:
        sent.append(event.data)
        result = tx.receive(stub.answer(event.data))
        if isinstance(result, Done):
            assert tx.state is State.DONE
            return sent
        event = result


def mac(stub: CaStub, reference: bytes | None, **kw: object) -> ClientConfig:
    return ClientConfig(MacProtector(stub.secret, reference=reference, iterations=100, **kw))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# MAC: sender and senderKID name the same entity (RFC 9483 §3.1)


@pytest.mark.parametrize(
    ("reference", "sender"),
    [
        (b"dev-00000001", [(CN, "dev-00000001")]),  # a plain reference: CN=<reference>
        (b"CN=fleet-test", [(CN, "fleet-test")]),  # a reference that is a name: that name, never CN=CN=
        (b"/CN=fleet-test", [(CN, "fleet-test")]),  # OpenSSL's spelling of the same name
        (b"CN=gnb-7,O=Operator", [("2.5.4.10", "Operator"), (CN, "gnb-7")]),
        (b"1234", [(CN, "1234")]),  # the reference OpenSSL's mock CA is started with
    ],
)
@pytest.mark.parametrize("operation", ["ir", "genm"])
def test_mac_sender_names_the_reference(reference: bytes, sender: list[tuple[str, str]], operation: str) -> None:
    """Every message of the transaction (ir and certConf, or genm) passes the strict server's
    checks, the MAC verifying with the secret; the sender is the reference's name, not the
    requested subject (the strict server refused --ref CN=fleet-test --subject /CN=device-1)."""
    stub = CaStub()
    request = CertRequest(BodyType.IR, KEY, SUBJECT) if operation == "ir" else GeneralRequest((messages.InfoTypeAndValue("1.3.6.1.5.5.7.4.17"),))
    sent = run(ClientTransaction(mac(stub, reference), request), stub)
    assert len(sent) == (2 if operation == "ir" else 1)
    for data in sent:
        assert strict.problems(data, secret=stub.secret) == []
        assert strict.sender_attributes(data) == sender
        assert not any(value.upper().startswith("CN=") for _, value in strict.sender_attributes(data))


def test_reference_that_is_not_utf8_is_named_by_its_hex() -> None:
    name = sender_for_reference(b"\xff\x01")
    assert name == x509.Name.from_rfc4514_string("CN=ff01").public_bytes()


def test_explicit_sender_name_is_sent_and_a_mismatch_is_what_strict_servers_refuse() -> None:
    """The protector's own sender name wins over the default; the strict check is not vacuous:
    a sender that does not name the senderKID is reported."""
    stub = CaStub()
    other = x509.Name.from_rfc4514_string("CN=somebody-else").public_bytes()
    [data, _] = run(ClientTransaction(mac(stub, b"dev-00000001", sender_name=other), CertRequest(BodyType.IR, KEY, SUBJECT)), stub)
    assert strict.sender_attributes(data) == [(CN, "somebody-else")]
    assert strict.problems(data, secret=stub.secret) == ["MAC protection: sender does not name the senderKID's entity"]
    assert strict.problems(data, secret=b"wrong") == [
        "MAC protection: sender does not name the senderKID's entity", "MAC does not verify",
    ]


def test_pbmac1_requests_pass_the_strict_mac_check() -> None:
    stub = CaStub()
    config = ClientConfig(MacProtector(stub.secret, reference=b"CN=fleet-test", pbmac1=True, iterations=1000))
    for data in run(ClientTransaction(config, CertRequest(BodyType.IR, KEY, SUBJECT)), stub):
        assert strict.problems(data, secret=stub.secret) == []


# ---------------------------------------------------------------------------------------------
# rr: exactly one CRLReason (RFC 9483 §4.2)


def _signed(stub: CaStub, device: Credentials) -> ClientConfig:
    return ClientConfig(SignatureProtector(device.key, device.cert), TrustStore([stub.root.cert]))


@pytest.mark.parametrize(("given", "sent"), [({}, [0]), ({"reason": 1}, [1]), ({"reason": 4}, [4])],
                         ids=["default: unspecified", "keyCompromise", "superseded"])
def test_rr_carries_exactly_one_crl_reason(given: dict[str, int], sent: list[int]) -> None:
    stub = CaStub()
    device = stub.device()
    [data] = run(ClientTransaction(_signed(stub, device), RevocationRequest.for_certificate(device.cert, **given)), stub)
    assert strict.crl_reasons(data) == sent
    assert strict.problems(data, anchors=[stub.root.cert]) == []


def test_rr_without_a_reason_is_what_strict_servers_refuse() -> None:
    """None still sends none (openssl cmp's default, for testing servers); the check sees it."""
    stub = CaStub()
    device = stub.device()
    [data] = run(ClientTransaction(_signed(stub, device), RevocationRequest.for_certificate(device.cert, None)), stub)
    assert strict.crl_reasons(data) == []
    assert strict.problems(data, anchors=[stub.root.cert]) == ["rr without crlEntryDetails: no CRLReason"]


# ---------------------------------------------------------------------------------------------
# Signature protection: the chain in extraCerts (RFC 9483 §3.3)


def child(issuer: Credentials, cn: str, *, ca: bool = False) -> Credentials:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string(f"CN={cn}")
    return Credentials(key, make_cert(name, key.public_key(), issuer, key, ca=ca), (issuer.cert,))


@pytest.fixture
def hierarchy() -> tuple[Credentials, Credentials, Credentials]:
    """root -> intermediate -> device."""
    root = make_ca("Strict Root")
    intermediate = child(root, "Strict Issuing CA", ca=True)
    device = child(intermediate, "device-9")
    return root, intermediate, device


def test_kur_signed_by_a_certificate_from_an_intermediate_carries_the_chain(hierarchy) -> None:  # type: ignore[no-untyped-def]
    root, intermediate, device = hierarchy
    stub = CaStub(ca_pubs=False)
    chain = signer_chain(device.cert, [root.cert, intermediate.cert])
    assert chain == (intermediate.cert,)  # the self-signed root is left out, as openssl cmp does
    config = ClientConfig(SignatureProtector(device.key, device.cert, chain), TrustStore([stub.root.cert]))
    request = CertRequest(BodyType.KUR, ec.generate_private_key(ec.SECP256R1()), old_cert=device.cert)
    sent = run(ClientTransaction(config, request), stub)
    for data in sent:  # kur and certConf
        assert strict.extra_cert_subjects(data) == ["CN=device-9", "CN=Strict Issuing CA"]
        assert strict.problems(data, anchors=[root.cert]) == []
    # Without the chain the strict server refuses it: the check is not vacuous.
    bare = ClientConfig(SignatureProtector(device.key, device.cert), TrustStore([stub.root.cert]))
    [data, _] = run(ClientTransaction(bare, dataclasses.replace(request)), stub)
    assert strict.problems(data, anchors=[root.cert]) == [
        "the certificate chain was not present: no issuer of 'CN=device-9'"
    ]


def test_signer_chain_takes_only_real_issuers(hierarchy) -> None:  # type: ignore[no-untyped-def]
    root, intermediate, device = hierarchy
    # A CA of the same name with another key, a non-CA of that name, the device itself: not issuers.
    impostor = child(root, "Strict Issuing CA", ca=True)
    not_ca = child(root, "Strict Issuing CA")
    assert signer_chain(device.cert, [impostor.cert, not_ca.cert, device.cert, root.cert]) == ()
    assert signer_chain(device.cert, [impostor.cert, intermediate.cert]) == (intermediate.cert,)
    # Two levels of intermediates, found in any order; a trust anchor that is not self-signed is sent.
    sub = child(intermediate, "Strict Sub CA", ca=True)
    leaf = child(sub, "leaf")
    assert signer_chain(leaf.cert, [root.cert, intermediate.cert, sub.cert]) == (sub.cert, intermediate.cert)
    # Certificates the user gives explicitly (--extracerts) follow the chain, sent as given.
    assert signer_chain(leaf.cert, [sub.cert], extra=[sub.cert, root.cert]) == (sub.cert, root.cert)
    # A self-signed protection certificate has no chain.
    assert signer_chain(root.cert, [intermediate.cert]) == ()


# ---------------------------------------------------------------------------------------------
# Iteration caps on MAC-protected responses


def _answer_with_mac(stub: CaStub, tx: ClientTransaction, protector: MacProtector) -> bytes:
    """The stub's answer to the transaction's first request, MAC-protected by ``protector``."""
    request = messages.decode(tx.start().data)
    reply = stub.reply_to(request)
    header = dataclasses.replace(reply.header, protection_alg=protector.algorithm, sender_kid=stub.reference)
    header_der = messages.encode_header(header)
    body_der = messages.encode_body(reply.body_type, reply.body)
    protection = protector.protect(messages.protected_part(header_der, body_der))
    return messages.assemble(header_der, body_der, protection, reply.extra_certs)


def test_pbmac1_with_262144_iterations_is_accepted_by_default() -> None:
    """The count the independent CA answered with; refused before ("outside 1..100000")."""
    stub = CaStub()
    tx = ClientTransaction(mac(stub, b"dev-00000001"), CertRequest(BodyType.IR, KEY, SUBJECT))
    answer = _answer_with_mac(stub, tx, MacProtector(stub.secret, pbmac1=True, iterations=262_144))
    conf = tx.receive(answer)
    assert tx.state is State.AWAIT_CONFIRM and conf.body_type is BodyType.CERTCONF  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("config_cap", "pbmac1", "count", "shown"),
    [
        (None, True, DEFAULT_MAX_PBMAC1_ITERATIONS + 1, f"PBMAC1 iteration count 1000001 is outside 1..{DEFAULT_MAX_PBMAC1_ITERATIONS}"),
        (None, False, DEFAULT_MAX_PBM_ITERATIONS + 1, f"PasswordBasedMac iteration count 100001 is outside 1..{DEFAULT_MAX_PBM_ITERATIONS}"),
        (100_000, True, 262_144, "PBMAC1 iteration count 262144 is outside 1..100000"),
    ],
    ids=["pbmac1 default cap", "pbm default cap", "lowered cap"],
)
def test_iteration_counts_above_the_cap_are_refused_naming_the_option(
    config_cap: int | None, pbmac1: bool, count: int, shown: str
) -> None:
    """Refused before any key derivation (the count is read first), in words that say which
    setting raises the cap."""
    stub = CaStub()
    config = dataclasses.replace(mac(stub, b"dev-1"), max_iterations=config_cap)
    tx = ClientTransaction(config, CertRequest(BodyType.IR, KEY, SUBJECT))
    params: PbmParams | Pbmac1Params = (
        Pbmac1Params(b"s" * 16, count, 32, "sha256", "sha256") if pbmac1 else PbmParams(b"s" * 16, "sha256", count, "sha256")
    )
    reply = stub.reply_to(messages.decode(tx.start().data))
    header_der = messages.encode_header(dataclasses.replace(reply.header, protection_alg=params.encode()))
    body_der = messages.encode_body(reply.body_type, reply.body)
    with pytest.raises(IterationCountRefused) as info:
        tx.receive(messages.assemble(header_der, body_der, b"\x00" * 32, ()))
    assert str(info.value).startswith(shown)
    assert "--max-iterations" in str(info.value) and "max_iterations" in str(info.value)
    assert info.value.kind == "bad_alg" and tx.state is State.FAILED


def test_a_raised_cap_admits_the_count() -> None:
    stub = CaStub()
    tx = ClientTransaction(mac(stub, b"dev-1"), CertRequest(BodyType.IR, KEY, SUBJECT))
    tx.config = dataclasses.replace(tx.config, max_iterations=DEFAULT_MAX_PBM_ITERATIONS + 1)
    answer = _answer_with_mac(stub, tx, MacProtector(stub.secret, iterations=DEFAULT_MAX_PBM_ITERATIONS + 1))
    tx.receive(answer)
    assert tx.state is State.AWAIT_CONFIRM

