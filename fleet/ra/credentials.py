"""An RA credential made on the spot: a root and an RA certificate under it, as PEM.

``fleet run`` with an ``[ra]`` section and no ``cert``/``key`` signs its envelopes with one and
has its embedded CA trust the root (``--ra-trusted``), so a capacity test of a CA's RA interface
needs no PKI set up first.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from fleet.cmp.x509parts import ID_KP_CMC_RA
from fleet.records import record

__all__ = ["RaCredential", "make_ra_credential"]


@record
class RaCredential:
    root_pem: bytes
    cert_pem: bytes
    key_pem: bytes  # unencrypted PKCS#8: write it 0600, never log it


def make_ra_credential(name: str = "fleet load RA", *, days: int = 7, pki_entity: bool = False) -> RaCredential:
    """A P-256 root and an RA certificate under it (SubjectKeyIdentifier, RFC 9483 §3.1's
    senderKID), valid from an hour ago for ``days`` days. ``pki_entity``: the certificate also
    carries id-kp-cmcRA, so a CA trusting the root takes its rr for others' certificates (RFC
    9483 §5.3.2: the run's revocations, ``[announcements]``)."""
    now = datetime.now(UTC) - timedelta(hours=1)
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} root")])
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(root_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if pki_entity:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ObjectIdentifier(ID_KP_CMC_RA)]), critical=False)
    cert = builder.sign(root_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    return RaCredential(
        root.public_bytes(pem), cert.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
