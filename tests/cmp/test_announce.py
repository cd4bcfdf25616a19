"""CA announcements (RFC 9810 §5.3.13-5.3.16): fleet's decode with pyasn1-alt-modules to the
expected structures, and a receiver believes only a signed announcement about its own CA, each
refusal with its own failInfo."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from pyasn1.codec.der import decoder, encoder
from pyasn1_alt_modules import rfc9480

from fleet.cmp import messages
from fleet.cmp.announce import (
    AnnouncementError,
    CertAnnouncement,
    CrlAnnouncement,
    KeyUpdateAnnouncement,
    RevAnnouncement,
    announce,
    read_announcement,
)
from fleet.cmp.messages import FailInfo
from fleet.cmp.protection import SignatureProtector
from fleet.cmp.trust import TrustStore

from .ca_stub import Credentials, issue, make_ca, make_cert

NOW = datetime.now(UTC).replace(microsecond=0)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def signer_of(ca: Credentials) -> SignatureProtector:
    cmp_signer = issue(ca, "CMP signer")
    return SignatureProtector(cmp_signer.key, cmp_signer.cert, cmp_signer.chain)


def rann(ca: Credentials, serial: int = 42) -> RevAnnouncement:
    return RevAnnouncement(5, messages.directory_name(ca.cert.subject.public_bytes()), serial,
                           NOW, NOW - timedelta(days=1))


def rollover(old: Credentials) -> KeyUpdateAnnouncement:
    """The three certificates of a root key update from ``old`` to a new key (RFC 9810 §4.4)."""
    new_key = ec.generate_private_key(ec.SECP256R1())
    new = Credentials(new_key, make_cert(old.cert.subject, new_key.public_key(), None, new_key, ca=True))
    new_with_old = make_cert(old.cert.subject, new_key.public_key(), old, old.key, ca=True)
    old_with_new = make_cert(old.cert.subject, old.key.public_key(), new, new_key, ca=True)
    return KeyUpdateAnnouncement(der(old_with_new), der(new_with_old), der(new.cert))


def send(a, signer: SignatureProtector) -> bytes:  # type: ignore[no-untyped-def]
    return announce(a, signer, now=time.time(), random=os.urandom)


def pyasn1(data: bytes):  # type: ignore[no-untyped-def]
    msg, rest = decoder.decode(data, asn1Spec=rfc9480.PKIMessage())
    assert rest == b""
    return msg


def test_rann_decodes_with_pyasn1_and_is_believed() -> None:
    ca = make_ca("Announcing CA")
    data = send(rann(ca), signer_of(ca))
    body = pyasn1(data)["body"]
    assert body.getName() == "rann"
    content = body["rann"]
    assert int(content["status"]) == 5 and int(content["certId"]["serialNumber"]) == 42
    assert encoder.encode(content["certId"]["issuer"]["directoryName"]["rdnSequence"]) == ca.cert.subject.public_bytes()
    assert str(content["willBeRevokedAt"]) == NOW.strftime("%Y%m%d%H%M%SZ")
    _, got = read_announcement(data, trust=TrustStore([ca.cert]), now=time.time())
    assert got == rann(ca)


def test_ckuann_cann_and_crlann_decode_with_pyasn1() -> None:
    ca = make_ca("Rolling CA")
    signer = signer_of(ca)
    update = rollover(ca)
    content = pyasn1(send(update, signer))["body"]["ckuann"]
    assert [encoder.encode(content[k]) for k in ("oldWithNew", "newWithOld", "newWithNew")] == [
        update.old_with_new, update.new_with_old, update.new_with_new]
    _, got = read_announcement(send(update, signer), trust=TrustStore([ca.cert]), now=time.time())
    assert got == update
    issued = issue(ca, "device")
    cann = pyasn1(send(CertAnnouncement(der(issued.cert)), signer))["body"]["cann"]
    assert encoder.encode(cann) == messages.der.explicit(16, der(issued.cert))  # pyasn1 keeps the [16] tag
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject).last_update(NOW)
           .next_update(NOW + timedelta(days=1)).sign(ca.key, hashes.SHA256()))
    crl_der = crl.public_bytes(Encoding.DER)
    crlann = pyasn1(send(CrlAnnouncement((crl_der,)), signer))["body"]["crlann"]
    assert [encoder.encode(c) for c in crlann] == [crl_der]
    _, got = read_announcement(send(CrlAnnouncement((crl_der,)), signer), trust=TrustStore([ca.cert]), now=time.time())
    assert got == CrlAnnouncement((crl_der,))


def _refusal(data: bytes, trust: TrustStore) -> FailInfo:
    with pytest.raises(AnnouncementError) as err:
        read_announcement(data, trust=trust, now=time.time())
    return err.value.fail


def test_refusals_have_their_own_fail_info() -> None:
    ca, other = make_ca("Our CA"), make_ca("Other CA")
    trust = TrustStore([ca.cert])
    signer = signer_of(ca)
    tampered = bytearray(send(rann(ca), signer))
    tampered[tampered.index(b"Our CA") + 1] ^= 1  # inside the signed part
    assert _refusal(bytes(tampered), trust) is FailInfo.badMessageCheck
    assert _refusal(send(rann(other), signer_of(other)), trust) is FailInfo.signerNotTrusted
    assert _refusal(send(rann(other), signer), trust) is FailInfo.wrongAuthority  # a certificate of another CA
    assert _refusal(send(rollover(other), signer), trust) is FailInfo.wrongAuthority  # another CA's rollover
    not_announcement = messages.encode(messages.PKIMessage(
        messages.PKIHeader(messages.NULL_DN_GENERAL_NAME, messages.NULL_DN_GENERAL_NAME),
        messages.BodyType.PKICONF, messages.PKIConfirmContent()))
    assert _refusal(not_announcement, trust) is FailInfo.badRequest
    assert _refusal(b"\x30\x00", trust) is FailInfo.badDataFormat


def test_a_ckuann_with_one_broken_link_is_refused_as_such() -> None:
    """newWithOld signed by our root, but oldWithNew certifying another key, or a newWithNew that
    is not the key newWithOld vouches for: refused badCertId, not believed as a new anchor."""
    ca = make_ca("Our CA")
    trust = TrustStore([ca.cert])
    signer = signer_of(ca)
    good = rollover(ca)
    _, believed = read_announcement(send(good, signer), trust=trust, now=time.time())
    assert believed == good
    stranger = ec.generate_private_key(ec.SECP256R1())
    new_root = Credentials(stranger, x509.load_der_x509_certificate(good.new_with_new))  # key unused: only signs
    wrong_back = make_cert(ca.cert.subject, stranger.public_key(), new_root, stranger, ca=True)
    other_new = rollover(ca).new_with_new
    for broken in (KeyUpdateAnnouncement(der(wrong_back), good.new_with_old, good.new_with_new),
                   KeyUpdateAnnouncement(good.old_with_new, good.new_with_old, other_new)):
        with pytest.raises(AnnouncementError) as err:
            read_announcement(send(broken, signer), trust=trust, now=time.time())
        assert err.value.fail is FailInfo.badCertId and "ckuann: root key update" in err.value.text
