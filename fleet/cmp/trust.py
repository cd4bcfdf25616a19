"""Who may sign CMP messages: certificate paths from a signer to configured trust anchors, and
whether a signed message's sender and senderKID name its signer (RFC 9483 §3.1).

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

from fleet.cmp import der, messages, oids
from fleet.cmp.der import DerError
from fleet.cmp.protection import ProtectionError, PublicKey, subject_key_id

MAX_PATH_LENGTH = 8


class UntrustedSigner(ProtectionError):
    """The signing certificate does not chain to a trust anchor (or is expired, or not a CA)."""

    kind = "untrusted_signer"


class CertificateError(ProtectionError):
    """Bytes that should be an X.509 certificate are not (or hold a key fleet cannot read)."""

    kind = "bad_certificate"


class UnsupportedKey(CertificateError):
    """A well-formed certificate whose public key is of a type or curve fleet cannot use (the
    CMP server answers badAlg rather than badMessageCheck)."""


class SignerMismatch(ProtectionError):
    """The header's sender or senderKID does not name the certificate that signed the message."""

    kind = "signer_mismatch"


@lru_cache(maxsize=4096)
def load_cert(der_bytes: bytes) -> x509.Certificate:
    """Parse a DER certificate once; CMP repeats the same few CA certificates in every message.

    cryptography parses version, names and extensions lazily: they are read here, so a peer's
    malformed certificate (a duplicated extension, RFC 5280 §4.2, included) fails as a
    ``CertificateError`` now rather than as another exception in the middle of path building.
    """
    try:
        cert = x509.load_der_x509_certificate(der_bytes)
        cert.version, cert.subject, cert.issuer, cert.extensions  # noqa: B018
    except (ValueError, x509.InvalidVersion, x509.UnsupportedGeneralNameType, x509.DuplicateExtension) as exc:
        raise CertificateError(f"malformed certificate: {exc}") from None
    except (KeyError, TypeError):  # cryptography's Name parser on an attribute of an impossible type
        raise CertificateError("malformed certificate: a name cannot be read") from None
    return cert


def public_key_of(cert: x509.Certificate) -> PublicKey:
    """The certificate's public key, or a ``CertificateError`` when it is malformed or of a type
    cryptography does not support (also parsed lazily)."""
    try:
        return cert.public_key()  # type: ignore[return-value]
    except ValueError:
        raise CertificateError(f"certificate {_subject(cert)!r} has a malformed public key") from None
    except UnsupportedAlgorithm as exc:
        raise UnsupportedKey(f"certificate {_subject(cert)!r} has an unsupported public key: {exc}") from None


def _subject(cert: x509.Certificate) -> str:
    """The subject for an error message; cryptography parses names lazily and may raise on a
    malformed one (ValueError, TypeError, KeyError), which must not replace the error being told."""
    try:
        return cert.subject.rfc4514_string() or "<empty subject>"
    except (ValueError, TypeError, KeyError):
        return "<unreadable subject>"


@lru_cache(maxsize=4096)
def cert_der(cert: x509.Certificate) -> bytes:
    """A certificate's DER, kept: cryptography encodes it afresh on every ``public_bytes`` call
    (the costliest step of a signed request's checks, called a dozen times per enrollment)."""
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


def signer_chain(
    cert: x509.Certificate,
    candidates: Iterable[x509.Certificate] = (),
    *,
    extra: Iterable[x509.Certificate] = (),
) -> tuple[x509.Certificate, ...]:
    """What follows the protection certificate ``cert`` in extraCerts (RFC 9483 §3.3: "the CMP
    protection certificate followed by its chain"): its issuer, that one's issuer and so on, as
    far as ``candidates`` (intermediates from the --cert file and --untrusted, trust anchors)
    have them, then every ``extra`` certificate not already sent (given by the user: sent as is).

    As ``openssl cmp`` builds it (``X509_build_chain`` without self-signed certificates): a
    self-signed certificate ends the chain and is left out, since a receiver must not trust one
    because it came in the message and has its own copy when it trusts it. A certificate is taken
    as an issuer only when its subject is the child's issuer, it is a CA, its SubjectKeyIdentifier
    agrees with the child's AuthorityKeyIdentifier where both are present, and the child's
    signature verifies with its key: a wrong certificate is worse than none.
    """
    pool = [c for c in candidates if c != cert]
    chain: list[x509.Certificate] = []
    current = cert
    for _ in range(MAX_PATH_LENGTH):
        if is_self_signed(current):
            break
        parent = next(
            (c for c in pool if c.subject == current.issuer and c not in chain and _is_ca(c)
             and _key_ids_agree(current, c) and _issued_by(current, c)),
            None,
        )
        if parent is None or is_self_signed(parent):
            break
        chain.append(parent)
        current = parent
    for c in extra:
        if c != cert and c not in chain:
            chain.append(c)
    return tuple(chain)


def _key_ids_agree(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """False only when the child's AuthorityKeyIdentifier and the parent's SubjectKeyIdentifier
    are both present and differ (the parent is then another key of the same CA name)."""
    try:
        aki = child.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return True
    ski = subject_key_id(parent)
    return aki is None or ski is None or aki == ski


def check_signer_names(sender: bytes, sender_kid: bytes | None, signer: x509.Certificate) -> None:
    """RFC 9483 §3.1 for a signed message: ``sender`` (an encoded GeneralName) is a directoryName
    holding the signer certificate's subject, and ``senderKID`` is present and equal to the
    certificate's SubjectKeyIdentifier when it has one (without the extension there is nothing
    to compare, and the senderKID is left alone). Raises ``SignerMismatch`` naming the field."""
    try:
        name = messages.general_name_directory(sender)
    except DerError:
        name = None
    if name is None:
        raise SignerMismatch("sender of a signed message must be a directoryName (RFC 9483 §3.1)")
    if name != signer.subject.public_bytes() and not _same_name(name, signer.subject):
        raise SignerMismatch("sender is not the subject of the signer certificate (RFC 9483 §3.1)")
    ski = subject_key_id(signer)
    if ski is not None and sender_kid != ski:
        what = "is missing" if sender_kid is None else "is not the signer certificate's SubjectKeyIdentifier"
        raise SignerMismatch(f"senderKID {what} (RFC 9483 §3.1)")


def _same_name(name_der: bytes, name: x509.Name) -> bool:
    """Whether an encoded Name equals ``name`` when the encodings differ (string types, say)."""
    try:
        return parse_name(name_der) == name
    except ValueError:
        return False


@lru_cache(maxsize=1024)
def parse_name(name_der: bytes) -> x509.Name:
    """An encoded Name as cryptography's ``x509.Name``, parsed through a minimal certificate
    request around it (cryptography has no public Name parser); ValueError if it is no Name."""
    csr = x509.load_der_x509_csr(_csr_around(name_der))
    return csr.subject


def _csr_around(name_der: bytes) -> bytes:
    info = der.sequence(der.integer(0), name_der, PLACEHOLDER_SPKI, der.tlv(0xA0, b""))
    return der.sequence(info, der.algorithm_identifier(oids.ECDSA_SHA256), der.bit_string(b"\x00"))


# A fixed valid P-256 point (the generator), so parsing a Name never needs a real key.
PLACEHOLDER_SPKI = der.sequence(
    der.algorithm_identifier(oids.EC_PUBLIC_KEY, der.oid("1.2.840.10045.3.1.7")),
    der.bit_string(
        b"\x04"
        + bytes.fromhex("6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296")
        + bytes.fromhex("4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5")
    ),
)


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
ISSUED_KEPT = 10_000  # certificates ``TrustStore.remember_issued`` keeps


def _verified(path: list[x509.Certificate]) -> _Verified:
    """A path with the time span in which all of its certificates are valid."""
    return (max(c.not_valid_before_utc for c in path), min(c.not_valid_after_utc for c in path), path)


class TrustStore:
    """Trust anchors, and path validation from a signer to one of them."""

    def __init__(self, anchors: Iterable[x509.Certificate] = ()) -> None:
        self._anchors: dict[bytes, x509.Certificate] = {}
        self._by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        for a in anchors:
            self.add(a)
        # (leaf, untrusted) -> (valid from, valid until, path): a path holds while all of it does.
        self._verified: dict[tuple[bytes, tuple[bytes, ...]], _Verified] = {}
        # intermediate -> its verified path to an anchor
        self._ca_paths: dict[bytes, _Verified] = {}
        # certificate this CA issued -> the path above it (``remember_issued``)
        self._issued: dict[bytes, tuple[x509.Certificate, ...]] = {}
        self._issued_above: tuple[x509.Certificate, ...] = ()  # the last path found to end at an anchor

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
        chain_key = tuple(cert_der(c) for c in untrusted)
        known = self._known_path(leaf, chain_key, at)
        if known is not None:
            return known
        path = self._issued_path(leaf, at) or self._build(leaf, untrusted, at)
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[(cert_der(leaf), chain_key)] = _verified(path)
        if len(self._ca_paths) > 1_000:
            self._ca_paths.clear()
        for i in range(1, len(path) - 1):  # the intermediates: the next leaf under one stops there
            self._ca_paths[cert_der(path[i])] = _verified(path[i:])
        return list(path)

    def remember_issued(self, der_bytes: bytes, above: tuple[x509.Certificate, ...]) -> None:
        """A certificate its holder got from this CA just now, and the CA certificates above it
        up to an anchor: its issuer made it, so when its holder signs a request (the certConf,
        a kur or cr soon after) its signature need not be checked again, only the path's
        validity. Ignored unless ``above`` ends at one of our anchors; the last
        ``ISSUED_KEPT`` are kept."""
        if not above:
            return
        if above is not self._issued_above:  # checked once per path: the same path comes each time
            if cert_der(above[-1]) not in self._anchors:
                return
            self._issued_above = above
        while len(self._issued) >= ISSUED_KEPT:
            self._issued.pop(next(iter(self._issued)), None)  # the oldest
        self._issued[der_bytes] = above

    def _issued_path(self, leaf: x509.Certificate, at: datetime) -> list[x509.Certificate] | None:
        above = self._issued.get(cert_der(leaf))
        if above is None:
            return None
        path = [leaf, *above]
        return path if all(_valid_at(c, at) for c in path) else None

    def _known_path(self, cert: x509.Certificate, chain_key: tuple[bytes, ...],
                    at: datetime) -> list[x509.Certificate] | None:
        known = self._verified.get((cert_der(cert), chain_key))
        if known is not None and known[0] <= at <= known[1]:
            return list(known[2])
        return None

    def _known_ca_path(self, cert: x509.Certificate, at: datetime) -> list[x509.Certificate] | None:
        """A path verified before from this intermediate to an anchor: it holds whatever else a
        later message carries, while all of its certificates are valid (anchors are never removed)."""
        known = self._ca_paths.get(cert_der(cert))
        if known is not None and known[0] <= at <= known[1]:
            return list(known[2])
        return None

    def _build(
        self, leaf: x509.Certificate, untrusted: Sequence[x509.Certificate], at: datetime
    ) -> list[x509.Certificate]:
        if not _valid_at(leaf, at):
            raise UntrustedSigner(f"signer certificate {_subject(leaf)!r} is not valid now")
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
            known = self._known_ca_path(parent, at)
            if known is not None:  # an intermediate already verified up to an anchor
                return path + known
            path.append(parent)
            current = parent
        # The subject only for the message: writing it out costs more than the checks above.
        raise UntrustedSigner(f"signer certificate {_subject(leaf)!r} does not chain to a trusted anchor")
