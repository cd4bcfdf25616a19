"""A small PKI of another operator, made with cryptography's builder: a root CA and the
certificates it issues (an RA with id-kp-cmcRA, a sub-CA, an end entity). The embedded CA is
told to trust its root (``trusted``) in the tests of PKI entities and cross-certification."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CMC_RA = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")


def cn(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def certificate(subject: str, issuer: Issued | None, *, ca: bool = False,
                eku: tuple[x509.ObjectIdentifier, ...] = (), key: ec.EllipticCurvePrivateKey | None = None) -> Issued:
    """A certificate for ``subject`` (self-signed without ``issuer``) with basicConstraints,
    keyUsage, SKI and AKI as a real PKI writes them."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(cn(subject))
        .issuer_name(issuer.cert.subject if issuer else cn(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False)
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return Issued(key, builder.sign(signer_key, hashes.SHA256()))


def foreign_pki() -> tuple[Issued, Issued, Issued]:
    """(root CA, RA with cmcRA, end entity with clientAuth only)."""
    root = certificate("Other Operator Root", None, ca=True)
    ra = certificate("Other Operator RA", root, eku=(CMC_RA,))
    ee = certificate("Other Operator Device", root, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    return root, ra, ee
