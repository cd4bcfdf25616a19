"""The CMP data model (RFC 9810 / RFC 4210, RFC 9480, CRMF RFC 4211) as frozen records.

Names and certificates stay DER ``bytes``: ``cryptography`` parses them only where a value is
needed.
Decoded records keep the exact received bytes of the parts that are signed or MACed
(``PKIMessage.protected_part``, ``CertReqMsg.cert_request_der``), so protection is always
verified over what was received, never over a re-encoding.
"""

from __future__ import annotations

from dataclasses import field
from datetime import datetime
from enum import IntEnum

from fleet.cmp import der, oids
from fleet.errors import FleetError
from fleet.records import record


class MessageError(FleetError):
    """Well-formed DER that is not a CMP message we can accept."""


class BodyType(IntEnum):
    """PKIBody CHOICE tags (RFC 9810 §5.1.2)."""

    IR = 0
    IP = 1
    CR = 2
    CP = 3
    P10CR = 4
    POPDECC = 5
    POPDECR = 6
    KUR = 7
    KUP = 8
    KRR = 9
    KRP = 10
    RR = 11
    RP = 12
    CCR = 13
    CCP = 14
    CKUANN = 15
    CANN = 16
    RANN = 17
    CRLANN = 18
    PKICONF = 19
    NESTED = 20
    GENM = 21
    GENP = 22
    ERROR = 23
    CERTCONF = 24
    POLLREQ = 25
    POLLREP = 26

    @property
    def label(self) -> str:
        """The RFC's lower-case name (``ir``, ``certConf``): bounded, so usable as a metric label."""
        return _BODY_LABELS[self]


_BODY_LABELS = {
    BodyType.P10CR: "p10cr",
    BodyType.PKICONF: "pkiconf",
    BodyType.CERTCONF: "certConf",
    BodyType.POLLREQ: "pollReq",
    BodyType.POLLREP: "pollRep",
    BodyType.POPDECC: "popdecc",
    BodyType.POPDECR: "popdecr",
}
for _b in BodyType:
    _BODY_LABELS.setdefault(_b, _b.name.lower())

CERT_REQUEST_BODIES = frozenset({BodyType.IR, BodyType.CR, BodyType.KUR})
CERT_RESPONSE_BODIES = frozenset({BodyType.IP, BodyType.CP, BodyType.KUP})
RESPONSE_FOR = {
    BodyType.IR: BodyType.IP,
    BodyType.CR: BodyType.CP,
    BodyType.KUR: BodyType.KUP,
    BodyType.P10CR: BodyType.CP,
    BodyType.CCR: BodyType.CCP,
    BodyType.RR: BodyType.RP,
    BodyType.GENM: BodyType.GENP,
    BodyType.CERTCONF: BodyType.PKICONF,
    BodyType.POLLREQ: BodyType.POLLREP,
}


class PKIStatus(IntEnum):
    ACCEPTED = 0
    GRANTED_WITH_MODS = 1
    REJECTION = 2
    WAITING = 3
    REVOCATION_WARNING = 4
    REVOCATION_NOTIFICATION = 5
    KEY_UPDATE_WARNING = 6


class FailInfo(IntEnum):
    """PKIFailureInfo bit numbers (RFC 9810 §5.2.3)."""

    badAlg = 0
    badMessageCheck = 1
    badRequest = 2
    badTime = 3
    badCertId = 4
    badDataFormat = 5
    wrongAuthority = 6
    incorrectData = 7
    missingTimeStamp = 8
    badPOP = 9
    certRevoked = 10
    certConfirmed = 11
    wrongIntegrity = 12
    badRecipientNonce = 13
    timeNotAvailable = 14
    unacceptedPolicy = 15
    unacceptedExtension = 16
    addInfoNotAvailable = 17
    badSenderNonce = 18
    badCertTemplate = 19
    signerNotTrusted = 20
    transactionIdInUse = 21
    unsupportedVersion = 22
    notAuthorized = 23
    systemUnavail = 24
    systemFailure = 25
    duplicateCertReq = 26

    @property
    def mask(self) -> int:
        return 1 << self.value


def fail_info_names(bits: int | None) -> tuple[str, ...]:
    """The names of the bits set in a PKIFailureInfo value, lowest first."""
    if not bits:
        return ()
    return tuple(f.name for f in FailInfo if bits >> f.value & 1) + (
        ("unknownFailInfo",) if bits >> (max(FailInfo) + 1) else ()
    )


# ---------------------------------------------------------------------------------------------
# Data model


@record
class InfoTypeAndValue:
    """``InfoTypeAndValue``: ``value`` is the encoded infoValue TLV, or None when absent."""

    oid: str
    value: bytes | None = None

    @property
    def name(self) -> str:
        return oids.INFO_TYPE_NAMES.get(self.oid, self.oid)


@record
class PKIHeader:
    """``PKIHeader``. ``sender``/``recipient`` are encoded GeneralNames; ``protection_alg`` an
    encoded AlgorithmIdentifier."""

    sender: bytes
    recipient: bytes
    transaction_id: bytes | None = None
    sender_nonce: bytes | None = None
    recip_nonce: bytes | None = None
    sender_kid: bytes | None = None
    recip_kid: bytes | None = None
    message_time: datetime | None = None
    protection_alg: bytes | None = None
    free_text: tuple[str, ...] = ()
    general_info: tuple[InfoTypeAndValue, ...] = ()
    pvno: int = 2

    def info(self, oid: str) -> InfoTypeAndValue | None:
        for item in self.general_info:
            if item.oid == oid:
                return item
        return None

    @property
    def implicit_confirm(self) -> bool:
        return self.info(oids.IT_IMPLICIT_CONFIRM) is not None


@record
class Validity:
    not_before: datetime | None = None
    not_after: datetime | None = None


@record
class CertTemplate:
    """CRMF ``CertTemplate``; ``subject``/``issuer`` are encoded Names, ``public_key`` an encoded
    SubjectPublicKeyInfo, ``extensions`` an encoded Extensions SEQUENCE."""

    subject: bytes | None = None
    public_key: bytes | None = None
    extensions: bytes | None = None
    issuer: bytes | None = None
    serial: int | None = None
    validity: Validity | None = None
    version: int | None = None
    signing_alg: bytes | None = None


@record
class Popo:
    """ProofOfPossession. ``kind`` is ``signature``, ``raVerified``, ``keyEncipherment`` or
    ``keyAgreement``; for signatures ``algorithm`` is the encoded AlgorithmIdentifier."""

    kind: str
    algorithm: bytes | None = None
    signature: bytes | None = None
    poposk_input: bytes | None = None
    raw: bytes | None = field(default=None, compare=False)


@record
class CertReqMsg:
    cert_req_id: int
    template: CertTemplate
    popo: Popo | None = None
    controls: bytes | None = None
    cert_request_der: bytes = field(default=b"", compare=False)  # exact bytes the POP signs


@record
class CertReqMessages:
    """Body of ir, cr and kur."""

    messages: tuple[CertReqMsg, ...]


@record
class P10Request:
    """Body of p10cr: a PKCS#10 CertificationRequest."""

    csr: bytes


@record
class PKIStatusInfo:
    status: int
    texts: tuple[str, ...] = ()
    fail_info: int | None = None

    @property
    def fail_names(self) -> tuple[str, ...]:
        return fail_info_names(self.fail_info)

    def describe(self) -> str:
        try:
            name = PKIStatus(self.status).name.lower()
        except ValueError:
            name = f"status {self.status}"
        parts = [name]
        if self.fail_info:
            parts.append("failInfo " + ",".join(self.fail_names))
        if self.texts:
            parts.append('"' + "; ".join(self.texts)[:200] + '"')
        return " ".join(parts)


ACCEPTED = PKIStatusInfo(PKIStatus.ACCEPTED)


@record
class CertResponse:
    cert_req_id: int
    status: PKIStatusInfo
    certificate: bytes | None = None
    rsp_info: bytes | None = None
    private_key: bytes | None = None  # encoded EncryptedKey (central key generation), kept opaque
    encrypted_cert: bytes | None = None  # encoded EncryptedKey: encrCert (indirect POP), kept opaque


@record
class CertRepMessage:
    """Body of ip, cp and kup."""

    responses: tuple[CertResponse, ...]
    ca_pubs: tuple[bytes, ...] = ()


@record
class CertStatus:
    cert_hash: bytes
    cert_req_id: int
    status_info: PKIStatusInfo | None = None
    hash_alg: bytes | None = None


@record
class CertConfirmContent:
    statuses: tuple[CertStatus, ...]


@record
class RevDetails:
    template: CertTemplate
    crl_entry_details: bytes | None = None  # encoded Extensions

    @property
    def reason(self) -> int | None:
        """The CRLReason code carried in crlEntryDetails, if any."""
        if self.crl_entry_details is None:
            return None
        for ext in der.parse(self.crl_entry_details).children():
            parts = ext.children()
            if parts and parts[0].as_oid() == oids.CRL_REASON:
                inner = der.parse(parts[-1].expect(der.OCTET_STRING, "extnValue").content)
                return inner.expect(der.ENUMERATED, "CRLReason").as_int()
        return None


@record
class RevReqContent:
    details: tuple[RevDetails, ...]


@record
class CertId:
    issuer: bytes  # encoded GeneralName
    serial: int


@record
class RevRepContent:
    statuses: tuple[PKIStatusInfo, ...]
    rev_certs: tuple[CertId, ...] = ()
    crls: tuple[bytes, ...] = ()


@record
class GenMsgContent:
    """Body of genm and genp."""

    items: tuple[InfoTypeAndValue, ...]

    def get(self, oid: str) -> InfoTypeAndValue | None:
        for item in self.items:
            if item.oid == oid:
                return item
        return None


@record
class ErrorMsgContent:
    status: PKIStatusInfo
    error_code: int | None = None
    details: tuple[str, ...] = ()


@record
class PollReqContent:
    cert_req_ids: tuple[int, ...]


@record
class PollRepEntry:
    cert_req_id: int
    check_after: int
    reason: tuple[str, ...] = ()


@record
class PollRepContent:
    entries: tuple[PollRepEntry, ...]


@record
class PKIConfirmContent:
    pass


@record
class NestedMessageContent:
    messages: tuple[bytes, ...]


@record
class OpaqueBody:
    """A body type fleet does not interpret (ckuann, krr, ...): kept as received."""

    raw: bytes


Body = (
    CertReqMessages
    | P10Request
    | CertRepMessage
    | CertConfirmContent
    | RevReqContent
    | RevRepContent
    | GenMsgContent
    | ErrorMsgContent
    | PollReqContent
    | PollRepContent
    | PKIConfirmContent
    | NestedMessageContent
    | OpaqueBody
)


@record
class PKIMessage:
    header: PKIHeader
    body_type: BodyType
    body: Body
    protection: bytes | None = None  # the BIT STRING's value (signature or MAC bytes)
    extra_certs: tuple[bytes, ...] = ()
    protected_part: bytes = field(default=b"", compare=False, repr=False)

    @property
    def label(self) -> str:
        return self.body_type.label


# ---------------------------------------------------------------------------------------------
# Names


def directory_name(name_der: bytes) -> bytes:
    """GeneralName ``directoryName`` ([4], explicit because Name is a CHOICE)."""
    return der.explicit(4, name_der)


NULL_DN = der.sequence()
NULL_DN_GENERAL_NAME = directory_name(NULL_DN)


def general_name_directory(general_name: bytes) -> bytes | None:
    """The Name inside a directoryName GeneralName, or None for other GeneralName kinds."""
    node = der.parse(general_name)
    if node.tag != 0xA4:
        return None
    return node.unwrap().raw
