"""A small, correct CMP CA for tests: answers one decoded request at a time, without I/O.

``CaStub.answer(request_der) -> response_der`` handles ir/cr/kur/p10cr/certConf/rr/genm/pollReq the
way RFC 9483 asks: a real certificate issued with ``cryptography`` for the requested key, the
header echoing transactionID and senderNonce, protection of the request's kind (MAC with the
stub's secret, or a signature by the stub's RA certificate with its chain in extraCerts).

Tests make it misbehave in two places: ``mutate(reply, request)`` edits the decoded answer before
it is protected (wrong nonce, another body, a certificate for another key), and ``tamper(der)``
edits the finished bytes (flip a MAC bit, truncate). Changing ``secret`` or ``signer`` makes the
protection wrong in the ordinary way.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.cmp import der, messages, oids
from fleet.cmp.messages import (
    BodyType,
    CertRepMessage,
    CertReqMessages,
    CertResponse,
    ErrorMsgContent,
    GenMsgContent,
    InfoTypeAndValue,
    P10Request,
    PKIConfirmContent,
    PKIHeader,
    PKIMessage,
    PKIStatus,
    PKIStatusInfo,
    PollRepContent,
    PollRepEntry,
    RevRepContent,
)
from fleet.cmp.protection import MacProtector, Signer, is_mac_algorithm, subject_key_id, verify_mac

Protect = Literal["request", "mac", "signature", "none"]
WAITING = PKIStatusInfo(PKIStatus.WAITING)


@dataclass
class Reply:
    """The answer before it is encoded and protected; ``protect`` picks the protection."""

    header: PKIHeader
    body_type: BodyType
    body: messages.Body
    extra_certs: tuple[bytes, ...] = ()
    protect: Protect = "request"


@dataclass
class Credentials:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    subject: x509.Name,
    public_key: object,
    issuer: Credentials | None,
    key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    days: int = 30,
    serial: int | None = None,
    not_before: datetime | None = None,
) -> x509.Certificate:
    """A certificate for ``public_key`` signed by ``issuer`` (self-signed with ``key`` if None)."""
    now = not_before or datetime.now(UTC) - timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
    )
    signing_key = issuer.key if issuer else key
    return builder.sign(signing_key, hashes.SHA256())


def make_ca(cn: str = "Stub Root CA") -> Credentials:
    key = ec.generate_private_key(ec.SECP256R1())
    return Credentials(key, make_cert(_name(cn), key.public_key(), None, key, ca=True, days=365))


def issue(ca: Credentials, cn: str, key: ec.EllipticCurvePrivateKey | None = None, **kw: object) -> Credentials:
    key = key or ec.generate_private_key(ec.SECP256R1())
    return Credentials(key, make_cert(_name(cn), key.public_key(), ca, key, **kw), (ca.cert,))  # type: ignore[arg-type]


def name_from_der(name_der: bytes) -> x509.Name:
    """An x509.Name from an encoded Name (cryptography has no loader for a bare Name)."""
    rdns = []
    for rdn in der.parse(name_der).expect(der.SEQUENCE, "Name").children():
        attrs = []
        for atv in rdn.children():
            oid_node, value = atv.children()
            attrs.append(x509.NameAttribute(x509.ObjectIdentifier(oid_node.as_oid()), value.as_text()))
        rdns.append(x509.RelativeDistinguishedName(attrs))
    return x509.Name(rdns)


@dataclass
class CaStub:
    """A CA (root signs issued certs) with an RA signer for signature-protected answers.

    ``polls``: pollReqs to answer before the final response (the first answer says "waiting");
    ``grant_implicit_confirm``: honour a request's implicitConfirm; ``ca_pubs``: put the root in
    caPubs of certificate responses.
    """

    secret: bytes = b"stub secret"
    reference: bytes = b"stub-ref"
    polls: int = 0
    check_after: int = 0
    grant_implicit_confirm: bool = False
    ca_pubs: bool = True
    reply_secret: bytes | None = None  # MAC replies with this instead of ``secret`` (wrong MAC)
    mutate: Callable[[Reply, PKIMessage], Reply] | None = None
    tamper: Callable[[bytes], bytes] | None = None
    root: Credentials = field(default_factory=make_ca)
    signer: Credentials = field(init=False)
    received: list[PKIMessage] = field(default_factory=list, init=False)
    sent: list[bytes] = field(default_factory=list, init=False)
    issued: list[x509.Certificate] = field(default_factory=list, init=False)
    _pending: dict[bytes, tuple[int, Reply]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.signer = issue(self.root, "Stub RA")
        self.name = messages.directory_name(self.root.cert.subject.public_bytes())

    # -- credentials for the client side --------------------------------------------------

    def mac_protector(self, **kw: object) -> MacProtector:
        return MacProtector(self.secret, reference=self.reference, iterations=100, **kw)  # type: ignore[arg-type]

    def device(self, cn: str = "device") -> Credentials:
        """An end-entity certificate from the stub's root, for signature-protected requests."""
        return issue(self.root, cn)

    @property
    def root_der(self) -> bytes:
        return self.root.der

    # -- answering ------------------------------------------------------------------------

    def answer(self, data: bytes) -> bytes:
        request = messages.decode(data)
        self.received.append(request)
        if request.header.protection_alg and is_mac_algorithm(request.header.protection_alg):
            verify_mac(request.header.protection_alg, request.protected_part, request.protection or b"", self.secret)
        reply = self.reply_to(request)
        if self.mutate is not None:
            reply = self.mutate(reply, request)
        out = self.encode(reply, request)
        if self.tamper is not None:
            out = self.tamper(out)
        self.sent.append(out)
        return out

    def header_for(self, request: PKIMessage, **changes: object) -> PKIHeader:
        h = request.header
        header = PKIHeader(
            sender=self.name,
            recipient=h.sender,
            transaction_id=h.transaction_id,
            sender_nonce=os.urandom(16),
            recip_nonce=h.sender_nonce,
            message_time=datetime.now(UTC).replace(microsecond=0),
            pvno=h.pvno,
        )
        return dataclasses.replace(header, **changes)  # type: ignore[arg-type]

    def reply_to(self, request: PKIMessage) -> Reply:
        tid = request.header.transaction_id or b""
        kind = request.body_type
        if kind is BodyType.POLLREQ:
            remaining, final = self._pending[tid]
            if remaining > 1:
                self._pending[tid] = (remaining - 1, final)
                body = PollRepContent((PollRepEntry(request.body.cert_req_ids[0], self.check_after),))  # type: ignore[union-attr]
                return Reply(self.header_for(request), BodyType.POLLREP, body)
            del self._pending[tid]
            return dataclasses.replace(
                final, header=self.header_for(request, general_info=final.header.general_info)
            )
        if kind is BodyType.CERTCONF:
            return Reply(self.header_for(request), BodyType.PKICONF, PKIConfirmContent())
        final = self._final(request)
        if self.polls:
            self._pending[tid] = (self.polls, final)
            if kind in messages.CERT_REQUEST_BODIES or kind is BodyType.P10CR:
                cert_req_id = final.body.responses[0].cert_req_id  # type: ignore[union-attr]
                body = CertRepMessage((CertResponse(cert_req_id, WAITING),))
                return Reply(self.header_for(request), messages.RESPONSE_FOR[kind], body)
            # RFC 9483 §4.4: delayed non-certificate responses start with an error "waiting".
            return Reply(self.header_for(request), BodyType.ERROR, ErrorMsgContent(WAITING))
        return final

    def _final(self, request: PKIMessage) -> Reply:
        kind = request.body_type
        body = request.body
        if isinstance(body, CertReqMessages):
            msg = body.messages[0]
            public_key = serialization.load_der_public_key(msg.template.public_key or b"")
            subject = name_from_der(msg.template.subject or der.sequence())
            return self.cert_reply(request, public_key, subject, msg.cert_req_id)
        if isinstance(body, P10Request):
            csr = x509.load_der_x509_csr(body.csr)
            return self.cert_reply(request, csr.public_key(), csr.subject, -1)
        if kind is BodyType.RR:
            return Reply(self.header_for(request), BodyType.RP, RevRepContent((messages.ACCEPTED,)))
        if isinstance(body, GenMsgContent):
            items = []
            for item in body.items:
                if item.oid == oids.IT_CA_CERTS:
                    items.append(InfoTypeAndValue(item.oid, der.sequence(self.root_der)))
                else:
                    items.append(item)
            return Reply(self.header_for(request), BodyType.GENP, GenMsgContent(tuple(items)))
        raise ValueError(f"the stub does not answer {request.label}")

    def cert_reply(self, request: PKIMessage, public_key: object, subject: x509.Name, cert_req_id: int) -> Reply:
        cert = make_cert(subject, public_key, self.root, self.root.key)
        self.issued.append(cert)
        cert_der = cert.public_bytes(serialization.Encoding.DER)
        ca_pubs = (self.root_der,) if self.ca_pubs else ()
        info: tuple[InfoTypeAndValue, ...] = ()
        if self.grant_implicit_confirm and request.header.implicit_confirm:
            info = (InfoTypeAndValue(oids.IT_IMPLICIT_CONFIRM, der.NULL_DER),)
        body = CertRepMessage((CertResponse(cert_req_id, messages.ACCEPTED, cert_der),), ca_pubs)
        header = self.header_for(request, general_info=info)
        return Reply(header, messages.RESPONSE_FOR[request.body_type], body, (self.root_der,))

    def issue_for(self, public_key: object, cn: str = "other") -> bytes:
        """DER of a certificate from the stub's root for ``public_key`` (for mutations)."""
        return make_cert(_name(cn), public_key, self.root, self.root.key).public_bytes(serialization.Encoding.DER)

    # -- encoding -------------------------------------------------------------------------

    def encode(self, reply: Reply, request: PKIMessage) -> bytes:
        protect = reply.protect
        if protect == "request":
            alg = request.header.protection_alg
            protect = "none" if alg is None else "mac" if is_mac_algorithm(alg) else "signature"
        header = reply.header
        extra = reply.extra_certs
        if protect == "mac":
            protector = MacProtector(self.reply_secret or self.secret, iterations=100)
            header = dataclasses.replace(header, protection_alg=protector.algorithm, sender_kid=self.reference)
        elif protect == "signature":
            signer = Signer(self.signer.key)
            header = dataclasses.replace(
                header, protection_alg=signer.algorithm, sender_kid=subject_key_id(self.signer.cert)
            )
            chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in self.signer.chain)
            extra = (self.signer.der, *(c for c in chain if c not in extra), *extra)
        header_der = messages.encode_header(header)
        body_der = messages.encode_body(reply.body_type, reply.body)
        part = messages.protected_part(header_der, body_der)
        protection = None
        if protect == "mac":
            protection = protector.protect(part)
        elif protect == "signature":
            protection = signer.sign(part)
        return messages.assemble(header_der, body_der, protection, extra)


def error_reply(stub: CaStub, request: PKIMessage, status: PKIStatusInfo) -> Reply:
    return Reply(stub.header_for(request), BodyType.ERROR, ErrorMsgContent(status))
