"""The centrally generated key as the KGA delivers it (RFC 9483 §4.1.6, RFC 9810 §5.2.2).

``CertifiedKeyPair.privateKey`` is an EncryptedKey whose envelopedData (``fleet.cmp.cms``)
holds a SignedData (RFC 5652 §5) by the KGA around an AsymmetricKeyPackage (RFC 5958: a
SEQUENCE OF OneAsymmetricKey, eContentType id-ct-KP-aKeyPackage). ``seal_key`` builds it for
the server role; ``open_key`` checks it for the end entity, in this order: the envelope opens
for the requester, the signature verifies, the signer chains to the trust anchors and carries
the id-kp-cmKGA extended key usage, and the key matches the issued certificate. Each failure is
its own ``cms.EnvelopeError`` subclass, and no key leaves ``open_key`` unless every check passed.

OpenSSL's KGA (3.5+) encrypts its SignedData as id-data and signs the private key as plain
data; both forms are read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm as CryptoUnsupported
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_der_private_key,
)

from fleet.cmp import der, oids
from fleet.cmp.cms import (
    ID_DATA,
    ID_SIGNED_DATA,
    EnvelopeError,
    MalformedEnvelope,
    PwriKeyCache,
    Recipient,
    UnsupportedEnvelope,
    envelope,
    open_envelope,
)
from fleet.cmp.protection import (
    PrivateKey,
    ProtectionError,
    Signer,
    subject_key_id,
    verify_signature,
)
from fleet.cmp.trust import CertificateError, TrustStore, UntrustedSigner, cert_der, load_cert

__all__ = [
    "ID_CT_KP_A_KEY_PACKAGE",
    "ID_KP_CM_KGA",
    "KeyMismatch",
    "KgaNotAuthorized",
    "KgaSignatureInvalid",
    "KgaUntrusted",
    "open_key",
    "seal_key",
    "signed_key_package",
]

ID_CT_KP_A_KEY_PACKAGE = "2.16.840.1.101.2.1.2.78.5"
ID_KP_CM_KGA = "1.3.6.1.5.5.7.3.32"
ID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
ID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_DIGEST_BY_OID = {oids.SHA256: "sha256", oids.SHA384: "sha384", oids.SHA512: "sha512"}
_OID_BY_DIGEST = {v: k for k, v in _DIGEST_BY_OID.items()}
_RSA_SIG_BY_DIGEST = {"sha256": oids.RSA_SHA256, "sha384": oids.RSA_SHA384, "sha512": oids.RSA_SHA512}


class KgaSignatureInvalid(EnvelopeError):
    kind = "kga_bad_signature"


class KgaUntrusted(EnvelopeError):
    """The key package's signer does not chain to the trust anchors."""

    kind = "kga_untrusted"


class KgaNotAuthorized(EnvelopeError):
    """The key package's signer lacks the id-kp-cmKGA extended key usage."""

    kind = "kga_not_authorized"


class KeyMismatch(EnvelopeError):
    """The delivered private key is not the key of the issued certificate."""

    kind = "kga_key_mismatch"


# ---------------------------------------------------------------------------------------------
# The KGA's side


def signed_key_package(
    key: PrivateKey, signer_key: PrivateKey, signer_cert: x509.Certificate,
    chain: Sequence[bytes] = (), *, signer: Signer | None = None,
) -> bytes:
    """The DER of a SignedData by ``signer_key`` (its certificate and ``chain`` included) whose
    content is an AsymmetricKeyPackage holding ``key``. ``signer`` reuses a prepared Signer."""
    package = der.sequence(key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption()))
    signer = signer or Signer(signer_key)
    digest_name = signer.hash_name or "sha512"  # EdDSA: SHA-512 (RFC 8419 §3)
    digest_alg = der.algorithm_identifier(_OID_BY_DIGEST[digest_name])
    attrs = sorted((
        der.sequence(der.oid(ID_CONTENT_TYPE), der.set_of(der.oid(ID_CT_KP_A_KEY_PACKAGE))),
        der.sequence(der.oid(ID_MESSAGE_DIGEST),
                     der.set_of(der.octet_string(hashlib.new(digest_name, package).digest()))),
    ))
    signed_attrs = b"".join(attrs)
    signature = signer.sign(der.tlv(der.SET, signed_attrs))
    ski = subject_key_id(signer_cert)
    signer_der = cert_der(signer_cert)
    if ski is not None:
        sid, version = der.tlv(0x80, ski), 3
    else:
        sid, version = der.sequence(signer_cert.issuer.public_bytes(), der.integer(signer_cert.serial_number)), 1
    signer_info = der.sequence(
        der.integer(version), sid, digest_alg, der.tlv(0xA0, signed_attrs), signer.algorithm,
        der.octet_string(signature),
    )
    return der.sequence(
        der.integer(3),
        der.set_of(digest_alg),
        der.sequence(der.oid(ID_CT_KP_A_KEY_PACKAGE), der.explicit(0, der.octet_string(package))),
        der.tlv(0xA0, signer_der + b"".join(c for c in chain if c != signer_der)),
        der.set_of(signer_info),
    )


def seal_key(
    key: PrivateKey, signer_key: PrivateKey, signer_cert: x509.Certificate, chain: Sequence[bytes] = (),
    *, password: bytes | None = None, recipient_cert: x509.Certificate | None = None,
    iterations: int = 2048, signer: Signer | None = None, random: Callable[[int], bytes] | None = None,
    kek_cache: PwriKeyCache | None = None,
) -> bytes:
    """The EncryptedKey for ``CertifiedKeyPair.privateKey``: ``[0] EnvelopedData`` (implicitly
    tagged, RFC 4211) around the signed key package, for ``password`` (PWRI) or the holder of
    ``recipient_cert`` (KARI for EC, KTRI for RSA); PWRI's salt and KEK from ``kek_cache``."""
    signed = signed_key_package(key, signer_key, signer_cert, chain, signer=signer)
    extra = {"random": random} if random is not None else {}
    enveloped = envelope(signed, content_type=ID_SIGNED_DATA, password=password, cert=recipient_cert,
                         iterations=iterations, kek_cache=kek_cache, **extra)
    return b"\xa0" + enveloped[1:]


# ---------------------------------------------------------------------------------------------
# The end entity's side


def open_key(
    encrypted_key: bytes,
    recipient: Recipient,
    *,
    trust: TrustStore,
    untrusted: Sequence[x509.Certificate] = (),
    issued: x509.Certificate,
    at: datetime | None = None,
) -> PrivateKey:
    """The private key a KGA delivered in ``encrypted_key`` (the EncryptedKey choice), once the
    envelope, the KGA's signature, its path to ``trust``, its cmKGA authorisation and the
    match with the ``issued`` certificate are all checked."""
    if encrypted_key[:1] != b"\xa0":
        raise UnsupportedEnvelope("privateKey is not an EnvelopedData (encryptedValue is not supported)")
    content_type, content = open_envelope(b"\x30" + encrypted_key[1:], recipient)
    if content_type == ID_DATA:  # OpenSSL's KGA: the SignedData, or a ContentInfo holding it
        content = _maybe_content_info(content)
    elif content_type != ID_SIGNED_DATA:
        raise UnsupportedEnvelope(f"envelope holds {content_type}, not a SignedData")
    try:  # a hostile package must end as an EnvelopeError, whatever the parsers raise
        e_type, package, signer_cert, certs = _verify_signed_data(content)
        _check_kga(signer_cert, [*certs, *untrusted], trust, at)
    except (der.DerError, ValueError, IndexError, KeyError, TypeError, CryptoUnsupported) as exc:
        raise MalformedEnvelope(f"malformed key package: {exc!r}") from None
    key = _key_from(e_type, package)
    mine = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    theirs = issued.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if mine != theirs:
        raise KeyMismatch("the delivered private key does not match the issued certificate")
    return key


def _maybe_content_info(content: bytes) -> bytes:
    try:
        parts = der.parse(content).children()
        if len(parts) == 2 and parts[0].tag == der.OID:
            if parts[0].as_oid() != ID_SIGNED_DATA or parts[1].tag != 0xA0:
                raise UnsupportedEnvelope(f"envelope holds a ContentInfo of {parts[0].as_oid()}")
            return parts[1].unwrap().raw
    except der.DerError as exc:
        raise MalformedEnvelope(f"malformed key package: {exc}") from None
    return content


def _verify_signed_data(data: bytes) -> tuple[str, bytes, x509.Certificate, list[x509.Certificate]]:
    """(eContentType, eContent, signer certificate, certificates) of a SignedData whose one
    signer's signature verifies with the certificate its sid names."""
    try:
        parts = der.parse(data).expect(der.SEQUENCE, "SignedData").children()
        if len(parts) < 4:
            raise der.DerError("SignedData is too short")
        encap = parts[2].expect(der.SEQUENCE, "encapContentInfo").children()
        if len(encap) != 2 or encap[1].tag != 0xA0:
            raise MalformedEnvelope("the key package SignedData has no content")
        e_type = encap[0].as_oid()
        octets = encap[1].unwrap()
        e_content = octets.content if octets.tag == der.OCTET_STRING else b"".join(
            c.content for c in octets.children())
        certs: list[x509.Certificate] = []
        rest = parts[3:]
        if rest[0].tag == 0xA0:
            for c in rest[0].children():
                if c.tag == der.SEQUENCE:
                    certs.append(load_cert(c.raw))  # parsed once: the KGA sends the same few
            rest = rest[1:]
        if rest and rest[0].tag == 0xA1:
            rest = rest[1:]
        if len(rest) != 1:
            raise der.DerError("SignedData lacks signerInfos")
        signer_infos = rest[0].expect(der.SET, "signerInfos").children()
        if len(signer_infos) != 1:
            raise MalformedEnvelope(f"key package has {len(signer_infos)} signers, expected 1")
        si = signer_infos[0].children()
        if len(si) < 5:
            raise der.DerError("SignerInfo is too short")
        sid, digest_node = si[1], si[2]
        rest = si[3:]
        signed_attrs = None
        if rest[0].tag == 0xA0:
            signed_attrs = rest[0]
            rest = rest[1:]
        sig_alg, signature = rest[0], rest[1].expect(der.OCTET_STRING, "signature").content
        digest_oid = digest_node.children()[0].as_oid()
    except (der.DerError, CertificateError, ValueError, IndexError) as exc:
        raise MalformedEnvelope(f"malformed key package SignedData: {exc}") from None
    signer_cert = _find_signer(sid, certs)
    digest_name = _DIGEST_BY_OID.get(digest_oid)
    if digest_name is None:
        raise UnsupportedEnvelope(f"digest {digest_oid} is not supported")
    public = signer_cert.public_key()
    if signed_attrs is not None:
        signed = b"\x31" + signed_attrs.raw[1:]
        _check_attributes(signed_attrs, e_type, hashlib.new(digest_name, e_content).digest())
    else:
        signed = e_content
    alg = sig_alg.raw
    if sig_alg.children()[0].as_oid() == oids.RSA_ENCRYPTION:  # what OpenSSL writes for RSA signers
        alg = der.algorithm_identifier(_RSA_SIG_BY_DIGEST.get(digest_name, oids.RSA_SHA256), der.NULL_DER)
    try:
        verify_signature(alg, public, signed, signature)
    except ProtectionError as exc:
        raise KgaSignatureInvalid(f"the KGA's signature over the key package does not verify: {exc}") from None
    return e_type, e_content, signer_cert, certs


def _find_signer(sid: der.Tlv, certs: list[x509.Certificate]) -> x509.Certificate:
    for cert in certs:
        if sid.tag == 0x80 and sid.content == subject_key_id(cert):
            return cert
        if sid.tag == der.SEQUENCE:
            issuer, serial = sid.children()
            if issuer.raw == cert.issuer.public_bytes() and serial.as_int() == cert.serial_number:
                return cert
    raise KgaUntrusted("the key package's signer certificate is not in the SignedData")


def _check_attributes(signed_attrs: der.Tlv, e_type: str, digest: bytes) -> None:
    found: dict[str, der.Tlv] = {}
    for attr in signed_attrs.children():
        a_type, values = attr.children()
        found[a_type.as_oid()] = values
    ct, md = found.get(ID_CONTENT_TYPE), found.get(ID_MESSAGE_DIGEST)
    if ct is None or md is None:
        raise MalformedEnvelope("signed attributes lack content-type or message-digest")
    if ct.children()[0].as_oid() != e_type:
        raise KgaSignatureInvalid("signed content-type attribute differs from the content's type")
    if md.children()[0].content != digest:
        raise KgaSignatureInvalid("message-digest attribute does not match the key package")


def _check_kga(signer: x509.Certificate, untrusted: list[x509.Certificate], trust: TrustStore,
               at: datetime | None) -> None:
    try:
        trust.verify(signer, untrusted, at=at)
    except (UntrustedSigner, CertificateError) as exc:
        raise KgaUntrusted(f"the KGA certificate does not chain to the trust anchors: {exc}") from None
    try:
        usages = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is None or x509.ObjectIdentifier(ID_KP_CM_KGA) not in usages:
        subject = signer.subject.rfc4514_string()
        raise KgaNotAuthorized(f"the key package's signer {subject!r} lacks the cmKGA extended key usage")


def _key_from(e_type: str, package: bytes) -> PrivateKey:
    """The one private key of an AsymmetricKeyPackage (or, from OpenSSL's KGA, a bare key)."""
    try:
        if e_type == ID_CT_KP_A_KEY_PACKAGE:
            keys = der.parse(package).expect(der.SEQUENCE, "AsymmetricKeyPackage").children()
            if len(keys) != 1:
                raise MalformedEnvelope(f"key package holds {len(keys)} keys, expected 1")
            package = keys[0].raw
        elif e_type != ID_DATA:
            raise UnsupportedEnvelope(f"signed content {e_type} is not a key package")
        key = load_der_private_key(package, None)
    except (der.DerError, ValueError, TypeError, CryptoUnsupported) as exc:
        raise MalformedEnvelope(f"the key package holds no usable private key: {exc}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise UnsupportedEnvelope(f"delivered key type {type(key).__name__} is not supported")
    return key
