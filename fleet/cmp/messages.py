"""CMP messages (RFC 9810 / RFC 4210, RFC 9480, CRMF RFC 4211) as frozen dataclasses, with DER codecs.

The codec is hand-written on ``fleet.cmp.der`` because pyasn1 costs milliseconds a message; tests
check it against pyasn1-alt-modules in both directions. Decoding keeps the exact received bytes of
the parts that are signed or MACed (``PKIMessage.protected_part``, ``CertReqMsg.cert_request_der``)
so protection is always verified over what was received, never over a re-encoding.

Names and certificates stay DER ``bytes``: ``cryptography`` parses them only where a value is needed.
"""

from __future__ import annotations

import math
import time
from dataclasses import field
from datetime import UTC, datetime
from enum import IntEnum

from fleet.cmp import der, oids
from fleet.cmp.der import Tlv
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


# ---------------------------------------------------------------------------------------------
# Encoding


_last_message_time: tuple[object, bytes] = (None, b"")


def message_time_der(now: datetime | float | None = None) -> bytes:
    """``[0] messageTime`` for ``now`` (a datetime, seconds since the epoch, or None: the system
    clock) in whole seconds, as ``encode_header`` writes it; every message of a second shares one
    encoding, and a timestamp needs no datetime unless the second changed."""
    global _last_message_time
    if now is None or isinstance(now, (int, float)):
        key: object = math.floor(time.time() if now is None else now)
    else:
        key = now.replace(microsecond=0)
    if key != _last_message_time[0]:
        when = key if isinstance(key, datetime) else datetime.fromtimestamp(key, UTC)  # type: ignore[arg-type]
        _last_message_time = (key, der.explicit(0, der.generalized_time(when)))
    return _last_message_time[1]


def _free_text(texts: tuple[str, ...]) -> bytes:
    return der.sequence(*(der.utf8_string(t) for t in texts))


def encode_info(item: InfoTypeAndValue) -> bytes:
    return der.sequence(der.oid(item.oid), item.value or b"")


def encode_header(h: PKIHeader) -> bytes:
    parts = [der.integer(h.pvno), h.sender, h.recipient]
    if h.message_time is not None:
        parts.append(der.explicit(0, der.generalized_time(h.message_time)))
    if h.protection_alg is not None:
        parts.append(der.explicit(1, h.protection_alg))
    if h.sender_kid is not None:
        parts.append(der.explicit_octets(2, h.sender_kid))
    if h.recip_kid is not None:
        parts.append(der.explicit_octets(3, h.recip_kid))
    if h.transaction_id is not None:
        parts.append(der.explicit_octets(4, h.transaction_id))
    if h.sender_nonce is not None:
        parts.append(der.explicit_octets(5, h.sender_nonce))
    if h.recip_nonce is not None:
        parts.append(der.explicit_octets(6, h.recip_nonce))
    if h.free_text:
        parts.append(der.explicit(7, _free_text(h.free_text)))
    if h.general_info:
        parts.append(der.explicit(8, der.sequence(*(encode_info(i) for i in h.general_info))))
    return der.sequence(*parts)


def _time_choice(value: datetime) -> bytes:
    """X.509 ``Time``: UTCTime for 1950-2049, GeneralizedTime otherwise (RFC 5280 §4.1.2.5)."""
    value = value.astimezone(UTC)  # UTCTime says Z: write UTC, not local wall time
    if 1950 <= value.year < 2050:
        return der.tlv(der.UTC_TIME, value.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return der.generalized_time(value)


def encode_cert_template(t: CertTemplate) -> bytes:
    parts = []
    if t.version is not None:
        parts.append(der.implicit(0, der.integer(t.version), constructed=False))
    if t.serial is not None:
        parts.append(der.implicit(1, der.integer(t.serial), constructed=False))
    if t.signing_alg is not None:
        parts.append(der.implicit(2, t.signing_alg, constructed=True))
    if t.issuer is not None:
        parts.append(der.explicit(3, t.issuer))
    if t.validity is not None:
        v = []
        if t.validity.not_before is not None:
            v.append(der.explicit(0, _time_choice(t.validity.not_before)))
        if t.validity.not_after is not None:
            v.append(der.explicit(1, _time_choice(t.validity.not_after)))
        parts.append(der.tlv(0xA4, b"".join(v)))
    if t.subject is not None:
        parts.append(der.explicit(5, t.subject))
    if t.public_key is not None:
        parts.append(der.implicit(6, t.public_key, constructed=True))
    if t.extensions is not None:
        parts.append(der.implicit(9, t.extensions, constructed=True))
    return der.sequence(*parts)


def encode_cert_request(cert_req_id: int, template: CertTemplate, controls: bytes | None = None) -> bytes:
    """CRMF ``CertRequest``: the bytes a signature POP signs."""
    return der.sequence(der.integer(cert_req_id), encode_cert_template(template), controls or b"")


def encode_popo(popo: Popo) -> bytes:
    if popo.kind == "raVerified":
        return b"\x80\x00"
    if popo.kind == "signature":
        if popo.algorithm is None or popo.signature is None:
            raise ValueError("signature POP needs an algorithm and a signature")
        inner = (popo.poposk_input or b"") + popo.algorithm + der.bit_string(popo.signature)
        return der.tlv(0xA1, inner)
    if popo.raw is not None:
        return popo.raw
    raise ValueError(f"cannot encode POP of kind {popo.kind!r}")


def encode_cert_req_msg(msg: CertReqMsg) -> bytes:
    request = msg.cert_request_der or encode_cert_request(msg.cert_req_id, msg.template, msg.controls)
    return der.sequence(request, encode_popo(msg.popo) if msg.popo else b"")


def encode_status_info(s: PKIStatusInfo) -> bytes:
    parts = [der.integer(s.status)]
    if s.texts:
        parts.append(_free_text(s.texts))
    if s.fail_info is not None:
        parts.append(der.named_bits(s.fail_info))
    return der.sequence(*parts)


def _cert_seq(certs: tuple[bytes, ...]) -> bytes:
    return der.sequence(*certs)


def encode_cert_response(r: CertResponse) -> bytes:
    parts = [der.integer(r.cert_req_id), encode_status_info(r.status)]
    if r.certificate is not None:
        ckp = der.explicit(0, r.certificate)
        if r.private_key is not None:
            ckp += der.explicit(0, r.private_key)
        parts.append(der.sequence(ckp))
    if r.rsp_info is not None:
        parts.append(der.octet_string(r.rsp_info))
    return der.sequence(*parts)


def encode_body_content(body_type: BodyType, body: Body) -> bytes:
    """The body's own TLV, without the PKIBody choice tag."""
    match body:
        case CertReqMessages(messages=msgs):
            return der.sequence(*(encode_cert_req_msg(m) for m in msgs))
        case P10Request(csr=csr):
            return csr
        case CertRepMessage(responses=responses, ca_pubs=ca_pubs):
            head = der.explicit(1, _cert_seq(ca_pubs)) if ca_pubs else b""
            return der.sequence(head, der.sequence(*(encode_cert_response(r) for r in responses)))
        case CertConfirmContent(statuses=statuses):
            items = []
            for s in statuses:
                parts = [der.octet_string(s.cert_hash), der.integer(s.cert_req_id)]
                if s.status_info is not None:
                    parts.append(encode_status_info(s.status_info))
                if s.hash_alg is not None:
                    parts.append(der.explicit(0, s.hash_alg))
                items.append(der.sequence(*parts))
            return der.sequence(*items)
        case RevReqContent(details=details):
            return der.sequence(
                *(
                    der.sequence(encode_cert_template(d.template), d.crl_entry_details or b"")
                    for d in details
                )
            )
        case RevRepContent(statuses=statuses, rev_certs=rev_certs, crls=crls):
            parts = [der.sequence(*(encode_status_info(s) for s in statuses))]
            if rev_certs:
                ids = (der.sequence(c.issuer, der.integer(c.serial)) for c in rev_certs)
                parts.append(der.explicit(0, der.sequence(*ids)))
            if crls:
                parts.append(der.explicit(1, der.sequence(*crls)))
            return der.sequence(*parts)
        case GenMsgContent(items=items):
            return der.sequence(*(encode_info(i) for i in items))
        case ErrorMsgContent(status=status, error_code=code, details=details):
            parts = [encode_status_info(status)]
            if code is not None:
                parts.append(der.integer(code))
            if details:
                parts.append(_free_text(details))
            return der.sequence(*parts)
        case PollReqContent(cert_req_ids=ids):
            return der.sequence(*(der.sequence(der.integer(i)) for i in ids))
        case PollRepContent(entries=entries):
            return der.sequence(
                *(
                    der.sequence(
                        der.integer(e.cert_req_id),
                        der.integer(e.check_after),
                        _free_text(e.reason) if e.reason else b"",
                    )
                    for e in entries
                )
            )
        case PKIConfirmContent():
            return der.NULL_DER
        case NestedMessageContent(messages=messages):
            return der.sequence(*messages)
        case OpaqueBody(raw=raw):
            return raw
    raise TypeError(f"cannot encode body {type(body).__name__} as {body_type.label}")


def encode_body(body_type: BodyType, body: Body) -> bytes:
    return der.explicit(int(body_type), encode_body_content(body_type, body))


def protected_part(header_der: bytes, body_der: bytes) -> bytes:
    """``ProtectedPart``: the exact input of the MAC or signature."""
    return der.sequence(header_der, body_der)


def assemble(
    header_der: bytes, body_der: bytes, protection: bytes | None, extra_certs: tuple[bytes, ...] = ()
) -> bytes:
    """A complete PKIMessage from already-encoded parts."""
    parts = [header_der, body_der]
    if protection is not None:
        parts.append(der.explicit(0, der.bit_string(protection)))
    if extra_certs:
        parts.append(der.explicit(1, _cert_seq(extra_certs)))
    return der.sequence(*parts)


def encode(msg: PKIMessage) -> bytes:
    """Encode a message whose ``protection`` is already computed (or absent)."""
    return assemble(
        encode_header(msg.header), encode_body(msg.body_type, msg.body), msg.protection, msg.extra_certs
    )


# ---------------------------------------------------------------------------------------------
# Decoding

MAX_MESSAGE_BYTES = 2**20  # ten times OpenSSL's largest test message; bounds work on hostile input


def _octets(node: Tlv, what: str) -> bytes:
    return node.unwrap().expect(der.OCTET_STRING, what).content


def _texts(node: Tlv) -> tuple[str, ...]:
    return tuple(t.as_text() for t in node.expect(der.SEQUENCE, "PKIFreeText").children())


def decode_info(node: Tlv) -> InfoTypeAndValue:
    parts = node.expect(der.SEQUENCE, "InfoTypeAndValue").children()
    if not parts or len(parts) > 2:
        raise MessageError("InfoTypeAndValue must have a type and at most one value")
    return InfoTypeAndValue(parts[0].as_oid(), parts[1].raw if len(parts) == 2 else None)


def read_header_fields(data: bytes, pos: int, end: int, depth: int = 1) -> PKIHeader | None:
    """The common PKIHeader shape (pvno, names, fields [0]-[6], [8]) read by offsets from the
    header's content ``data[pos:end]``, without a ``Tlv`` per field: 2-3x faster than the
    general reader, which handles everything else. ``depth`` is the header's nesting depth.

    Returns None at anything unusual (and the general reader then decides, with its message).
    The CA's request reader uses it too.
    """
    read = der.read_tlv
    tag, cs, pos = read(data, pos, end)
    if tag != der.INTEGER or pos - cs != 1 or data[cs] > 0x7F:
        return None
    pvno = data[cs]
    start = pos
    _, _, pos = read(data, pos, end)
    sender = data[start:pos]
    start = pos
    _, _, pos = read(data, pos, end)
    recipient = data[start:pos]
    values: list[object] = [None] * 9
    info: tuple[InfoTypeAndValue, ...] = ()
    last = -1
    while pos < end:
        tag, cs, ce = read(data, pos, end)
        number = tag - 0xA0
        if not 0 <= number <= 8 or number <= last or number == 7 or depth + 2 > der.MAX_DEPTH:
            return None
        last = number
        itag, ics, ice = read(data, cs, ce)
        if ice != ce:
            return None
        if number >= 2 and number != 8:
            if itag != der.OCTET_STRING:
                return None
            values[number] = data[ics:ice]
        elif number == 1:
            if itag != der.SEQUENCE:
                return None
            values[1] = data[cs:ce]
        elif number == 0:
            values[0] = der.time_value(itag, data[ics:ice])
        else:
            if itag != der.SEQUENCE:
                return None
            items = Tlv(data, itag, cs, ics, ice, depth + 2).children()
            info = tuple(decode_info(i) for i in items)
        pos = ce
    return PKIHeader(
        sender, recipient, values[4], values[5], values[6], values[2], values[3], values[0],  # type: ignore[arg-type]
        values[1], (), info, pvno,  # type: ignore[arg-type]
    )


def decode_header(node: Tlv) -> PKIHeader:
    if node.tag == der.SEQUENCE:
        try:
            header = read_header_fields(node.data, node.cstart, node.end, node.depth)
        except (der.DerError, MessageError):
            header = None  # the general reader below raises with its precise message
        if header is not None:
            return header
    return _decode_header_general(node)


def _decode_header_general(node: Tlv) -> PKIHeader:
    parts = node.expect(der.SEQUENCE, "PKIHeader").children()
    if len(parts) < 3:
        raise MessageError("PKIHeader lacks pvno, sender or recipient")
    fields: dict[str, object] = {
        "pvno": parts[0].expect(der.INTEGER, "pvno").as_int(),
        "sender": parts[1].raw,
        "recipient": parts[2].raw,
    }
    last = -1
    for p in parts[3:]:
        number = p.tag - 0xA0
        if not 0 <= number <= 8 or number <= last:
            raise MessageError(f"unexpected or repeated field tag 0x{p.tag:02x} in PKIHeader")
        last = number
        if number == 0:
            fields["message_time"] = p.unwrap().as_time()
        elif number == 1:
            fields["protection_alg"] = p.unwrap().expect(der.SEQUENCE, "protectionAlg").raw
        elif number == 2:
            fields["sender_kid"] = _octets(p, "senderKID")
        elif number == 3:
            fields["recip_kid"] = _octets(p, "recipKID")
        elif number == 4:
            fields["transaction_id"] = _octets(p, "transactionID")
        elif number == 5:
            fields["sender_nonce"] = _octets(p, "senderNonce")
        elif number == 6:
            fields["recip_nonce"] = _octets(p, "recipNonce")
        elif number == 7:
            fields["free_text"] = _texts(p.unwrap())
        else:
            items = p.unwrap().expect(der.SEQUENCE, "generalInfo").children()
            fields["general_info"] = tuple(decode_info(i) for i in items)
    return PKIHeader(**fields)  # type: ignore[arg-type]


def decode_cert_template(node: Tlv) -> CertTemplate:
    fields: dict[str, object] = {}
    last = -1
    for p in node.children():
        tag = p.tag
        # DER order, no repeats: two subjects would let two readers of one request disagree.
        if (tag & 0x1F) <= last:
            raise MessageError(f"unexpected or repeated field tag 0x{tag:02x} in CertTemplate")
        last = tag & 0x1F
        if tag == 0x80:
            fields["version"] = p.as_int()
        elif tag == 0x81:
            fields["serial"] = p.as_int()
        elif tag == 0xA2:
            fields["signing_alg"] = b"\x30" + p.raw[1:]
        elif tag == 0xA3:
            fields["issuer"] = p.unwrap().raw
        elif tag == 0xA4:
            nb = na = None
            for t in p.children():
                if t.tag == 0xA0:
                    nb = t.unwrap().as_time()
                elif t.tag == 0xA1:
                    na = t.unwrap().as_time()
            fields["validity"] = Validity(nb, na)
        elif tag == 0xA5:
            fields["subject"] = p.unwrap().raw
        elif tag == 0xA6:
            fields["public_key"] = b"\x30" + p.raw[1:]
        elif tag == 0xA9:
            fields["extensions"] = b"\x30" + p.raw[1:]
        elif tag in (0x87, 0x88):
            continue  # issuerUID / subjectUID: deprecated, ignored
        else:
            raise MessageError(f"unexpected field tag 0x{tag:02x} in CertTemplate")
    return CertTemplate(**fields)  # type: ignore[arg-type]


def _decode_popo(node: Tlv) -> Popo:
    if node.tag == 0x80:
        if node.content:
            raise MessageError("raVerified POP must be an empty NULL")
        return Popo("raVerified", raw=node.raw)
    if node.tag == 0xA1:
        parts = node.children()
        poposk_input = None
        if parts and parts[0].tag == 0xA0:
            poposk_input = parts[0].raw
            parts = parts[1:]
        if len(parts) != 2:
            raise MessageError("POPOSigningKey needs an algorithm and a signature")
        value, _ = parts[1].expect(der.BIT_STRING, "POP signature").as_bits()
        return Popo("signature", parts[0].expect(der.SEQUENCE, "POP algorithm").raw, value, poposk_input, node.raw)
    if node.tag == 0xA2:
        return Popo("keyEncipherment", raw=node.raw)
    if node.tag == 0xA3:
        return Popo("keyAgreement", raw=node.raw)
    raise MessageError(f"unknown ProofOfPossession tag 0x{node.tag:02x}")


def decode_cert_req_msg(node: Tlv) -> CertReqMsg:
    parts = node.expect(der.SEQUENCE, "CertReqMsg").children()
    if not parts:
        raise MessageError("empty CertReqMsg")
    request = parts[0].expect(der.SEQUENCE, "CertRequest")
    rparts = request.children()
    if len(rparts) < 2:
        raise MessageError("CertRequest lacks certReqId or certTemplate")
    controls = rparts[2].raw if len(rparts) > 2 else None
    popo = _decode_popo(parts[1]) if len(parts) > 1 and parts[1].tag != der.SEQUENCE else None
    return CertReqMsg(
        cert_req_id=rparts[0].expect(der.INTEGER, "certReqId").as_int(),
        template=decode_cert_template(rparts[1].expect(der.SEQUENCE, "CertTemplate")),
        popo=popo,
        controls=controls,
        cert_request_der=request.raw,
    )


def decode_status_info(node: Tlv) -> PKIStatusInfo:
    parts = node.expect(der.SEQUENCE, "PKIStatusInfo").children()
    if not parts:
        raise MessageError("empty PKIStatusInfo")
    status = parts[0].expect(der.INTEGER, "PKIStatus").as_int()
    texts: tuple[str, ...] = ()
    fail = None
    for p in parts[1:]:
        if p.tag == der.SEQUENCE:
            texts = _texts(p)
        elif p.tag == der.BIT_STRING:
            fail = p.as_named_bits()
        else:
            raise MessageError(f"unexpected tag 0x{p.tag:02x} in PKIStatusInfo")
    return PKIStatusInfo(status, texts, fail)


def _decode_cert_response(node: Tlv) -> CertResponse:
    parts = node.expect(der.SEQUENCE, "CertResponse").children()
    if len(parts) < 2:
        raise MessageError("CertResponse lacks certReqId or status")
    cert = private_key = rsp_info = None
    for p in parts[2:]:
        if p.tag == der.SEQUENCE:  # CertifiedKeyPair
            kp = p.children()
            if not kp:
                raise MessageError("empty CertifiedKeyPair")
            choice = kp[0]
            if choice.tag == 0xA0:
                cert = choice.unwrap().expect(der.SEQUENCE, "certificate").raw
            elif choice.tag == 0xA1:
                raise MessageError("encryptedCert responses are not supported")
            else:
                raise MessageError(f"unexpected CertOrEncCert tag 0x{choice.tag:02x}")
            for extra in kp[1:]:
                if extra.tag == 0xA0:
                    private_key = extra.unwrap().raw
        elif p.tag == der.OCTET_STRING:
            rsp_info = p.content
    return CertResponse(
        cert_req_id=parts[0].expect(der.INTEGER, "certReqId").as_int(),
        status=decode_status_info(parts[1]),
        certificate=cert,
        rsp_info=rsp_info,
        private_key=private_key,
    )


def _decode_certs(node: Tlv, what: str) -> tuple[bytes, ...]:
    return tuple(c.expect(der.SEQUENCE, what).raw for c in node.expect(der.SEQUENCE, what).children())


_STATUS_ONLY = tuple(PKIStatusInfo(status) for status in range(128))


def _decode_cert_rep_fast(node: Tlv) -> CertRepMessage | None:
    """The usual ip/cp/kup (optional caPubs, one response, status without text or failInfo,
    a certificate or none) read by offsets; None at anything else, for the general reader."""
    data, read, end = node.data, der.read_tlv, node.end
    if node.tag != der.SEQUENCE or node.depth + 6 > der.MAX_DEPTH or node.cstart == end:
        return None
    tag, cs, ce = read(data, node.cstart, end)
    ca_pubs: tuple[bytes, ...] = ()
    if tag == 0xA1:
        ca_pubs = _decode_certs(Tlv(data, tag, node.cstart, cs, ce, node.depth + 1).unwrap(), "caPubs")
        if ce == end:
            return None
        tag, cs, ce = read(data, ce, end)
    if tag != der.SEQUENCE or ce != end or cs == ce:
        return None
    tag, pos, response_end = read(data, cs, ce)  # the only CertResponse
    if tag != der.SEQUENCE or response_end != ce or pos == response_end:
        return None
    tag, ics, pos = read(data, pos, response_end)  # certReqId
    if tag != der.INTEGER or pos - ics != 1 or data[ics] > 0x7F or pos == response_end:
        return None
    cert_req_id = data[ics]
    tag, scs, sce = read(data, pos, response_end)  # PKIStatusInfo holding only the status
    if tag != der.SEQUENCE or scs == sce:
        return None
    tag, vcs, vce = read(data, scs, sce)
    if tag != der.INTEGER or vce != sce or vce - vcs != 1 or data[vcs] > 0x7F:
        return None
    status = _STATUS_ONLY[data[vcs]]
    if sce == response_end:
        return CertRepMessage((CertResponse(cert_req_id, status),), ca_pubs)
    tag, kcs, kce = read(data, sce, response_end)  # CertifiedKeyPair with only a certificate
    if tag != der.SEQUENCE or kce != response_end or kcs == kce:
        return None
    tag, ccs, cce = read(data, kcs, kce)
    if tag != 0xA0 or cce != kce or ccs == cce:
        return None
    tag, _, xce = read(data, ccs, cce)
    if tag != der.SEQUENCE or xce != cce:
        return None
    return CertRepMessage((CertResponse(cert_req_id, status, data[ccs:cce]),), ca_pubs)


def decode_body(body_type: BodyType, node: Tlv) -> Body:
    """Decode the content of a PKIBody choice (``node`` is the TLV inside the choice tag)."""
    if body_type in CERT_RESPONSE_BODIES:
        try:
            fast = _decode_cert_rep_fast(node)
        except (der.DerError, MessageError):
            fast = None  # the general reader raises with its precise message
        if fast is not None:
            return fast
    return _decode_body_general(body_type, node)


def _decode_body_general(body_type: BodyType, node: Tlv) -> Body:
    if body_type in CERT_REQUEST_BODIES:
        msgs = node.expect(der.SEQUENCE, "CertReqMessages").children()
        if not msgs:
            raise MessageError("CertReqMessages is empty")
        return CertReqMessages(tuple(decode_cert_req_msg(m) for m in msgs))
    if body_type is BodyType.P10CR:
        return P10Request(node.expect(der.SEQUENCE, "CertificationRequest").raw)
    if body_type in CERT_RESPONSE_BODIES:
        parts = node.expect(der.SEQUENCE, "CertRepMessage").children()
        ca_pubs: tuple[bytes, ...] = ()
        if parts and parts[0].tag == 0xA1:
            ca_pubs = _decode_certs(parts[0].unwrap(), "caPubs")
            parts = parts[1:]
        if len(parts) != 1:
            raise MessageError("CertRepMessage must hold exactly one response list")
        responses = parts[0].expect(der.SEQUENCE, "response").children()
        return CertRepMessage(tuple(_decode_cert_response(r) for r in responses), ca_pubs)
    if body_type is BodyType.CERTCONF:
        confirmations: list[CertStatus] = []
        for s in node.expect(der.SEQUENCE, "CertConfirmContent").children():
            parts = s.expect(der.SEQUENCE, "CertStatus").children()
            if len(parts) < 2:
                raise MessageError("CertStatus lacks certHash or certReqId")
            info = alg = None
            for p in parts[2:]:
                if p.tag == der.SEQUENCE:
                    info = decode_status_info(p)
                elif p.tag == 0xA0:
                    alg = p.unwrap().raw
            confirmations.append(
                CertStatus(
                    parts[0].expect(der.OCTET_STRING, "certHash").content,
                    parts[1].expect(der.INTEGER, "certReqId").as_int(),
                    info,
                    alg,
                )
            )
        return CertConfirmContent(tuple(confirmations))
    if body_type is BodyType.RR:
        revocations: list[RevDetails] = []
        for d in node.expect(der.SEQUENCE, "RevReqContent").children():
            parts = d.expect(der.SEQUENCE, "RevDetails").children()
            if not parts:
                raise MessageError("empty RevDetails")
            entry = parts[1].expect(der.SEQUENCE, "crlEntryDetails").raw if len(parts) > 1 else None
            revocations.append(RevDetails(decode_cert_template(parts[0].expect(der.SEQUENCE, "certDetails")), entry))
        if not revocations:
            raise MessageError("RevReqContent is empty")
        return RevReqContent(tuple(revocations))
    if body_type is BodyType.RP:
        parts = node.expect(der.SEQUENCE, "RevRepContent").children()
        if not parts:
            raise MessageError("RevRepContent lacks status")
        statuses = tuple(decode_status_info(s) for s in parts[0].expect(der.SEQUENCE, "status").children())
        rev_certs: list[CertId] = []
        crls: tuple[bytes, ...] = ()
        for p in parts[1:]:
            if p.tag == 0xA0:
                for c in p.unwrap().children():
                    cp = c.children()
                    rev_certs.append(CertId(cp[0].raw, cp[1].expect(der.INTEGER, "serialNumber").as_int()))
            elif p.tag == 0xA1:
                crls = _decode_certs(p.unwrap(), "crls")
        return RevRepContent(statuses, tuple(rev_certs), crls)
    if body_type in (BodyType.GENM, BodyType.GENP):
        items = node.expect(der.SEQUENCE, "GenMsgContent").children()
        return GenMsgContent(tuple(decode_info(i) for i in items))
    if body_type is BodyType.ERROR:
        parts = node.expect(der.SEQUENCE, "ErrorMsgContent").children()
        if not parts:
            raise MessageError("ErrorMsgContent lacks PKIStatusInfo")
        code = None
        details: tuple[str, ...] = ()
        for p in parts[1:]:
            if p.tag == der.INTEGER:
                code = p.as_int()
            elif p.tag == der.SEQUENCE:
                details = _texts(p)
        return ErrorMsgContent(decode_status_info(parts[0]), code, details)
    if body_type is BodyType.POLLREQ:
        ids = []
        for e in node.expect(der.SEQUENCE, "PollReqContent").children():
            inner = e.expect(der.SEQUENCE, "PollReq entry").children()
            if not inner:
                raise MessageError("PollReq entry lacks certReqId")
            ids.append(inner[0].expect(der.INTEGER, "certReqId").as_int())
        return PollReqContent(tuple(ids))
    if body_type is BodyType.POLLREP:
        entries = []
        for e in node.expect(der.SEQUENCE, "PollRepContent").children():
            inner = e.expect(der.SEQUENCE, "PollRep entry").children()
            if len(inner) < 2:
                raise MessageError("PollRep entry lacks certReqId or checkAfter")
            reason = _texts(inner[2]) if len(inner) > 2 else ()
            entries.append(
                PollRepEntry(
                    inner[0].expect(der.INTEGER, "certReqId").as_int(),
                    inner[1].expect(der.INTEGER, "checkAfter").as_int(),
                    reason,
                )
            )
        return PollRepContent(tuple(entries))
    if body_type is BodyType.PKICONF:
        if node.tag != der.NULL or node.content:
            raise MessageError("pkiconf body must be NULL")
        return PKIConfirmContent()
    if body_type is BodyType.NESTED:
        return NestedMessageContent(tuple(m.raw for m in node.expect(der.SEQUENCE, "nested").children()))
    return OpaqueBody(node.raw)


_BODY_TYPES = tuple(BodyType)  # indexed by the PKIBody tag number


def decode(data: bytes) -> PKIMessage:
    """Decode one DER PKIMessage, strictly. Raises ``DerError`` or ``MessageError``."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    root = der.parse(data)
    parts = root.expect(der.SEQUENCE, "PKIMessage").children()
    if len(parts) < 2:
        raise MessageError("PKIMessage lacks header or body")
    header_node, body_node = parts[0], parts[1]
    header = decode_header(header_node)
    number = body_node.tag - 0xA0
    if not 0 <= number <= 26:
        raise MessageError(f"unknown PKIBody tag 0x{body_node.tag:02x}")
    body_type = _BODY_TYPES[number]
    try:
        body = decode_body(body_type, body_node.unwrap())
    except (IndexError, ValueError) as exc:
        raise MessageError(f"malformed {body_type.label} body") from exc
    protection = None
    extra: tuple[bytes, ...] = ()
    last = -1
    for p in parts[2:]:
        number = p.tag - 0xA0
        if number not in (0, 1) or number <= last:
            raise MessageError(f"unexpected field tag 0x{p.tag:02x} in PKIMessage")
        last = number
        if number == 0:
            protection, _ = p.unwrap().expect(der.BIT_STRING, "protection").as_bits()
        else:
            extra = _decode_certs(p.unwrap(), "extraCerts")
    # ProtectedPart, SEQUENCE { header, body }: one slice of the received bytes, re-tagged.
    protected = der.tlv(der.SEQUENCE, root.data[header_node.start : body_node.end])
    return PKIMessage(header, body_type, body, protection, extra, protected)
