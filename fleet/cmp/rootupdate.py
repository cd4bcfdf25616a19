"""Believing a root CA key update (RFC 9483 §4.3.2, RFC 9810 §4.4), without I/O.

A device that trusts ``old_root`` (oldWithOld) takes a new root (newWithNew) only when every
link holds: newWithNew is a self-signed CA certificate valid now; newWithOld certifies the same
key and name, issued under the old root's name and signed by the old root's key (the old key
vouching for the new one: the one thing that makes the update trustworthy); oldWithNew, when
present, certifies the old root's key and name and is signed by the new key. The same check
serves a genp rootCaKeyUpdate and a pushed ckuann.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleet.cmp.trust import CertificateError, load_cert
from fleet.errors import FleetError

__all__ = ["RootUpdateError", "check_root_update"]


class RootUpdateError(FleetError):
    """A root key update not to be believed; the text names the link that fails."""


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _signed_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def check_root_update(
    old_root: x509.Certificate, new_with_new: bytes, new_with_old: bytes | None, old_with_new: bytes | None,
    *, at: datetime,
) -> x509.Certificate:
    """The new root (newWithNew) once every link holds (module doc), else ``RootUpdateError``."""
    try:
        new = load_cert(new_with_new)
        link = load_cert(new_with_old) if new_with_old is not None else None
        back = load_cert(old_with_new) if old_with_new is not None else None
    except CertificateError as exc:
        raise RootUpdateError(f"root key update: {exc}") from None
    if not (new.not_valid_before_utc <= at <= new.not_valid_after_utc):
        raise RootUpdateError("root key update: newWithNew is not valid now")
    if new.issuer != new.subject or not _signed_by(new, new) or not _is_ca(new):
        raise RootUpdateError("root key update: newWithNew is not a self-signed CA certificate")
    if link is None:
        raise RootUpdateError("root key update: newWithOld is missing, nothing links the new root to the old one")
    if link.issuer != old_root.subject or not _signed_by(link, old_root):
        raise RootUpdateError("root key update: newWithOld is not signed by the old root (another CA?)")
    if _spki(link) != _spki(new) or link.subject != new.subject:
        raise RootUpdateError("root key update: newWithOld and newWithNew certify different keys or names")
    if back is not None:
        if _spki(back) != _spki(old_root) or back.subject != old_root.subject:
            raise RootUpdateError("root key update: oldWithNew does not certify the old root's key")
        if back.issuer != new.subject or not _signed_by(back, new):
            raise RootUpdateError("root key update: oldWithNew is not signed by the new root key")
    return new
