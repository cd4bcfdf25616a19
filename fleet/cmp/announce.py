"""CA announcements (RFC 9810 §5.3.13-5.3.16), without I/O: built signed, read verified.

A CA pushes announcements to end entities (RFC 9811 carries RFC 6712 §3.7's HTTP push): a CA
key update (ckuann: oldWithNew, newWithOld, newWithNew), an issued certificate (cann), a
revocation (rann: status, certId, willBeRevokedAt, badSinceDate, crlDetails) and CRLs (crlann).
``announce`` builds one, signed by the CA's CMP signer; ``read_announcement`` believes one only
when it is an announcement (badRequest), signed (badMessageCheck) by a certificate that chains
to the receiver's trust anchors and is named by sender and senderKID (signerNotTrusted,
badMessageCheck), its content well-formed (badDataFormat) and about the receiver's CA
(wrongAuthority): a rann's certId issuer is a CA on the signer's path, a ckuann's newWithOld is
signed by a trusted root's key (the old key vouching for the new one, RFC 9810 §4.4), and then
every other link of the update must hold (``fleet.cmp.rootupdate``, badCertId).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from fleet.cmp import der
from fleet.cmp.der import DerError
from fleet.cmp.fastwire import decode
from fleet.cmp.messages import (
    NULL_DN_GENERAL_NAME,
    BodyType,
    FailInfo,
    MessageError,
    OpaqueBody,
    PKIHeader,
    PKIMessage,
    assemble,
    directory_name,
    encode_body,
    encode_header,
    protected_part,
)
from fleet.cmp.protection import ProtectionError, SignatureProtector, verify_signature
from fleet.cmp.rootupdate import RootUpdateError, check_root_update
from fleet.cmp.trust import (
    SignerMismatch,
    TrustStore,
    UntrustedSigner,
    check_signer_names,
    find_signer,
    load_cert,
)
from fleet.errors import FleetError
from fleet.records import record

__all__ = [
    "ANNOUNCEMENTS",
    "Announcement",
    "AnnouncementError",
    "CertAnnouncement",
    "CrlAnnouncement",
    "KeyUpdateAnnouncement",
    "RevAnnouncement",
    "announce",
    "read_announcement",
]

ANNOUNCEMENTS = frozenset({BodyType.CKUANN, BodyType.CANN, BodyType.RANN, BodyType.CRLANN})


class AnnouncementError(FleetError):
    """An announcement not to be believed; ``fail`` names why (module doc)."""

    def __init__(self, fail: FailInfo, text: str) -> None:
        super().__init__(text)
        self.fail = fail
        self.text = text


@record
class RevAnnouncement:
    """rann: ``issuer`` is a GeneralName (DER), ``status`` a PKIStatus (revocation warning 4,
    notification 5, or rejection 2 for a request refused after all)."""

    status: int
    issuer: bytes
    serial: int
    will_be_revoked_at: datetime
    bad_since: datetime
    crl_details: bytes | None = None  # encoded Extensions


@record
class KeyUpdateAnnouncement:
    """ckuann: the three root certificates of a CA key rollover (DER)."""

    old_with_new: bytes
    new_with_old: bytes
    new_with_new: bytes


@record
class CertAnnouncement:
    certificate: bytes


@record
class CrlAnnouncement:
    crls: tuple[bytes, ...]


Announcement = RevAnnouncement | KeyUpdateAnnouncement | CertAnnouncement | CrlAnnouncement


def _content(a: Announcement) -> tuple[BodyType, bytes]:
    match a:
        case RevAnnouncement():
            parts = [der.integer(a.status), der.sequence(a.issuer, der.integer(a.serial)),
                     der.generalized_time(a.will_be_revoked_at), der.generalized_time(a.bad_since)]
            if a.crl_details is not None:
                parts.append(a.crl_details)
            return BodyType.RANN, der.sequence(*parts)
        case KeyUpdateAnnouncement():
            return BodyType.CKUANN, der.sequence(a.old_with_new, a.new_with_old, a.new_with_new)
        case CertAnnouncement():
            return BodyType.CANN, a.certificate
        case CrlAnnouncement():
            return BodyType.CRLANN, der.sequence(*a.crls)
    raise TypeError(f"not an announcement: {type(a).__name__}")


def announce(
    a: Announcement, signer: SignatureProtector, *, now: float, random: Callable[[int], bytes],
    recipient: bytes = NULL_DN_GENERAL_NAME,
) -> bytes:
    """The announcement as a PKIMessage signed by the CA's CMP signer: a transaction of its own
    (new transactionID and senderNonce, RFC 9483 §3.1)."""
    body_type, content = _content(a)
    header = PKIHeader(
        sender=directory_name(signer.sender_name), recipient=recipient, transaction_id=random(16),
        sender_nonce=random(16), sender_kid=signer.sender_kid, protection_alg=signer.algorithm,
        message_time=datetime.fromtimestamp(math.floor(now), UTC),
    )
    header_der = encode_header(header)
    body_der = encode_body(body_type, OpaqueBody(content))
    return assemble(header_der, body_der, signer.protect(protected_part(header_der, body_der)), signer.extra_certs)


def read_announcement(
    data: bytes, *, trust: TrustStore, now: float, untrusted: tuple[x509.Certificate, ...] = (),
) -> tuple[PKIMessage, Announcement]:
    """The verified announcement in ``data``, or ``AnnouncementError`` (module doc)."""
    try:
        msg = decode(data)
    except (DerError, MessageError, ValueError, IndexError, RecursionError) as exc:
        raise AnnouncementError(FailInfo.badDataFormat, f"not a PKIMessage: {exc}") from None
    if msg.body_type not in ANNOUNCEMENTS:
        raise AnnouncementError(FailInfo.badRequest, f"{msg.label} is not an announcement")
    h = msg.header
    if msg.protection is None or h.protection_alg is None:
        raise AnnouncementError(FailInfo.badMessageCheck, "announcement is not protected")
    try:
        signer = find_signer(msg.extra_certs, h.sender_kid)
        verify_signature(h.protection_alg, signer.public_key(), msg.protected_part, msg.protection)
        path = trust.verify(signer, [load_cert(c) for c in msg.extra_certs] + list(untrusted),
                            at=datetime.fromtimestamp(now, UTC))
        check_signer_names(h.sender, h.sender_kid, signer)
    except UntrustedSigner as exc:
        raise AnnouncementError(FailInfo.signerNotTrusted, str(exc)) from None
    except (ProtectionError, SignerMismatch, ValueError, TypeError) as exc:
        raise AnnouncementError(FailInfo.badMessageCheck, f"signature: {exc}") from None
    body = msg.body
    assert isinstance(body, OpaqueBody)
    try:
        announcement = _parse(msg.body_type, body.raw)
    except (DerError, MessageError, ValueError, IndexError) as exc:
        raise AnnouncementError(FailInfo.badDataFormat, f"malformed {msg.label}: {exc}") from None
    _check_authority(announcement, path, trust, datetime.fromtimestamp(now, UTC))
    return msg, announcement


def _parse(body_type: BodyType, raw: bytes) -> Announcement:
    node = der.parse(raw)
    if body_type is BodyType.RANN:
        parts = node.expect(der.SEQUENCE, "RevAnnContent").children()
        if len(parts) not in (4, 5):
            raise MessageError("RevAnnContent needs status, certId, willBeRevokedAt, badSinceDate")
        cert_id = parts[1].expect(der.SEQUENCE, "certId").children()
        if len(cert_id) != 2:
            raise MessageError("certId needs issuer and serialNumber")
        return RevAnnouncement(
            parts[0].expect(der.INTEGER, "status").as_int(), cert_id[0].raw,
            cert_id[1].expect(der.INTEGER, "serialNumber").as_int(), parts[2].as_time(), parts[3].as_time(),
            parts[4].raw if len(parts) == 5 else None,
        )
    if body_type is BodyType.CKUANN:
        parts = node.expect(der.SEQUENCE, "CAKeyUpdAnnContent").children()
        if len(parts) != 3:
            raise MessageError("CAKeyUpdAnnContent needs oldWithNew, newWithOld, newWithNew")
        for p in parts:
            load_cert(p.raw)
        return KeyUpdateAnnouncement(parts[0].raw, parts[1].raw, parts[2].raw)
    if body_type is BodyType.CANN:
        load_cert(node.raw)
        return CertAnnouncement(node.raw)
    crls = tuple(c.raw for c in node.expect(der.SEQUENCE, "CRLAnnContent").children())
    for c in crls:
        x509.load_der_x509_crl(c)
    return CrlAnnouncement(crls)


def _check_authority(a: Announcement, path: list[x509.Certificate], trust: TrustStore, at: datetime) -> None:
    """About the receiver's CA (module doc), else wrongAuthority."""
    if isinstance(a, RevAnnouncement):
        names = {c.subject.public_bytes() for c in path}
        node = der.parse(a.issuer)
        issuer = node.unwrap().raw if node.tag == 0xA4 else None
        if issuer not in names:
            raise AnnouncementError(FailInfo.wrongAuthority, "rann names a certificate of another CA")
    elif isinstance(a, KeyUpdateAnnouncement):
        new_with_old = load_cert(a.new_with_old)
        for anchor in trust.anchors:
            if anchor.subject != new_with_old.issuer:
                continue
            try:
                new_with_old.verify_directly_issued_by(anchor)
            except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
                continue
            try:  # the old key vouches for the new one: now every other link must hold too
                check_root_update(anchor, a.new_with_new, a.new_with_old, a.old_with_new, at=at)
            except RootUpdateError as exc:
                raise AnnouncementError(FailInfo.badCertId, f"ckuann: {exc}") from None
            return
        raise AnnouncementError(FailInfo.wrongAuthority, "ckuann: newWithOld is not signed by a trusted root (another CA)")
