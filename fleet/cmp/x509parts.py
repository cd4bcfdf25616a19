"""The CMP server's adapters between request fields and cryptography's x509 objects.

A certTemplate, a PKCS#10 request, an oldCertID control, an rr's RevDetails: each arrives as DER
and the server needs keys, Names, extensions and reasons from it, or a comparison with a
certificate the CA issued. Everything here turns what cryptography cannot use into a
``Rejected`` with the failInfo RFC 9810 §5.2.3 names for it, and never into a traceback.

A certTemplate with extensions is parsed by wrapping it in an unsigned PKCS#10 structure, so
cryptography reads subject, key and extensions in one go (the wrapper's signature is never
checked); ``fleet.cmp.trust.parse_name`` parses a lone Name the same way.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm as CryptographyUnsupported
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from fleet.cmp import der, oids
from fleet.cmp.backend import IssuedLike, Rejected
from fleet.cmp.der import DerError
from fleet.cmp.messages import (
    NULL_DN,
    Body,
    CertTemplate,
    RevReqContent,
    general_name_directory,
)
from fleet.cmp.protection import HASH_OID_BY_NAME, parse_algorithm
from fleet.cmp.refusals import Refusal
from fleet.cmp.trust import parse_name

__all__ = [
    "ID_REG_CTRL_OLD_CERT_ID",
    "cert_hash",
    "csr_extensions",
    "csr_public_key",
    "has_cmc_ra",
    "is_rsa_key",
    "load_public_key",
    "names_certificate",
    "old_cert_id",
    "reason_flags",
    "same_key",
    "short_text",
    "single_reason",
    "template_as_csr",
    "template_mismatch",
]

ID_REG_CTRL_OLD_CERT_ID = "1.3.6.1.5.5.7.5.1.5"
_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"


def short_text(exc: BaseException | str) -> str:
    """The first line of an error's text, at most 200 characters: cryptography's messages span
    lines, and a PKIStatusInfo's statusString carries one."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__ if isinstance(exc, BaseException) else ""
    return text[:200]


# ---------------------------------------------------------------------------------------------
# Requested keys, subjects and extensions


def _csr_der(subject: bytes, spki: bytes, extensions: bytes | None) -> bytes:
    attrs = b""
    if extensions is not None:
        attrs = der.sequence(der.oid(_EXTENSION_REQUEST), der.set_of(extensions))
    info = der.sequence(der.integer(0), subject, spki, der.tlv(0xA0, attrs))
    return der.sequence(info, der.algorithm_identifier(oids.ECDSA_SHA256), der.bit_string(b"\x00"))


def template_as_csr(template: CertTemplate) -> x509.CertificateSigningRequest:
    """Subject, key and extensions of a CertTemplate, parsed by cryptography in one go: the
    template is wrapped in an (unsigned) PKCS#10 structure, whose signature is never checked."""
    assert template.public_key is not None
    try:
        return x509.load_der_x509_csr(
            _csr_der(template.subject or NULL_DN, template.public_key, template.extensions)
        )
    except ValueError as exc:
        raise Rejected(f"unusable certTemplate: {short_text(exc)}", Refusal.TEMPLATE) from None


def csr_public_key(csr: x509.CertificateSigningRequest) -> CertificatePublicKeyTypes:
    try:
        return csr.public_key()
    except (ValueError, TypeError) as exc:
        raise Rejected(f"unusable public key: {short_text(exc)}", Refusal.TEMPLATE) from None
    except Exception as exc:  # noqa: BLE001  # cryptography's UnsupportedAlgorithm, and its kin
        raise Rejected(f"unsupported public key: {short_text(exc)}", Refusal.UNSUPPORTED_KEY) from None


def load_public_key(spki: bytes) -> PublicKeyTypes:
    """A SubjectPublicKeyInfo DER as a key, refused as ``csr_public_key`` refuses."""
    try:
        return load_der_public_key(spki)
    except (ValueError, TypeError) as exc:
        raise Rejected(f"unusable public key: {short_text(exc)}", Refusal.TEMPLATE) from None
    except CryptographyUnsupported as exc:
        raise Rejected(f"unsupported public key: {short_text(exc)}", Refusal.UNSUPPORTED_KEY) from None


def csr_extensions(csr: x509.CertificateSigningRequest) -> tuple[x509.Extension[x509.ExtensionType], ...]:
    try:
        return tuple(csr.extensions)
    except (ValueError, TypeError) as exc:
        raise Rejected(f"unusable requested extensions: {short_text(exc)}", Refusal.TEMPLATE) from None
    except x509.DuplicateExtension:
        raise Rejected("duplicate requested extension", Refusal.TEMPLATE) from None


@lru_cache(maxsize=64)
def is_rsa_key(kind: type) -> bool:
    """``isinstance(key, RSAPublicKey)`` by the key's class, cached: an ABC check is dear for a
    test made on every signed request."""
    return issubclass(kind, rsa.RSAPublicKey)


# ---------------------------------------------------------------------------------------------
# Certificates the CA issued


def old_cert_id(controls: bytes | None) -> tuple[x509.Name, int] | None:
    """The (issuer, serial) of an id-regCtrl-oldCertID control, if any."""
    if controls is None:
        return None
    try:
        for item in der.parse(controls).children():
            parts = item.children()
            if len(parts) == 2 and parts[0].as_oid() == ID_REG_CTRL_OLD_CERT_ID:
                cert_id = parts[1].children()
                issuer = general_name_directory(cert_id[0].raw)
                if issuer is None:
                    raise Rejected("oldCertID issuer must be a directoryName", Refusal.OLD_CERT_ID)
                return parse_name(issuer), cert_id[1].expect(der.INTEGER, "serialNumber").as_int()
    except (DerError, IndexError, ValueError) as exc:
        raise Rejected(f"malformed oldCertID: {short_text(exc)}", Refusal.OLD_CERT_ID_MALFORMED) from None
    return None


def same_key(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == b.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )


ID_KP_CMC_RA = "1.3.6.1.5.5.7.3.28"


def has_cmc_ra(cert: x509.Certificate) -> bool:
    """Whether ``cert`` has the extended key usage id-kp-cmcRA (a CMP RA or PKI entity)."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return any(u.dotted_string == ID_KP_CMC_RA for u in eku)


def names_certificate(body: Body, cert: x509.Certificate) -> bool:
    """Whether an rr body's one RevDetails is about ``cert``: its serialNumber. The issuer is
    left to the rr rules, which answer a wrong one with badCertId (as they do for anyone) and
    let only the certificate's holder act on it."""
    if not isinstance(body, RevReqContent) or len(body.details) != 1:
        return False
    return body.details[0].template.serial == cert.serial_number


def template_mismatch(template: CertTemplate, cert: x509.Certificate) -> str | None:
    """The first certTemplate field of an rr, beyond issuer and serialNumber, that does not
    match ``cert`` (None when every given field does). The caller answers badCertId, "no
    certificate could be found matching the provided criteria" (RFC 9810 §5.2.3)."""
    if template.subject is not None and template.subject != cert.subject.public_bytes():
        try:
            if parse_name(template.subject) != cert.subject:
                return "subject"
        except ValueError:
            return "subject"
    if template.public_key is not None and template.public_key != cert.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    ):
        return "publicKey"
    if template.version is not None and template.version != cert.version.value:
        return "version"
    if template.signing_alg is not None:
        try:
            dotted, _ = parse_algorithm(template.signing_alg)
        except DerError:
            return "signingAlg"
        if dotted != cert.signature_algorithm_oid.dotted_string:
            return "signingAlg"
    validity = template.validity
    if validity is not None and (
        (validity.not_before is not None and validity.not_before != cert.not_valid_before_utc)
        or (validity.not_after is not None and validity.not_after != cert.not_valid_after_utc)
    ):
        return "validity"
    if template.extensions is not None:
        try:
            given = {e.raw for e in der.parse(template.extensions).children()}
        except DerError:
            return "extensions"
        if not given <= _extensions_der(cert):
            return "extensions"
    return None


def _extensions_der(cert: x509.Certificate) -> set[bytes]:
    """Each extension of ``cert`` as the DER of its Extension SEQUENCE."""
    out = set()
    for ext in cert.extensions:
        value = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else ext.value.public_bytes()
        critical = der.tlv(der.BOOLEAN, b"\xff") if ext.critical else b""
        out.add(der.sequence(der.oid(ext.oid.dotted_string), critical, der.octet_string(value)))
    return out


_HASH_NAMES = {"sha1", "sha224", "sha256", "sha384", "sha512"}
_HASH_BY_DOTTED = {dotted: name for name, dotted in HASH_OID_BY_NAME.items()}


def cert_hash(issued: IssuedLike, hash_alg: bytes | None) -> bytes:
    """certHash as the end entity computes it: hashAlg (pvno 3) or the certificate's signature
    hash; SHA-512 for EdDSA-signed certificates (RFC 9481 §2). An unusable hashAlg is refused
    with badAlg."""
    if hash_alg is not None:
        try:
            dotted, _ = parse_algorithm(hash_alg)
        except DerError:
            raise Rejected("malformed certConf hashAlg", Refusal.CERT_HASH_ALGORITHM) from None
        name = _HASH_BY_DOTTED.get(dotted)
        if name is None:
            raise Rejected(f"unsupported certConf hashAlg {dotted}", Refusal.CERT_HASH_ALGORITHM)
    else:
        algo = issued.signature_hash
        name = algo if algo in _HASH_NAMES else "sha512"
    return hashlib.new(name, issued.der).digest()


# ---------------------------------------------------------------------------------------------
# Revocation reasons

_REASON_BY_CODE = {
    0: None,
    1: x509.ReasonFlags.key_compromise,
    2: x509.ReasonFlags.ca_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    6: x509.ReasonFlags.certificate_hold,
    8: x509.ReasonFlags.remove_from_crl,  # releases a hold (handled apart from revocation)
    9: x509.ReasonFlags.privilege_withdrawn,
    10: x509.ReasonFlags.aa_compromise,
}


def single_reason(crl_entry_details: bytes | None) -> int | None:
    """The CRLReason code of an rr's crlEntryDetails, None when it has none. RFC 9483 §4.2 asks
    for exactly one; none is taken as unspecified (OpenSSL sends none unless given
    -revreason), two or more are refused with badRequest, "transaction not permitted or
    supported" (RFC 9810 §5.2.3): the encoding is sound (not badDataFormat) but the CA cannot
    tell which revocation is asked for. Other entry extensions (invalidityDate) are ignored."""
    if crl_entry_details is None:
        return None
    codes = []
    for ext in der.parse(crl_entry_details).children():
        parts = ext.children()
        if parts and parts[0].as_oid() == oids.CRL_REASON:
            inner = der.parse(parts[-1].expect(der.OCTET_STRING, "extnValue").content)
            codes.append(inner.expect(der.ENUMERATED, "CRLReason").as_int())
    if len(codes) > 1:
        raise Rejected(f"crlEntryDetails holds {len(codes)} CRLReason extensions; exactly one is allowed",
                       Refusal.REV_REASON)
    return codes[0] if codes else None


def reason_flags(code: int | None) -> x509.ReasonFlags | None:
    """A CRLReason code as cryptography's flag (None: unspecified); codes that are not a
    revocation reason (7, above 10) are not a CRLReason value at all: badDataFormat."""
    if code is None:
        return None
    if code not in _REASON_BY_CODE:
        raise Rejected(f"CRLReason {code} is not a revocation reason", Refusal.REV_REASON_UNKNOWN)
    return _REASON_BY_CODE[code]
