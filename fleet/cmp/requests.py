"""What an end entity asks for, and the DER pieces of each request body.

Request specs are plain frozen dataclasses; ``build_body`` turns one into a PKIBody record and
``body_der`` into its encoding. Kept apart from the state machine so the server role and tests
can reuse the template and POP builders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleet.cmp import der, fastwire, oids
from fleet.cmp.messages import (
    NULL_DN,
    Body,
    BodyType,
    CertReqMessages,
    CertReqMsg,
    CertTemplate,
    GenMsgContent,
    InfoTypeAndValue,
    P10Request,
    Popo,
    RevDetails,
    RevReqContent,
    decode_body,
    directory_name,
    encode_body,
    encode_cert_request,
)
from fleet.cmp.protection import PrivateKey, Signer
from fleet.records import record

ID_REG_CTRL_OLD_CERT_ID = "1.3.6.1.5.5.7.5.1.5"


@record
class CertRequest:
    """ir, cr or kur: a new certificate for ``new_key``.

    For kur, ``old_cert`` names the certificate being updated (oldCertID control) and its subject
    is used when ``subject`` is None. ``central_key_alg`` asks for central key generation (RFC
    9483 §4.1.6): no ``new_key`` and no POP; the template's publicKey carries only that encoded
    AlgorithmIdentifier with an empty key, or is left out when it is ``b""``. ``subject`` may be given already DER-encoded (a Name), which
    spares a fleet of devices building an ``x509.Name`` each only to encode it.
    """

    kind: BodyType
    new_key: PrivateKey | None
    subject: x509.Name | bytes | None = None
    sans: Sequence[x509.GeneralName] = ()
    extensions: Sequence[x509.Extension[x509.ExtensionType]] = ()
    old_cert: x509.Certificate | None = None
    implicit_confirm: bool = False
    cert_profile: str | None = None
    pop: str = "signature"  # "signature-pss" (RSASSA-PSS by an RSA key), "raVerified" / "none" (for tests of servers)
    central_key_alg: bytes | None = None  # central key generation: see above
    # ``new_key``'s SubjectPublicKeyInfo when the caller has it already (a prepared kur key): not
    # encoded again. It must be that key's; the CA checks the POP against it.
    new_spki: bytes | None = field(default=None, repr=False, compare=False)

    # Encoded once, at creation: the template, the header's sender and the check of the issued
    # certificate all need them (functools.cached_property takes a lock on every read in 3.11).
    # the new key's SubjectPublicKeyInfo (central generation: the algorithm-only one, or None)
    spki: bytes | None = field(init=False, repr=False, compare=False)
    subject_der: bytes | None = field(init=False, repr=False, compare=False)  # the explicit subject's DER

    def __post_init__(self) -> None:
        if self.kind not in (BodyType.IR, BodyType.CR, BodyType.KUR):
            raise ValueError(f"CertRequest kind must be ir, cr or kur, not {self.kind.label}")
        if self.kind is BodyType.KUR and self.old_cert is None:
            raise ValueError("kur needs the certificate being updated")
        if self.central_key_alg is not None:
            if self.new_key is not None:
                raise ValueError("central key generation takes no new_key")
            object.__setattr__(self, "pop", "none")
            spki = der.sequence(self.central_key_alg, der.bit_string(b"")) if self.central_key_alg else None
            object.__setattr__(self, "spki", spki)
        elif self.new_key is None:
            raise ValueError("a CertRequest needs new_key unless it asks for central key generation")
        else:
            object.__setattr__(self, "spki", self.new_spki if self.new_spki is not None else spki_der(self.new_key))
        subject = self.subject
        if isinstance(subject, bytes):
            try:
                if der.parse(subject).tag != der.SEQUENCE:
                    raise der.DerError("not a SEQUENCE")
            except der.DerError as exc:
                raise ValueError(f"subject is not a DER Name: {exc}") from None
            subject_der: bytes | None = subject
        else:
            subject_der = subject.public_bytes() if subject is not None else None
        object.__setattr__(self, "subject_der", subject_der)


@record
class CsrRequest:
    """p10cr: a PKCS#10 request the device built with its own key."""

    csr: x509.CertificateSigningRequest
    implicit_confirm: bool = False
    cert_profile: str | None = None
    kind: BodyType = field(default=BodyType.P10CR, init=False)


UNSPECIFIED = 0  # CRLReason unspecified (RFC 5280 §5.3.1)


@record
class RevocationRequest:
    """rr for one certificate, named by issuer and serial.

    ``reason`` is the CRLReason code (RFC 5280 §5.3.1: 0 unspecified, 1 keyCompromise ...).
    RFC 9483 §4.2 asks for exactly one in crlEntryDetails, so it defaults to unspecified; None
    sends none, as ``openssl cmp`` does without ``-revreason`` (strict servers refuse that).
    """

    issuer: x509.Name
    serial: int
    reason: int | None = UNSPECIFIED
    kind: BodyType = field(default=BodyType.RR, init=False)
    implicit_confirm: bool = field(default=False, init=False)
    cert_profile: str | None = None

    @classmethod
    def for_certificate(
        cls, cert: x509.Certificate, reason: int | None = UNSPECIFIED, cert_profile: str | None = None
    ) -> RevocationRequest:
        return cls(cert.issuer, cert.serial_number, reason, cert_profile=cert_profile)


@record
class GeneralRequest:
    """genm with one or more InfoTypeAndValue items (caCerts, rootCaCert, certReqTemplate, ...)."""

    items: tuple[InfoTypeAndValue, ...]
    kind: BodyType = field(default=BodyType.GENM, init=False)
    implicit_confirm: bool = field(default=False, init=False)
    cert_profile: str | None = None


@record
class PreparedCertRequest:
    """ir or cr whose CertRequest and POP were made ahead of the transaction (a prepared device).

    Nothing of a CertRequest without controls depends on the transaction: RFC 4211 §4.1's POP
    signs the CertRequest alone, not the PKIBody kind or the header. So a device's key pair, its
    SubjectPublicKeyInfo, the encoded CertRequest and its POP signature can be made before a run
    (``prepare_cert_request``, elsewhere or in another process); the live path only frames them.
    kur cannot be prepared so: its CertRequest carries the oldCertID control (RFC 9483 §4.1.3),
    known only once the certificate being updated is; only its new key and SPKI can be made ahead
    (``CertRequest.new_spki``).
    """

    kind: BodyType
    cert_request: bytes  # the encoded CertRequest (certReqId 0, template, no controls)
    algorithm: bytes  # the POP signature's AlgorithmIdentifier (DER)
    signature: bytes  # the POP signature over ``cert_request``
    spki: bytes  # the new key's SubjectPublicKeyInfo, which the issued certificate must carry
    subject_der: bytes | None = None  # the explicit subject (DER), for the header's sender
    implicit_confirm: bool = False
    cert_profile: str | None = None
    central_key_alg: None = field(default=None, init=False)  # never: the device made its own key

    def __post_init__(self) -> None:
        if self.kind not in (BodyType.IR, BodyType.CR):
            raise ValueError(f"a prepared CertRequest is for ir or cr, not {self.kind.label}")


@record
class PreparedParts:
    """What ``prepare_cert_request`` makes for one device: the encoded CertRequest, the
    offset of the SubjectPublicKeyInfo inside it, and the POP signature."""

    cert_request: bytes
    spki_offset: int
    spki_length: int
    signature: bytes

    @property
    def spki(self) -> bytes:
        return spki_at(self.cert_request, self.spki_offset, self.spki_length)


def spki_at(cert_request: bytes, offset: int, length: int) -> bytes:
    """The SubjectPublicKeyInfo the template carries at ``offset``: it is written there with the
    template's [6] tag in place of SEQUENCE (implicit tagging), so the SEQUENCE tag goes back."""
    return b"\x30" + cert_request[offset + 1 : offset + length]


def prepare_cert_request(
    key: PrivateKey, subject: bytes | None, sans: Sequence[x509.GeneralName] = (), spki: bytes | None = None,
    sign: Callable[[bytes], bytes] | None = None,
) -> PreparedParts:
    """The CertRequest an ir or cr for ``key`` carries (subject DER or None, SANs as
    ``CertRequest`` writes them) and its signature POP, with ``body_der``'s exact bytes.
    ``spki`` and ``sign`` (``Signer(key).sign``'s result for the same key) spare a caller that
    already has them the work."""
    spki = spki if spki is not None else spki_der(key)
    extensions = _extensions_der(sans, (), subject)
    cert_request = fastwire.cert_request_der(subject if subject is not None else NULL_DN, spki, extensions)
    offset = cert_request.index(b"\xa6" + spki[1:])
    return PreparedParts(cert_request, offset, len(spki), (sign or Signer(key).sign)(cert_request))


Request = CertRequest | PreparedCertRequest | CsrRequest | RevocationRequest | GeneralRequest

# RFC 9483 §6.1 operation path segments.
_OPERATION_BY_KIND = {
    BodyType.IR: "initialization",
    BodyType.CR: "certification",
    BodyType.KUR: "keyupdate",
    BodyType.P10CR: "pkcs10",
    BodyType.RR: "revocation",
}
_OPERATION_BY_INFO = {
    oids.IT_CA_CERTS: "getcacerts",
    oids.IT_ROOT_CA_CERT: "getrootupdate",
    oids.IT_CERT_REQ_TEMPLATE: "getcertreqtemplate",
    oids.IT_CRL_STATUS_LIST: "getcrls",
}


def operation_of(request: Request) -> str | None:
    """The RFC 9483 §6.1 path segment for a request, or None where none is defined."""
    if isinstance(request, GeneralRequest):
        return _OPERATION_BY_INFO.get(request.items[0].oid) if len(request.items) == 1 else None
    return _OPERATION_BY_KIND.get(request.kind)


def spki_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def extensions_der(exts: Sequence[tuple[str, bool, bytes]]) -> bytes:
    """Extensions from (OID, critical, encoded extnValue content) triples."""
    return der.sequence(
        *(
            der.sequence(der.oid(o), der.boolean(True) if critical else b"", der.octet_string(value))
            for o, critical, value in exts
        )
    )


def template_for(request: CertRequest) -> CertTemplate:
    subject_der = request.subject_der
    if subject_der is None and request.old_cert is not None:
        subject_der = request.old_cert.subject.public_bytes()
    return CertTemplate(
        subject=subject_der if subject_der is not None else NULL_DN,
        public_key=request.spki,
        extensions=_template_extensions(request, subject_der),
    )


def _template_extensions(request: CertRequest, subject_der: bytes | None) -> bytes | None:
    """The template's Extensions (SANs first, then ``request.extensions``), or None."""
    return _extensions_der(request.sans, request.extensions, subject_der)


def _extensions_der(
    sans: Sequence[x509.GeneralName], extensions: Sequence[x509.Extension[x509.ExtensionType]], subject_der: bytes | None
) -> bytes | None:
    exts: list[tuple[str, bool, bytes]] = []
    if sans:
        san = x509.SubjectAlternativeName(list(sans))
        # RFC 5280 §4.2.1.6: the SAN extension is critical when the subject is empty.
        exts.append((oids.SUBJECT_ALT_NAME, subject_der is None or subject_der == NULL_DN, san.public_bytes()))
    for ext in extensions:
        exts.append((ext.oid.dotted_string, ext.critical, ext.value.public_bytes()))
    return extensions_der(exts) if exts else None


def old_cert_id_control(cert: x509.Certificate) -> bytes:
    """Controls with id-regCtrl-oldCertID naming ``cert`` (RFC 4211 §6.5)."""
    cert_id = der.sequence(directory_name(cert.issuer.public_bytes()), der.integer(cert.serial_number))
    return der.sequence(der.sequence(der.oid(ID_REG_CTRL_OLD_CERT_ID), cert_id))


def build_cert_req_msg(request: CertRequest, cert_req_id: int = 0) -> CertReqMsg:
    template = template_for(request)
    controls = old_cert_id_control(request.old_cert) if request.old_cert is not None else None
    cert_request = encode_cert_request(cert_req_id, template, controls)
    popo: Popo | None
    if request.pop in ("signature", "signature-pss"):
        assert request.new_key is not None  # __post_init__: only central generation has none
        signer = Signer(request.new_key, pss=request.pop == "signature-pss")
        popo = Popo("signature", signer.algorithm, signer.sign(cert_request))
    elif request.pop == "raVerified":
        popo = Popo("raVerified")
    else:
        popo = None
    return CertReqMsg(cert_req_id, template, popo, controls, cert_request)


def revocation_details(request: RevocationRequest) -> RevDetails:
    template = CertTemplate(issuer=request.issuer.public_bytes(), serial=request.serial)
    entry = None
    if request.reason is not None:
        reason = der.tlv(der.ENUMERATED, der.integer(request.reason)[2:])
        entry = extensions_der([(oids.CRL_REASON, False, reason)])
    return RevDetails(template, entry)


def body_der(request: Request) -> bytes:
    """The request's encoded PKIBody: ``messages.encode_body(request.kind, build_body(request))``,
    written by ``fastwire`` for the usual signature-POP CertRequest (no intermediate records: the
    client encodes one per device) and for a prepared one (framing only)."""
    if isinstance(request, PreparedCertRequest):
        return fastwire.signed_cert_req_body(request.kind, request.cert_request, request.algorithm, request.signature)
    if (not isinstance(request, CertRequest) or request.pop != "signature" or request.old_cert is not None
            or request.new_key is None or request.spki is None):
        return encode_body(request.kind, build_body(request))
    subject = request.subject_der if request.subject_der is not None else NULL_DN
    extensions = _template_extensions(request, request.subject_der)  # no old_cert on this path
    cert_request = fastwire.cert_request_der(subject, request.spki, extensions)
    signer = Signer(request.new_key)
    return fastwire.signed_cert_req_body(request.kind, cert_request, signer.algorithm, signer.sign(cert_request))


def build_body(request: Request) -> Body:
    if isinstance(request, PreparedCertRequest):
        return decode_body(request.kind, der.parse(body_der(request)).unwrap())  # records only for tests
    if isinstance(request, CertRequest):
        return CertReqMessages((build_cert_req_msg(request),))
    if isinstance(request, CsrRequest):
        return P10Request(request.csr.public_bytes(Encoding.DER))
    if isinstance(request, RevocationRequest):
        return RevReqContent((revocation_details(request),))
    return GenMsgContent(request.items)
