"""fleet's hand-written CMP codec against the reference: pyasn1 with pyasn1-alt-modules.

Direction 1 (fleet -> pyasn1): messages built with the dataclasses decode with
``rfc9480.PKIMessage()`` and ``rfc9810.PKIMessage()`` with no remainder, and pyasn1 re-encodes them
to identical bytes. DER is canonical, so byte identity is the whole test.

Direction 2 (pyasn1 -> fleet): messages built with pyasn1 decode with ``messages.decode`` to the
expected dataclass values, and ``protected_part`` is pyasn1's ``ProtectedPart(header, body)``.

Known pyasn1 quirks, handled explicitly rather than avoided:
- pyasn1 drops empty constructed optional fields of a CertTemplate on re-encode. An empty Name (NULL-DN, ``30 00``) as a CertTemplate ``subject`` (``a5 02 30 00``) is decoded
  but dropped on re-encode. RFC 9483 §4.1.1 asks for exactly that subject when a device has only a
  SAN, so fleet keeps writing it; the test checks pyasn1 saw it and compares pyasn1's re-encoding
  with fleet's encoding of the same message without the subject. The same happens to an
  OptionalValidity with neither time (``a4 00``), which is valid DER for a value fleet can hold.
- pyasn1 writes -2**(8k-1) INTEGERs with a spare 0xff octet (see ``strategies._pyasn1_safe`` and
  ``test_der.py``); strategies keep those values out of byte comparisons.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pyasn1.codec.der import decoder, encoder
from pyasn1_alt_modules import rfc5280, rfc9480, rfc9810

from fleet.cmp import der, oids
from fleet.cmp import messages as m

from . import strategies as S

MODULES = (rfc9480, rfc9810)
_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no slow "explain" phase
)


def pyasn1_decode(data: bytes, spec):
    obj, rest = decoder.decode(data, asn1Spec=spec)
    assert rest == b"", "pyasn1 left a remainder"
    return obj


def fail_bits_of(bitstring) -> int:
    """A pyasn1 BIT STRING of named bits as an int whose bit i is ASN.1 bit i."""
    return sum(bit << i for i, bit in enumerate(bitstring))


# ---------------------------------------------------------------------------------------------
# Direction 1: fleet encodes, pyasn1 decodes and re-encodes


def _templates(msg: m.PKIMessage) -> list[m.CertTemplate]:
    if isinstance(msg.body, m.CertReqMessages):
        return [r.template for r in msg.body.messages]
    if isinstance(msg.body, m.RevReqContent):
        return [d.template for d in msg.body.details]
    return []


def _has_empty_parts(t: m.CertTemplate) -> bool:
    return t.subject == m.NULL_DN or t.validity == m.Validity()


def _without_empty_subjects(msg: m.PKIMessage) -> m.PKIMessage:
    """The message pyasn1 re-encodes when a template has an empty constructed field: it drops a
    NULL-DN subject and an OptionalValidity with neither time (``a4 00``) alike."""

    def fix(t: m.CertTemplate) -> m.CertTemplate:
        if t.subject == m.NULL_DN:
            t = dataclasses.replace(t, subject=None)
        if t.validity == m.Validity():
            t = dataclasses.replace(t, validity=None)
        return t

    body = msg.body
    if isinstance(body, m.CertReqMessages):
        body = m.CertReqMessages(
            tuple(dataclasses.replace(r, template=fix(r.template)) for r in body.messages)
        )
    elif isinstance(body, m.RevReqContent):
        body = m.RevReqContent(
            tuple(dataclasses.replace(d, template=fix(d.template)) for d in body.details)
        )
    return dataclasses.replace(msg, body=body)


def _pyasn1_templates(obj) -> list:
    body = obj["body"]
    name = body.getName()
    if name in ("ir", "cr", "kur"):
        return [r["certReq"]["certTemplate"] for r in body[name]]
    if name == "rr":
        return [d["certDetails"] for d in body[name]]
    return []


def _check_fields(obj, msg: m.PKIMessage) -> None:
    """Spot checks that pyasn1 reads the values fleet meant, not only the same bytes."""
    h, ph = msg.header, obj["header"]
    assert int(ph["pvno"]) == h.pvno
    assert encoder.encode(ph["sender"]) == h.sender
    for attr, name in [
        ("transaction_id", "transactionID"),
        ("sender_nonce", "senderNonce"),
        ("recip_nonce", "recipNonce"),
        ("sender_kid", "senderKID"),
    ]:
        value = getattr(h, attr)
        assert (bytes(ph[name]) if ph[name].isValue else None) == value
    assert (
        tuple(str(t) for t in ph["freeText"]) == h.free_text
        if h.free_text
        else not ph["freeText"].isValue
    )
    assert [str(i["infoType"]) for i in ph["generalInfo"]] == [i.oid for i in h.general_info]
    if h.message_time is not None:
        assert ph["messageTime"].asDateTime == h.message_time
    assert obj["body"].getName() == msg.body_type.label
    body = obj["body"].getComponent()
    match msg.body:
        case m.CertReqMessages(messages=reqs):
            assert [int(r["certReq"]["certReqId"]) for r in body] == [r.cert_req_id for r in reqs]
        case m.CertRepMessage(responses=rsps, ca_pubs=ca_pubs):
            assert [int(r["status"]["status"]) for r in body["response"]] == [
                r.status.status for r in rsps
            ]
            got = [
                fail_bits_of(r["status"]["failInfo"]) if r["status"]["failInfo"].isValue else None
                for r in body["response"]
            ]
            assert got == [r.status.fail_info for r in rsps]
            assert [encoder.encode(c) for c in body["caPubs"]] == list(ca_pubs)
        case m.CertConfirmContent(statuses=sts):
            assert [bytes(s["certHash"]) for s in body] == [s.cert_hash for s in sts]
        case m.ErrorMsgContent(status=status, error_code=code, details=details):
            assert int(body["pKIStatusInfo"]["status"]) == status.status
            assert [str(t) for t in body["pKIStatusInfo"]["statusString"]] == list(status.texts)
            assert (int(body["errorCode"]) if body["errorCode"].isValue else None) == code
            assert [str(t) for t in body["errorDetails"]] == list(details)
        case m.PollRepContent(entries=entries):
            assert [(int(e["certReqId"]), int(e["checkAfter"])) for e in body] == [
                (e.cert_req_id, e.check_after) for e in entries
            ]
        case m.GenMsgContent(items=items):
            assert [str(i["infoType"]) for i in body] == [i.oid for i in items]
            assert [
                encoder.encode(i["infoValue"]) if i["infoValue"].isValue else None for i in body
            ] == [i.value for i in items]
        case _:
            pass


def _check_against_pyasn1(msg: m.PKIMessage) -> None:
    data = m.encode(msg)
    empty_subjects = [t.subject == m.NULL_DN for t in _templates(msg)]
    quirk = any(_has_empty_parts(t) for t in _templates(msg))
    expected = m.encode(_without_empty_subjects(msg)) if quirk else data
    for module in MODULES:
        obj = pyasn1_decode(data, module.PKIMessage())
        if any(empty_subjects):
            # pyasn1 did read the NULL-DN (an empty RDNSequence), it only fails to write it back.
            for tmpl, empty in zip(_pyasn1_templates(obj), empty_subjects):
                if empty:
                    assert len(tmpl["subject"]["rdnSequence"]) == 0
        assert encoder.encode(obj) == expected, module.__name__
        _check_fields(obj, msg)
    assert m.encode(m.decode(data)) == data  # and fleet reads its own bytes back


@pytest.mark.parametrize("body_type", S.BODY_TYPES, ids=lambda b: b.label)
@_SETTINGS
@given(data=st.data())
def test_fleet_encoding_is_what_pyasn1_encodes(body_type: m.BodyType, data) -> None:
    _check_against_pyasn1(data.draw(S.pki_messages(body_type)))


def test_null_dn_subject_quirk_is_real() -> None:
    """Pins the pyasn1 behaviour the tests work around; if pyasn1 fixes it, simplify them."""
    tmpl = m.CertTemplate(subject=m.NULL_DN, public_key=S.SPKIS[1])
    body = m.CertReqMessages((m.CertReqMsg(0, tmpl, m.Popo("raVerified")),))
    msg = m.PKIMessage(
        m.PKIHeader(m.NULL_DN_GENERAL_NAME, m.NULL_DN_GENERAL_NAME), m.BodyType.IR, body
    )
    data = m.encode(msg)
    assert b"\xa5\x02\x30\x00" in data
    reencoded = encoder.encode(pyasn1_decode(data, rfc9480.PKIMessage()))
    assert b"\xa5\x02\x30\x00" not in reencoded
    assert reencoded == m.encode(_without_empty_subjects(msg))
    # fleet keeps the subject through its own round trip.
    assert m.decode(data).body.messages[0].template.subject == m.NULL_DN


# ---------------------------------------------------------------------------------------------
# Direction 2: pyasn1 builds, fleet decodes

NAME = der.sequence(
    der.set_of(der.sequence(der.oid("2.5.4.3"), der.utf8_string("Gerät 7 — ünïcode"))),
    der.set_of(der.sequence(der.oid("2.5.4.10"), der.utf8_string("fleet"))),
)
TID = bytes(range(16))
NONCE = bytes(range(16, 32))
TIME = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def _typed(parent, name: str, **kw):
    """A value for ``parent[name]`` of the component's own (tagged) type."""
    types = parent.componentType
    return types[types.getPositionByName(name)].asn1Object.clone(**kw)


def _append(seq_of):
    item = seq_of.componentType.clone()
    seq_of.append(item)
    return seq_of[len(seq_of) - 1]


def _set_name(choice_holder, name_der: bytes) -> None:
    choice_holder["rdnSequence"] = pyasn1_decode(name_der, rfc5280.Name())["rdnSequence"]


def _set_status(info, status: int, texts: tuple[str, ...] = (), fail: str | None = None) -> None:
    info["status"] = status
    for t in texts:
        info["statusString"].append(t)
    if fail is not None:
        info["failInfo"] = _typed(info, "failInfo", value=fail)


def _pyasn1_message(module, body_name: str):
    """A PKIMessage with a full header; the caller fills ``body[body_name]``."""
    msg = module.PKIMessage()
    h = msg["header"]
    h["pvno"] = 2
    _set_name(h["sender"]["directoryName"], NAME)
    _set_name(h["recipient"]["directoryName"], m.NULL_DN)
    h["messageTime"] = TIME.strftime("%Y%m%d%H%M%SZ")
    h["protectionAlg"]["algorithm"] = oids.ECDSA_SHA256
    h["senderKID"] = b"kid"
    h["transactionID"] = TID
    h["senderNonce"] = NONCE
    h["freeText"].append("über")
    itv = _append(h["generalInfo"])
    itv["infoType"] = oids.IT_IMPLICIT_CONFIRM
    itv["infoValue"] = der.NULL_DER
    return msg, msg["body"][body_name]


EXPECTED_HEADER = m.PKIHeader(
    sender=m.directory_name(NAME),
    recipient=m.NULL_DN_GENERAL_NAME,
    transaction_id=TID,
    sender_nonce=NONCE,
    sender_kid=b"kid",
    message_time=TIME,
    protection_alg=der.algorithm_identifier(oids.ECDSA_SHA256),
    free_text=("über",),
    general_info=(m.InfoTypeAndValue(oids.IT_IMPLICIT_CONFIRM, der.NULL_DER),),
)


def _finish(module, msg, protection: bytes | None = b"\x01\x02\x03", extra: tuple[bytes, ...] = ()):
    if protection is not None:
        msg["protection"] = _typed(msg, "protection", hexValue=protection.hex())
    for cert in extra:
        msg["extraCerts"].append(pyasn1_decode(cert, module.CMPCertificate()))
    data = encoder.encode(msg)
    decoded = m.decode(data)
    assert decoded.header == EXPECTED_HEADER
    assert decoded.protection == protection
    assert decoded.extra_certs == extra
    pp = module.ProtectedPart()
    pp["header"] = msg["header"]
    pp["body"] = msg["body"]
    assert decoded.protected_part == encoder.encode(pp)
    assert m.encode(decoded) == data
    return decoded


@pytest.mark.parametrize("module", MODULES, ids=lambda mod: mod.__name__.rsplit(".", 1)[1])
class TestPyasn1Built:
    def test_ir_with_signature_pop(self, module) -> None:
        msg, ir = _pyasn1_message(module, "ir")
        crm = _append(ir)
        crm["certReq"]["certReqId"] = 0
        tmpl = crm["certReq"]["certTemplate"]
        _set_name(tmpl["subject"], NAME)
        spki = pyasn1_decode(S.SPKIS[1], rfc5280.SubjectPublicKeyInfo())
        for key in spki:
            tmpl["publicKey"][key] = spki[key]
        sig = crm["popo"]["signature"]
        sig["algorithmIdentifier"]["algorithm"] = oids.ECDSA_SHA256
        sig["signature"] = _typed(sig, "signature", hexValue=b"\x30\x06sig!!".hex())
        decoded = _finish(module, msg, extra=S.CERTS[1:2])
        assert decoded.body_type is m.BodyType.IR
        (req,) = decoded.body.messages
        assert req.cert_req_id == 0
        assert req.template == m.CertTemplate(subject=NAME, public_key=S.SPKIS[1])
        assert req.cert_request_der == encoder.encode(crm["certReq"])  # the POP's signed input
        assert req.popo == m.Popo(
            "signature",
            der.algorithm_identifier(oids.ECDSA_SHA256),
            b"\x30\x06sig!!",
            None,
            raw=encoder.encode(crm["popo"]),
        )

    def test_ip_with_ca_pubs(self, module) -> None:
        msg, ip = _pyasn1_message(module, "ip")
        ip["caPubs"].append(pyasn1_decode(S.CERTS[0], module.CMPCertificate()))
        rsp = _append(ip["response"])
        rsp["certReqId"] = 0
        _set_status(rsp["status"], 0)
        coec = rsp["certifiedKeyPair"]["certOrEncCert"]
        # the [0]-tagged CMPCertificate type wants its tag on the wire: decode it wrapped
        coec["certificate"] = pyasn1_decode(
            der.explicit(0, S.CERTS[1]), coec.componentType[0].asn1Object
        )
        decoded = _finish(module, msg, extra=S.CERTS[:1])
        assert decoded.body == m.CertRepMessage(
            (m.CertResponse(0, m.PKIStatusInfo(0), certificate=S.CERTS[1]),), ca_pubs=(S.CERTS[0],)
        )

    def test_cert_conf(self, module) -> None:
        msg, cc = _pyasn1_message(module, "certConf")
        st0 = _append(cc)
        st0["certHash"] = b"\xaa" * 32
        st0["certReqId"] = 0
        st1 = _append(cc)
        st1["certHash"] = b"\xbb" * 32
        st1["certReqId"] = 1
        _set_status(st1["statusInfo"], 2, ("bad key",), "badCertTemplate")
        st1["hashAlg"]["algorithm"] = oids.SHA256
        decoded = _finish(module, msg)
        fail = m.FailInfo.badCertTemplate.mask
        assert decoded.body == m.CertConfirmContent(
            (
                m.CertStatus(b"\xaa" * 32, 0),
                m.CertStatus(
                    b"\xbb" * 32,
                    1,
                    m.PKIStatusInfo(2, ("bad key",), fail),
                    der.algorithm_identifier(oids.SHA256),
                ),
            )
        )

    def test_rr_with_reason(self, module) -> None:
        msg, rr = _pyasn1_message(module, "rr")
        details = _append(rr)
        _set_name(details["certDetails"]["issuer"], NAME)
        details["certDetails"]["serialNumber"] = 0x1234567890ABCDEF
        ext = _append(details["crlEntryDetails"])
        ext["extnID"] = oids.CRL_REASON
        ext["extnValue"] = encoder.encode(rfc5280.CRLReason("keyCompromise"))
        decoded = _finish(module, msg)
        (d,) = decoded.body.details
        assert d.template == m.CertTemplate(issuer=NAME, serial=0x1234567890ABCDEF)
        assert d.reason == 1
        assert d.crl_entry_details == encoder.encode(details["crlEntryDetails"])

    def test_genm(self, module) -> None:
        msg, genm = _pyasn1_message(module, "genm")
        _append(genm)["infoType"] = oids.IT_CA_CERTS
        item = _append(genm)
        item["infoType"] = oids.IT_CERT_PROFILE
        item["infoValue"] = der.sequence(der.utf8_string("profile-α"))
        decoded = _finish(module, msg, protection=None)
        assert decoded.body == m.GenMsgContent(
            (
                m.InfoTypeAndValue(oids.IT_CA_CERTS),
                m.InfoTypeAndValue(
                    oids.IT_CERT_PROFILE, der.sequence(der.utf8_string("profile-α"))
                ),
            )
        )

    def test_error(self, module) -> None:
        msg, err = _pyasn1_message(module, "error")
        _set_status(err["pKIStatusInfo"], 2, ("no", "nein"), "badPOP,badRequest,duplicateCertReq")
        err["errorCode"] = -7
        err["errorDetails"].append("détail")
        decoded = _finish(module, msg)
        bits = (
            m.FailInfo.badPOP.mask | m.FailInfo.badRequest.mask | m.FailInfo.duplicateCertReq.mask
        )
        assert decoded.body == m.ErrorMsgContent(
            m.PKIStatusInfo(2, ("no", "nein"), bits), -7, ("détail",)
        )
        assert decoded.body.status.fail_names == ("badRequest", "badPOP", "duplicateCertReq")

    def test_poll_rep(self, module) -> None:
        msg, rep = _pyasn1_message(module, "pollRep")
        e0 = _append(rep)
        e0["certReqId"] = 0
        e0["checkAfter"] = 5
        e1 = _append(rep)
        e1["certReqId"] = -1
        e1["checkAfter"] = 2**40
        e1["reason"].append("CA busy ⏳")
        decoded = _finish(module, msg)
        assert decoded.body == m.PollRepContent(
            (m.PollRepEntry(0, 5), m.PollRepEntry(-1, 2**40, ("CA busy ⏳",)))
        )
