"""The reference decoders: strict, one general path per structure, no fast branches.

The codec is hand-written on ``fleet.cmp.der`` because pyasn1 costs milliseconds a message; tests
check it against pyasn1-alt-modules in both directions. ``fleet.cmp.fastwire`` reads the usual
shapes by offsets and hands everything else to these readers, so their errors are the ones a peer
sees.
"""

from __future__ import annotations

from collections.abc import Callable

from fleet.cmp import der
from fleet.cmp.der import Tlv
from fleet.cmp.messages.model import (
    CERT_REQUEST_BODIES,
    CERT_RESPONSE_BODIES,
    Body,
    BodyType,
    CertConfirmContent,
    CertId,
    CertRepMessage,
    CertReqMessages,
    CertReqMsg,
    CertResponse,
    CertStatus,
    CertTemplate,
    ErrorMsgContent,
    GenMsgContent,
    InfoTypeAndValue,
    MessageError,
    NestedMessageContent,
    OpaqueBody,
    P10Request,
    PKIConfirmContent,
    PKIHeader,
    PKIMessage,
    PKIStatusInfo,
    PollRepContent,
    PollRepEntry,
    PollReqContent,
    Popo,
    RevDetails,
    RevRepContent,
    RevReqContent,
    Validity,
)

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



def decode_header(node: Tlv) -> PKIHeader:
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


def decode_body(body_type: BodyType, node: Tlv) -> Body:
    """Decode the content of a PKIBody choice (``node`` is the TLV inside the choice tag)."""
    if body_type in CERT_REQUEST_BODIES or body_type is BodyType.CCR:
        msgs = node.expect(der.SEQUENCE, "CertReqMessages").children()
        if not msgs:
            raise MessageError("CertReqMessages is empty")
        return CertReqMessages(tuple(decode_cert_req_msg(m) for m in msgs))
    if body_type is BodyType.P10CR:
        return P10Request(node.expect(der.SEQUENCE, "CertificationRequest").raw)
    if body_type in CERT_RESPONSE_BODIES or body_type is BodyType.CCP:
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


HeaderReader = Callable[[Tlv], PKIHeader]
BodyReader = Callable[[BodyType, Tlv], Body]


def decode(data: bytes) -> PKIMessage:
    """Decode one DER PKIMessage, strictly. Raises ``DerError`` or ``MessageError``."""
    return decode_with(data, decode_header, decode_body)


def decode_with(data: bytes, read_header: HeaderReader, read_body: BodyReader) -> PKIMessage:
    """``decode``'s frame (size limit, PKIMessage SEQUENCE, body tag, protection, extraCerts,
    ProtectedPart) around the given header and body readers. ``fleet.cmp.fastwire`` passes readers
    that answer exactly what ``decode_header`` and ``decode_body`` answer, only sooner."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    root = der.parse(data)
    parts = root.expect(der.SEQUENCE, "PKIMessage").children()
    if len(parts) < 2:
        raise MessageError("PKIMessage lacks header or body")
    header_node, body_node = parts[0], parts[1]
    header = read_header(header_node)
    number = body_node.tag - 0xA0
    if not 0 <= number <= 26:
        raise MessageError(f"unknown PKIBody tag 0x{body_node.tag:02x}")
    body_type = _BODY_TYPES[number]
    try:
        body = read_body(body_type, body_node.unwrap())
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
