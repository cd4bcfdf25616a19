"""Who may sign CMP messages: certificate paths from a signer to configured trust anchors.

A small path builder (issuer name match, signature, validity, CA flag) rather than a TLS
verifier: CMP signers carry no server names or TLS key usages. Verified paths are cached, because
thousands of devices check responses from the same RA certificate every second.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from fleet.cmp.protection import ProtectionError, PublicKey, subject_key_id

MAX_PATH_LENGTH = 8


class UntrustedSigner(ProtectionError):
    """The signing certificate does not chain to a trust anchor (or is expired, or not a CA)."""

    kind = "untrusted_signer"


class CertificateError(ProtectionError):
    """Bytes that should be an X.509 certificate are not (or hold a key fleet cannot read)."""

    kind = "bad_certificate"


@lru_cache(maxsize=4096)
def load_cert(der_bytes: bytes) -> x509.Certificate:
    """Parse a DER certificate once; CMP repeats the same few CA certificates in every message.

    cryptography parses version, names and extensions lazily: they are read here, so a peer's
    malformed certificate fails as a ``CertificateError`` now rather than as a bare ``ValueError``
    in the middle of path building.
    """
    try:
        cert = x509.load_der_x509_certificate(der_bytes)
        cert.version, cert.subject, cert.issuer, cert.extensions  # noqa: B018
    except (ValueError, x509.InvalidVersion) as exc:
        raise CertificateError(f"malformed certificate: {exc}") from None
    return cert


def public_key_of(cert: x509.Certificate) -> PublicKey:
    """The certificate's public key, or a ``CertificateError`` when it is malformed or of a type
    cryptography does not support (also parsed lazily)."""
    try:
        return cert.public_key()  # type: ignore[return-value]
    except (ValueError, UnsupportedAlgorithm):
        subject = cert.subject.rfc4514_string() or "<empty subject>"
        raise CertificateError(f"certificate {subject!r} has a malformed or unsupported public key") from None


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def find_signer(extra_certs: Sequence[bytes], sender_kid: bytes | None) -> x509.Certificate:
    """The protecting certificate: the one matching senderKID, else the first (RFC 9483 §3.3)."""
    if not extra_certs:
        raise UntrustedSigner("signed message carries no extraCerts to identify its signer")
    if sender_kid is not None:
        for der_bytes in extra_certs:
            cert = load_cert(der_bytes)
            if subject_key_id(cert) == sender_kid:
                return cert
    return load_cert(extra_certs[0])


def _valid_at(cert: x509.Certificate, at: datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return cert.version is x509.Version.v1  # legacy v1 roots


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


_Verified = tuple[datetime, datetime, list[x509.Certificate]]


class TrustStore:
    """Trust anchors, and path validation from a signer to one of them."""

    def __init__(self, anchors: Iterable[x509.Certificate] = ()) -> None:
        self._anchors: dict[bytes, x509.Certificate] = {}
        self._by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        for a in anchors:
            self.add(a)
        # (leaf, untrusted) -> (valid from, valid until, path): a path holds while all of it does.
        self._verified: dict[tuple[bytes, tuple[bytes, ...]], _Verified] = {}

    def add(self, anchor: x509.Certificate) -> None:
        key = cert_der(anchor)
        if key not in self._anchors:
            self._anchors[key] = anchor
            self._by_subject.setdefault(anchor.subject, []).append(anchor)

    @property
    def anchors(self) -> list[x509.Certificate]:
        return list(self._anchors.values())

    def __len__(self) -> int:
        return len(self._anchors)

    def verify(
        self,
        leaf: x509.Certificate,
        untrusted: Sequence[x509.Certificate] = (),
        *,
        at: datetime | None = None,
    ) -> list[x509.Certificate]:
        """Return the path leaf..anchor, or raise ``UntrustedSigner`` naming the problem.

        ``at`` is when the certificates must be valid (default: now, by the system clock)."""
        at = at or datetime.now(UTC)
        cache_key = (cert_der(leaf), tuple(cert_der(c) for c in untrusted))
        known = self._verified.get(cache_key)
        if known is not None and known[0] <= at <= known[1]:
            return list(known[2])
        path = self._build(leaf, untrusted, at)
        if len(self._verified) > 10_000:
            self._verified.clear()
        valid_from = max(c.not_valid_before_utc for c in path)
        self._verified[cache_key] = (valid_from, min(c.not_valid_after_utc for c in path), path)
        return list(path)

    def _build(
        self, leaf: x509.Certificate, untrusted: Sequence[x509.Certificate], at: datetime
    ) -> list[x509.Certificate]:
        subject = leaf.subject.rfc4514_string() or "<empty subject>"
        if not _valid_at(leaf, at):
            raise UntrustedSigner(f"signer certificate {subject!r} is not valid now")
        path = [leaf]
        current = leaf
        for _ in range(MAX_PATH_LENGTH):
            if cert_der(current) in self._anchors:
                return path
            for anchor in self._by_subject.get(current.issuer, ()):
                if _valid_at(anchor, at) and _issued_by(current, anchor):
                    return path + [anchor]
            parent = next(
                (
                    c
                    for c in untrusted
                    if c.subject == current.issuer
                    and c is not current
                    and _is_ca(c)
                    and _valid_at(c, at)
                    and _issued_by(current, c)
                ),
                None,
            )
            if parent is None or parent in path:
                break
            path.append(parent)
            current = parent
        raise UntrustedSigner(f"signer certificate {subject!r} does not chain to a trusted anchor")
