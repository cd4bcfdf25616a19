"""The reference encoders: CMP records to DER.

Every writer of ``fleet.cmp.fastwire`` writes exactly what these write for the same values
(tests/cmp/test_fastwire.py).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from fleet.cmp import der
from fleet.cmp.messages.model import (
    Body,
    BodyType,
    CertConfirmContent,
    CertRepMessage,
    CertReqMessages,
    CertReqMsg,
    CertResponse,
    CertTemplate,
    ErrorMsgContent,
    GenMsgContent,
    InfoTypeAndValue,
    NestedMessageContent,
    OpaqueBody,
    P10Request,
    PKIConfirmContent,
    PKIHeader,
    PKIMessage,
    PKIStatusInfo,
    PollRepContent,
    PollReqContent,
    Popo,
    RevRepContent,
    RevReqContent,
)


def message_time_der(now: datetime | float) -> bytes:
    """``[0] messageTime`` for ``now`` (a datetime or seconds since the epoch) in whole seconds,
    as ``encode_header`` writes it."""
    when = now if isinstance(now, datetime) else datetime.fromtimestamp(math.floor(now), UTC)
    return der.explicit(0, der.generalized_time(when.replace(microsecond=0)))


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
    ckp = b""  # CertifiedKeyPair: the certificate, or the encrypted one
    if r.certificate is not None:
        ckp = der.explicit(0, r.certificate)
    elif r.encrypted_cert is not None:
        ckp = der.explicit(1, r.encrypted_cert)
    if ckp:
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
