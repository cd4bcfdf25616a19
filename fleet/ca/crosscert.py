"""Cross certificates (RFC 9810 §5.3.11): the issuing CA certifies another CA's key.

What a ccr may ask is checked by ``fleet.cmp.crosscert`` (a trusted CA signs it, a complete v3
template, a signature POP). Here the certificate is made: the subject, key and validity of the
template (the validity kept within the issuing CA's own), basicConstraints cA without a path
length, keyUsage keyCertSign and cRLSign, subject and authority key identifiers. Other
requested extensions are not taken over: what the other CA may do is this CA's policy.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from fleet.ca.hierarchy import CaHierarchy
from fleet.ca.issuance import CertificateRequestRejected, IssuedCert

__all__ = ["issue_cross_certificate"]

_CA_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
)


def issue_cross_certificate(
    hierarchy: CaHierarchy, public_key: CertificatePublicKeyTypes, subject: x509.Name,
    not_before: datetime, not_after: datetime, serial: int,
) -> IssuedCert:
    issuing = hierarchy.issuing
    not_after = min(not_after, issuing.not_valid_after_utc)
    not_before = max(not_before, issuing.not_valid_before_utc)
    if not_after <= not_before:
        raise CertificateRequestRejected("the requested validity lies outside the issuing CA's")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuing.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before.replace(microsecond=0))
        .not_valid_after(not_after.replace(microsecond=0))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(hierarchy.issuing_ski, None, None), critical=False)
    )
    try:
        cert = builder.sign(hierarchy.issuing_key, hierarchy.issuing_hash)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise CertificateRequestRejected(f"cannot issue this cross certificate: {exc}") from None
    return IssuedCert.from_certificate(cert)
