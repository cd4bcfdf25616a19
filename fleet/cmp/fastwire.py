"""Offset readers and pre-encoded writers: the fast twins of the reference codec.

A device encodes and checks a handful of messages per enrollment and a fleet runs thousands of
enrollments a second, so the usual shapes of the usual messages skip the general machinery. Each
twin here has one contract with its reference in ``fleet.cmp.messages``:

* a reader answers exactly what the reference decoder answers, or returns None (or raises
  ``DerError``/``MessageError``) at anything it does not take, and then the reference decides,
  with its own result or error;
* a writer returns the bytes the reference encoder writes for the same values.

Both roles' twins live here. The client's: ``decode`` (and the header and ip/cp/kup readers it
is built on), ``HeaderWriter``, the CertRequest writers, ``spki_of_certificate``. The CA's:
``decode_request`` (the usual ir/cr/kur and certConf read by ``read_request``) and the pieces of a
response (``response_header_der``, ``general_info_der``, ``cert_rep_der``, ``response_der``), which
``fleet.cmp.server`` puts together around the protection it computes.

tests/cmp/test_fastwire.py checks every twin against its reference with Hypothesis, on valid and
on mutated input.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from functools import lru_cache

from fleet.cmp import der
from fleet.cmp.der import DerError, Tlv
from fleet.cmp.messages import decoding
from fleet.cmp.messages.encoding import encode_info, encode_status_info
from fleet.cmp.messages.model import (
    ACCEPTED,
    CERT_RESPONSE_BODIES,
    Body,
    BodyType,
    CertConfirmContent,
    CertRepMessage,
    CertReqMessages,
    CertReqMsg,
    CertResponse,
    CertStatus,
    CertTemplate,
    InfoTypeAndValue,
    MessageError,
    PKIHeader,
    PKIMessage,
    PKIStatusInfo,
    Popo,
)

__all__ = [
    "HeaderWriter",
    "cert_rep_der",
    "cert_request_der",
    "decode",
    "decode_body",
    "decode_cert_rep",
    "decode_header",
    "decode_request",
    "general_info_der",
    "message_time_der",
    "read_header_fields",
    "read_request",
    "response_der",
    "response_header_der",
    "signed_cert_req_body",
    "spki_of_certificate",
]

# ---------------------------------------------------------------------------------------------
# Readers


def read_header_fields(data: bytes, pos: int, end: int, depth: int = 1) -> PKIHeader | None:
    """The common PKIHeader shape (pvno, names, fields [0]-[6], [8]) read by offsets from the
    header's content ``data[pos:end]``, without a ``Tlv`` per field. ``depth`` is the header's
    nesting depth. Twin of ``decoding.decode_header``."""
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
            info = tuple(decoding.decode_info(i) for i in items)
        pos = ce
    return PKIHeader(
        sender, recipient, values[4], values[5], values[6], values[2], values[3], values[0],  # type: ignore[arg-type]
        values[1], (), info, pvno,  # type: ignore[arg-type]
    )


def decode_header(node: Tlv) -> PKIHeader:
    """``decoding.decode_header(node)``, by offsets where ``read_header_fields`` takes it."""
    if node.tag == der.SEQUENCE:
        try:
            header = read_header_fields(node.data, node.cstart, node.end, node.depth)
        except (der.DerError, MessageError):
            header = None  # the reference raises with its precise message
        if header is not None:
            return header
    return decoding.decode_header(node)


_STATUS_ONLY = tuple(PKIStatusInfo(status) for status in range(128))


def decode_cert_rep(node: Tlv) -> CertRepMessage | None:
    """The usual ip/cp/kup content (optional caPubs, one response, a status without text or
    failInfo, a certificate or none) read by offsets. Twin of ``decoding.decode_body``."""
    data, read, end = node.data, der.read_tlv, node.end
    if node.tag != der.SEQUENCE or node.depth + 6 > der.MAX_DEPTH or node.cstart == end:
        return None
    tag, cs, ce = read(data, node.cstart, end)
    ca_pubs: tuple[bytes, ...] = ()
    if tag == 0xA1:
        caps = Tlv(data, tag, node.cstart, cs, ce, node.depth + 1).unwrap()
        ca_pubs = decoding._decode_certs(caps, "caPubs")
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
    """``decoding.decode_body(body_type, node)``, by offsets where ``decode_cert_rep`` takes it."""
    if body_type in CERT_RESPONSE_BODIES:
        try:
            fast = decode_cert_rep(node)
        except (der.DerError, MessageError):
            fast = None  # the reference raises with its precise message
        if fast is not None:
            return fast
    return decoding.decode_body(body_type, node)


def decode(data: bytes) -> PKIMessage:
    """``decoding.decode(data)``: the same message or the same error, sooner for the usual ones."""
    return decoding.decode_with(data, decode_header, decode_body)


def spki_of_certificate(cert_der: bytes) -> bytes | None:
    """The SubjectPublicKeyInfo TLV of a certificate, sliced from its DER; None where the bytes
    cannot be walked. The reference is cryptography's parse and re-encoding of the key."""
    try:
        read = der.read_tlv
        _, cs, end = read(cert_der, 0, len(cert_der))
        _, pos, end = read(cert_der, cs, end)  # tbsCertificate
        tag, _, next_pos = read(cert_der, pos, end)
        # [0] version, serial, signature, issuer, validity, subject; then subjectPublicKeyInfo
        fields = 6 if tag == 0xA0 else 5
        for _ in range(fields):
            pos = next_pos
            _, _, next_pos = read(cert_der, pos, end)
        return cert_der[pos:next_pos]
    except der.DerError:
        return None


# ---------------------------------------------------------------------------------------------
# The CA's request reader: the usual ir/cr/kur and certConf by offsets


def decode_request(data: bytes) -> PKIMessage:
    """``decode(data)``, the same message or the same error, read by offsets for the usual
    requests (``read_request``); anything else, errors included, is ``decode``'s."""
    if type(data) is bytes and len(data) <= decoding.MAX_MESSAGE_BYTES:
        try:
            msg = read_request(data)
        except (DerError, MessageError, ValueError, IndexError):
            msg = None
        if msg is not None:
            return msg
    return decode(data)


_read = der.read_tlv
_SEQ = der.SEQUENCE
_CERT_REQUEST_TAGS = frozenset((0xA0, 0xA2, 0xA7))  # ir, cr, kur
_BODY_BY_TAG = {0xA0: BodyType.IR, 0xA2: BodyType.CR, 0xA7: BodyType.KUR, 0xB8: BodyType.CERTCONF}


def read_request(data: bytes) -> PKIMessage | None:
    """The usual request shapes: a header as ``read_header_fields`` takes it, one CertReqMsg
    with a plain template and a signature POP, or one CertStatus; a MAC-sized protection and no
    extraCerts. None (or an error) for anything else. Twin of ``decoding.decode``."""
    end = len(data)
    tag, pos, cend = _read(data, 0, end)
    if tag != _SEQ or cend != end:
        return None
    header_at = pos
    tag, hcs, hce = _read(data, pos, end)
    if tag != _SEQ:
        return None
    header = read_header_fields(data, hcs, hce)
    if header is None:
        return None
    body_tag, bcs, bce = _read(data, hce, end)
    if body_tag in _CERT_REQUEST_TAGS:
        body: Body | None = _read_cert_req_messages(data, bcs, bce)
    elif body_tag == 0xB8:  # [24] certConf
        body = _read_cert_confirm(data, bcs, bce)
    else:
        return None
    if body is None:
        return None
    body_end = bce
    tag, pcs, pce = _read(data, bce, end)  # [0] protection, the last field (no extraCerts)
    if tag != 0xA0 or pce != end:
        return None
    tag, vcs, vce = _read(data, pcs, pce)
    if tag != der.BIT_STRING or vce != pce or vce == vcs or data[vcs] != 0:
        return None
    protected = der.tlv(_SEQ, data[header_at:body_end])
    return PKIMessage(header, _BODY_BY_TAG[body_tag], body, data[vcs + 1 : vce], (), protected)


def _read_cert_req_messages(data: bytes, pos: int, end: int) -> CertReqMessages | None:
    """[n] { SEQUENCE { CertReqMsg } }: one request, certReqId 0..127, a template of subject,
    publicKey and extensions only, a signature POP without poposkInput, no regInfo."""
    tag, cs, ce = _read(data, pos, end)  # CertReqMessages
    if tag != _SEQ or ce != end:
        return None
    tag, mcs, mce = _read(data, cs, ce)  # the CertReqMsg
    if tag != _SEQ or mce != ce:
        return None
    request_at = mcs
    tag, rcs, rce = _read(data, mcs, mce)  # CertRequest
    if tag != _SEQ:
        return None
    tag, ics, ice = _read(data, rcs, rce)  # certReqId
    if tag != der.INTEGER or ice - ics != 1 or data[ics] > 0x7F:
        return None
    tag, tcs, tce = _read(data, ice, rce)  # certTemplate
    if tag != _SEQ:
        return None
    controls = None
    if tce != rce:
        _, _, controls_end = _read(data, tce, rce)
        if controls_end != rce:
            return None
        controls = data[tce:rce]
    template = _read_plain_template(data, tcs, tce)
    if template is None:
        return None
    popo_at = rce
    tag, pcs, pce = _read(data, rce, mce)  # POPOSigningKey [1]
    if tag != 0xA1 or pce != mce:
        return None
    tag, _, ace = _read(data, pcs, pce)
    if tag != _SEQ:  # also [0] poposkInput: the reference decoder reads that
        return None
    tag, scs, sce = _read(data, ace, pce)
    if tag != der.BIT_STRING or sce != pce or sce == scs or data[scs] != 0:
        return None
    popo = Popo("signature", data[pcs:ace], data[scs + 1 : sce], None, data[popo_at:pce])
    return CertReqMessages((CertReqMsg(data[ics], template, popo, controls, data[request_at:rce]),))


def _read_plain_template(data: bytes, pos: int, end: int) -> CertTemplate | None:
    subject = public_key = extensions = None
    last = -1
    while pos < end:
        tag, cs, ce = _read(data, pos, end)
        number = tag & 0x1F
        if number <= last:
            return None
        last = number
        if tag == 0xA5:
            _, _, ice = _read(data, cs, ce)
            if ice != ce:
                return None
            subject = data[cs:ce]
        elif tag == 0xA6:
            public_key = b"\x30" + data[pos + 1 : ce]
        elif tag == 0xA9:
            extensions = b"\x30" + data[pos + 1 : ce]
        else:
            return None
        pos = ce
    return CertTemplate(subject, public_key, extensions)


def _read_cert_confirm(data: bytes, pos: int, end: int) -> CertConfirmContent | None:
    """[24] { SEQUENCE { CertStatus } } with certHash, certReqId 0..127 and at most a
    PKIStatusInfo."""
    tag, cs, ce = _read(data, pos, end)
    if tag != _SEQ or ce != end or cs == ce:
        return None
    tag, scs, sce = _read(data, cs, ce)
    if tag != _SEQ or sce != ce:
        return None
    tag, hcs, hce = _read(data, scs, sce)
    if tag != der.OCTET_STRING:
        return None
    tag, ics, ice = _read(data, hce, sce)
    if tag != der.INTEGER or ice - ics != 1 or data[ics] > 0x7F:
        return None
    info = None
    if ice != sce:
        tag, _, info_end = _read(data, ice, sce)
        if tag != _SEQ or info_end != sce:
            return None
        info = _status_info(data, ice, sce)
    return CertConfirmContent((CertStatus(data[hcs:hce], data[ics], info, None),))


def _status_info(data: bytes, pos: int, end: int) -> PKIStatusInfo:
    tag, cs, ce = _read(data, pos, end)
    return decoding.decode_status_info(der.Tlv(data, tag, pos, cs, ce, 4))


# ---------------------------------------------------------------------------------------------
# Writers

_last_message_time: tuple[object, bytes] = (None, b"")


def message_time_der(now: datetime | float) -> bytes:
    """``encoding.message_time_der(now)``, encoded once per second: every message of a second
    shares one encoding, and a timestamp needs no datetime unless the second changed. ``now`` is
    always the caller's: nothing here reads a clock."""
    global _last_message_time
    key: object = now.replace(microsecond=0) if isinstance(now, datetime) else math.floor(now)
    if key != _last_message_time[0]:
        when = key if isinstance(key, datetime) else datetime.fromtimestamp(key, UTC)  # type: ignore[arg-type]
        _last_message_time = (key, der.explicit(0, der.generalized_time(when)))
    return _last_message_time[1]


class HeaderWriter:
    """A client's PKIHeaders for one transaction: the fields that stay the same (sender,
    recipient, protectionAlg, senderKID, transactionID) are encoded once.

    ``header(...)`` equals ``encoding.encode_header`` of the same fields; a client's header has no
    recipKID or freeText."""

    __slots__ = ("_names", "_tail")

    def __init__(
        self,
        sender: bytes,
        recipient: bytes,
        protection_alg: bytes | None,
        sender_kid: bytes | None,
        transaction_id: bytes,
    ) -> None:
        self._names = sender + recipient
        tail = b""
        if protection_alg is not None:
            tail += der.explicit(1, protection_alg)
        if sender_kid is not None:
            tail += der.explicit_octets(2, sender_kid)
        self._tail = tail + der.explicit_octets(4, transaction_id)

    def header(
        self,
        sender_nonce: bytes,
        *,
        pvno: int = 2,
        message_time: datetime | float | None = None,
        recip_nonce: bytes | None = None,
        info: tuple[InfoTypeAndValue, ...] = (),
    ) -> bytes:
        """The encoded PKIHeader; no messageTime when ``message_time`` is None."""
        parts = [b"\x02\x01\x02" if pvno == 2 else der.integer(pvno), self._names]
        if message_time is not None:
            parts.append(message_time_der(message_time))
        parts.append(self._tail)
        parts.append(der.explicit_octets(5, sender_nonce))
        if recip_nonce is not None:
            parts.append(der.explicit_octets(6, recip_nonce))
        if info:
            parts.append(der.explicit(8, der.sequence(*(encode_info(i) for i in info))))
        return der.sequence(*parts)


def cert_request_der(subject: bytes, spki: bytes, extensions: bytes | None) -> bytes:
    """A CRMF CertRequest with certReqId 0, a template of subject, publicKey and extensions
    (None: absent) and no controls: ``encoding.encode_cert_request(0, CertTemplate(subject=subject,
    public_key=spki, extensions=extensions))``."""
    template = der.sequence(  # CertTemplate: subject [5], publicKey [6], extensions [9]
        der.explicit(5, subject),
        b"\xa6" + spki[1:],
        b"\xa9" + extensions[1:] if extensions is not None else b"",
    )
    return der.sequence(b"\x02\x01\x00", template)


def signed_cert_req_body(
    kind: BodyType, cert_request: bytes, algorithm: bytes, signature: bytes
) -> bytes:
    """An ir/cr/kur PKIBody of one CertReqMsg: ``cert_request`` (encoded) and its signature POP.
    ``encoding.encode_body(kind, CertReqMessages((msg,)))`` for the CertReqMsg holding them."""
    popo = der.tlv(0xA1, algorithm + der.bit_string(signature))
    return der.explicit(kind, der.sequence(der.sequence(cert_request, popo)))


# ---------------------------------------------------------------------------------------------
# The CA's response writer: the parts that repeat between responses, encoded once

_PVNO_2 = b"\x02\x01\x02"


def response_header_der(
    sender: bytes, recipient: bytes, time_der: bytes, alg: bytes | None, kid: bytes | None,
    tid: bytes | None, nonce: bytes, recip_nonce: bytes | None, info_der: bytes, pvno: int = 2,
) -> bytes:
    """``encoding.encode_header`` of a response header (no freeText or recipKID), from the
    encoded messageTime (``message_time_der``) and generalInfo (``general_info_der``)."""
    out = (_PVNO_2 if pvno == 2 else der.integer(pvno)) + sender + recipient + time_der + _alg_kid_der(alg, kid)
    if tid is not None:
        out += der.explicit_octets(4, tid)
    out += der.explicit_octets(5, nonce)
    if recip_nonce is not None:
        out += der.explicit_octets(6, recip_nonce)
    return der.sequence(out + info_der)


@lru_cache(maxsize=4096)
def _alg_kid_der(alg: bytes | None, kid: bytes | None) -> bytes:
    """[1] protectionAlg and [2] senderKID: a device's (its salt, its reference) or the RA
    signer's, the same in every response of a transaction and of a device's next ones."""
    out = b"" if alg is None else der.explicit(1, alg)
    return out if kid is None else out + der.explicit_octets(2, kid)


@lru_cache(maxsize=64)
def general_info_der(info: tuple[InfoTypeAndValue, ...]) -> bytes:
    """[8] generalInfo: implicitConfirm, or confirmWaitTime (one value per second)."""
    return der.explicit(8, der.sequence(b"".join(encode_info(i) for i in info)))


def response_der(header_der: bytes, body_der: bytes, protection: bytes, extra_certs: tuple[bytes, ...]) -> bytes:
    """``encoding.assemble(header_der, body_der, protection, extra_certs)``, its protection
    written without the general encoder and its extraCerts encoded once per chain."""
    n = len(protection)
    if n < 0x7C:  # [0] { BIT STRING } with short lengths, the usual MAC or ECDSA signature
        tail = bytes((0xA0, n + 3, der.BIT_STRING, n + 1, 0)) + protection
    else:
        tail = der.explicit(0, der.bit_string(protection))
    if extra_certs:
        tail += _extra_certs_der(extra_certs)
    return der.tlv(der.SEQUENCE, header_der + body_der + tail)


@lru_cache(maxsize=64)
def _extra_certs_der(certs: tuple[bytes, ...]) -> bytes:
    """[1] extraCerts: the same chain (and root) in every response of a CA."""
    return der.explicit(1, der.sequence(b"".join(certs)))


@lru_cache(maxsize=64)
def _ca_pubs_der(ca_pubs: tuple[bytes, ...]) -> bytes:
    return der.explicit(1, der.sequence(b"".join(ca_pubs)))


_ACCEPTED_DER = encode_status_info(ACCEPTED)


def cert_rep_der(body_type: BodyType, body: Body) -> bytes | None:
    """An ip/cp/kup carrying one accepted certificate, encoded directly; None for any other
    body (``encoding.encode_body`` does those)."""
    if type(body) is not CertRepMessage or len(body.responses) != 1:
        return None
    r = body.responses[0]
    if r.status != ACCEPTED or r.certificate is None or r.private_key is not None or r.rsp_info is not None:
        return None
    response = der.sequence(
        der.integer(r.cert_req_id) + _ACCEPTED_DER + der.sequence(der.explicit(0, r.certificate))
    )
    head = _ca_pubs_der(body.ca_pubs) if body.ca_pubs else b""
    return der.explicit(int(body_type), der.sequence(head + der.sequence(response)))
