"""The embedded CA's X.509 side: its certificate hierarchy and end-entity issuance.

``CaHierarchy`` holds the root CA, the issuing CA and the CMP protection (RA) signer, created once
in a state directory and reloaded on every start so a restart serves the same PKI. Operators who
bring their own credentials use ``CaHierarchy.from_files``.

``CertificateIssuer`` turns a public key plus requested names/extensions into a signed end-entity
certificate, applying a fixed policy (what a request may ask for, what the CA always adds). It is
pure computation: no I/O, no store; the CMP layer records the result with ``fleet.ca.store``.

Everything the CMP layer puts on the wire on every response (certificate DER, chains) is encoded
once here and cached, because re-encoding per response would cost more than the issuance itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property, lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtensionOID,
    NameOID,
    ObjectIdentifier,
)

from fleet.cmp.der import integer, oid, tlv
from fleet.cmp.protection import subject_key_id
from fleet.errors import FleetError
from fleet.files import atomic_write
from fleet.keytypes import KeySpec, KeySpecError

__all__ = [
    "CA_VALIDITY",
    "ID_KP_CMC_RA",
    "CaHierarchy",
    "CertificateIssuer",
    "CertificateRequestRejected",
    "HierarchyError",
    "HierarchyFiles",
    "IssuedCert",
    "key_fingerprint",
    "public_key_bits",
    "signature_hash_for",
]

#: id-kp-cmcRA (RFC 6402): marks the certificate the CA/RA uses to protect CMP responses.
ID_KP_CMC_RA = ObjectIdentifier("1.3.6.1.5.5.7.3.28")
#: Validity of the hierarchy's own certificates.
CA_VALIDITY = timedelta(days=3650)
#: Certificates start this far in the past so devices with a slightly slow clock accept them.
_BACKDATE = timedelta(minutes=5)
_BACKDATE_SECONDS = int(_BACKDATE.total_seconds())

_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


class HierarchyError(FleetError):
    """The CA hierarchy on disk or handed in by an operator is unusable."""


class CertificateRequestRejected(FleetError):
    """A request asks for something the issuance policy refuses (CMP failInfo badCertTemplate)."""


# --------------------------------------------------------------------------- keys and hashes


def signature_hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.HashAlgorithm | None:
    """The hash a CA key signs with: SHA-256 for P-256 and RSA, SHA-384 for P-384, SHA-512 for
    P-521, none for EdDSA (the algorithm fixes it)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = key.curve.key_size
        if size > 384:
            return hashes.SHA512()
        if size > 256:
            return hashes.SHA384()
        return hashes.SHA256()
    if isinstance(key, rsa.RSAPrivateKey):
        return hashes.SHA256()
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    raise HierarchyError(f"unsupported CA key type {type(key).__name__}")


def key_fingerprint(public_key: CertificatePublicKeyTypes) -> bytes:
    """SHA-256 of the SubjectPublicKeyInfo DER: the store's key identity (key reuse, kur)."""
    return hashlib.sha256(public_key.public_bytes(_DER, _SPKI)).digest()


def public_key_bits(public_key: CertificatePublicKeyTypes) -> bytes:
    """The subjectPublicKey BIT STRING value: what SKI method 1 and OCSP's issuerKeyHash hash."""
    return _spki_bit_string(public_key.public_bytes(_DER, _SPKI))


def _public_keys_equal(a: CertificatePublicKeyTypes, b: CertificatePublicKeyTypes) -> bool:
    return a.public_bytes(_DER, _SPKI) == b.public_bytes(_DER, _SPKI)


# --------------------------------------------------------------------------- hierarchy


@dataclass(frozen=True)
class HierarchyFiles:
    """Where the hierarchy's PEM files live (``None`` for credentials handed in as objects)."""

    root_cert: Path | None = None
    root_key: Path | None = None
    issuing_cert: Path | None = None
    issuing_key: Path | None = None
    signer_cert: Path | None = None
    signer_key: Path | None = None


_FILE_NAMES = {
    "root_cert": "root-ca.pem",
    "root_key": "root-ca.key.pem",
    "issuing_cert": "issuing-ca.pem",
    "issuing_key": "issuing-ca.key.pem",
    "signer_cert": "cmp-signer.pem",
    "signer_key": "cmp-signer.key.pem",
}


@dataclass(frozen=True, eq=False, repr=False)
class CaHierarchy:
    """Root CA, issuing CA and CMP signer, with their keys and pre-encoded DER.

    ``chain`` is the issuing CA's issuers, nearest first (empty when the issuing CA is
    self-signed). ``root`` is the top of that chain.
    """

    issuing: x509.Certificate
    issuing_key: CertificateIssuerPrivateKeyTypes
    signer: x509.Certificate
    signer_key: CertificateIssuerPrivateKeyTypes
    chain: tuple[x509.Certificate, ...]
    files: HierarchyFiles = field(default_factory=HierarchyFiles)
    root_key: CertificateIssuerPrivateKeyTypes | None = None

    def __repr__(self) -> str:  # never show keys
        names = (c.subject.rfc4514_string() for c in (self.issuing, self.signer, self.root))
        return "CaHierarchy(issuing={!r}, signer={!r}, root={!r})".format(*names)

    # -- certificates and cached encodings

    @property
    def root(self) -> x509.Certificate:
        return self.chain[-1] if self.chain else self.issuing

    @cached_property
    def root_der(self) -> bytes:
        return self.root.public_bytes(_DER)

    @cached_property
    def issuing_der(self) -> bytes:
        return self.issuing.public_bytes(_DER)

    @cached_property
    def signer_der(self) -> bytes:
        return self.signer.public_bytes(_DER)

    @cached_property
    def chain_for_issued(self) -> tuple[x509.Certificate, ...]:
        """What a relying party needs above an issued certificate: issuing CA, then up to root."""
        return (self.issuing, *self.chain)

    @cached_property
    def chain_for_issued_der(self) -> tuple[bytes, ...]:
        return tuple(c.public_bytes(_DER) for c in self.chain_for_issued)

    @cached_property
    def signer_chain(self) -> tuple[x509.Certificate, ...]:
        """The CMP signer first, then its issuers (RFC 9483 §3.3 extraCerts order)."""
        pool = [self.issuing, *self.chain]
        out = [self.signer]
        current = self.signer
        while current.issuer != current.subject:
            parent = next((c for c in pool if c.subject == current.issuer and c not in out), None)
            if parent is None:
                break
            out.append(parent)
            current = parent
        return tuple(out)

    @cached_property
    def signer_chain_der(self) -> tuple[bytes, ...]:
        return tuple(c.public_bytes(_DER) for c in self.signer_chain)

    @cached_property
    def issuing_hash(self) -> hashes.HashAlgorithm | None:
        """Hash the issuing CA signs certificates, CRLs and OCSP responses with."""
        return signature_hash_for(self.issuing_key)

    @cached_property
    def signer_hash(self) -> hashes.HashAlgorithm | None:
        """Hash the CMP signer protects responses with."""
        return signature_hash_for(self.signer_key)

    @cached_property
    def issuing_ski(self) -> bytes:
        """The issuing CA's key identifier."""
        return _key_identifier(self.issuing)

    @cached_property
    def signer_ski(self) -> bytes:
        """SKI of the CMP signer: the senderKID of signature-protected responses."""
        return _key_identifier(self.signer)

    # -- construction

    @classmethod
    def load_or_create(
        cls, state_dir: Path, *, key_type: str = "ec:P-256", name_prefix: str = "fleet"
    ) -> CaHierarchy:
        """Load the hierarchy kept in ``state_dir``, creating it on first start.

        ``key_type`` and ``name_prefix`` only matter at creation; an existing hierarchy is served
        as it is. A directory holding only part of a hierarchy (some certificates missing) is
        an error rather than being overwritten, so a CA key is never silently replaced; keys
        without any certificate are the trace of an interrupted creation and are replaced.
        """
        state_dir = Path(state_dir)
        if not state_dir.exists():
            state_dir.mkdir(parents=True, mode=0o700)
            os.chmod(state_dir, 0o700)  # mkdir's mode is filtered by umask
        elif not state_dir.is_dir():
            raise HierarchyError(f"CA state path {state_dir} is not a directory")
        paths = {k: state_dir / v for k, v in _FILE_NAMES.items()}
        files = HierarchyFiles(**paths)
        with _locked(state_dir / ".lock"):
            present = [k for k, p in paths.items() if p.exists()]
            if len(present) == len(paths):
                return cls._load(files)
            if present and not any(k.endswith("_cert") for k in present):
                # Creation was interrupted before any certificate was written: the keys were
                # never certified or used, so starting over replaces nothing that matters.
                present = []
            if present:
                missing = ", ".join(sorted(paths[k].name for k in paths if k not in present))
                raise HierarchyError(
                    f"CA state dir {state_dir} holds a partial hierarchy; missing {missing}"
                )
            return cls._create(files, key_type=key_type, name_prefix=name_prefix)

    @classmethod
    def _create(cls, files: HierarchyFiles, *, key_type: str, name_prefix: str) -> CaHierarchy:
        if not name_prefix.strip():
            raise HierarchyError("CA name prefix must not be empty")
        try:
            root_name = _name(name_prefix, f"{name_prefix} Root CA")
            issuing_name = _name(name_prefix, f"{name_prefix} Issuing CA")
            signer_name = _name(name_prefix, f"{name_prefix} CMP RA")
        except ValueError as exc:
            raise HierarchyError(f"CA name prefix {name_prefix!r} is unusable: {exc}") from None
        try:
            spec = KeySpec.parse(key_type)
        except KeySpecError as exc:
            raise HierarchyError(str(exc)) from None
        now = datetime.now(UTC).replace(microsecond=0)
        root_key, issuing_key, signer_key = spec.generate(), spec.generate(), spec.generate()

        root = _build_ca_cert(
            subject=root_name,
            public_key=root_key.public_key(),
            issuer=None,
            issuer_key=root_key,
            not_before=now - _BACKDATE,
            not_after=now + CA_VALIDITY,
            path_length=None,
        )
        issuing = _build_ca_cert(
            subject=issuing_name,
            public_key=issuing_key.public_key(),
            issuer=root,
            issuer_key=root_key,
            not_before=now - _BACKDATE,
            not_after=root.not_valid_after_utc,
            path_length=0,
        )
        signer = _build_signer_cert(
            subject=signer_name,
            public_key=signer_key.public_key(),
            issuer=issuing,
            issuer_key=issuing_key,
            not_before=now - _BACKDATE,
            not_after=issuing.not_valid_after_utc,
        )
        # Keys first, certificates last: a crash mid-way leaves a partial directory, which
        # load_or_create refuses, rather than certificates without keys being reused.
        assert files.root_key and files.issuing_key and files.signer_key
        assert files.root_cert and files.issuing_cert and files.signer_cert
        atomic_write(files.root_key, _key_pem(root_key), mode=0o600)
        atomic_write(files.issuing_key, _key_pem(issuing_key), mode=0o600)
        atomic_write(files.signer_key, _key_pem(signer_key), mode=0o600)
        atomic_write(files.root_cert, root.public_bytes(serialization.Encoding.PEM), mode=0o644)
        atomic_write(files.issuing_cert, issuing.public_bytes(serialization.Encoding.PEM), mode=0o644)
        atomic_write(files.signer_cert, signer.public_bytes(serialization.Encoding.PEM), mode=0o644)
        return cls(
            issuing=issuing,
            issuing_key=issuing_key,
            signer=signer,
            signer_key=signer_key,
            chain=(root,),
            files=files,
            root_key=root_key,
        )

    @classmethod
    def _load(cls, files: HierarchyFiles) -> CaHierarchy:
        assert files.root_cert and files.root_key and files.issuing_cert
        assert files.issuing_key and files.signer_cert and files.signer_key
        root = _load_cert(files.root_cert)
        root_key = _load_key(files.root_key, None)
        _check_pair(root, root_key, files.root_key)
        hierarchy = cls._checked(
            issuing=_load_cert(files.issuing_cert),
            issuing_key=_load_key(files.issuing_key, None),
            signer=_load_cert(files.signer_cert),
            signer_key=_load_key(files.signer_key, None),
            chain=(root,),
            files=files,
            root_key=root_key,
        )
        return hierarchy

    @classmethod
    def from_files(
        cls,
        issuing_cert: x509.Certificate | Path | str,
        issuing_key: CertificateIssuerPrivateKeyTypes | Path | str,
        signer_cert: x509.Certificate | Path | str,
        signer_key: CertificateIssuerPrivateKeyTypes | Path | str,
        chain: Sequence[x509.Certificate | Path | str] = (),
        *,
        key_password: bytes | None = None,
    ) -> CaHierarchy:
        """Serve operator-supplied credentials (objects, or PEM/DER file paths).

        ``chain`` lists the issuing CA's issuers, nearest first, root last (a path may hold
        several PEM certificates). The signer may be issued by any CA in ``[issuing, *chain]``
        or elsewhere (OpenSSL's test tables sign CMP responses with a ``server.crt`` issued by
        their root). Each key must match its certificate.
        """
        issuing = _as_cert(issuing_cert)
        signer = _as_cert(signer_cert)
        chain_certs: list[x509.Certificate] = []
        for item in chain:
            if isinstance(item, x509.Certificate):
                chain_certs.append(item)
            else:
                chain_certs.extend(_load_certs(Path(item)))
        return cls._checked(
            issuing=issuing,
            issuing_key=_as_key(issuing_key, key_password),
            signer=signer,
            signer_key=_as_key(signer_key, key_password),
            chain=tuple(chain_certs),
            files=HierarchyFiles(
                issuing_cert=_path_or_none(issuing_cert),
                issuing_key=_path_or_none(issuing_key),
                signer_cert=_path_or_none(signer_cert),
                signer_key=_path_or_none(signer_key),
                root_cert=_path_or_none(chain[-1]) if chain else _path_or_none(issuing_cert),
            ),
        )

    @classmethod
    def _checked(
        cls,
        *,
        issuing: x509.Certificate,
        issuing_key: CertificateIssuerPrivateKeyTypes,
        signer: x509.Certificate,
        signer_key: CertificateIssuerPrivateKeyTypes,
        chain: tuple[x509.Certificate, ...],
        files: HierarchyFiles,
        root_key: CertificateIssuerPrivateKeyTypes | None = None,
    ) -> CaHierarchy:
        _check_pair(issuing, issuing_key, files.issuing_key or "issuing CA key")
        _check_pair(signer, signer_key, files.signer_key or "CMP signer key")
        signature_hash_for(issuing_key)  # raises on an unsupported key type
        signature_hash_for(signer_key)
        child = issuing
        for parent in chain:
            if child.issuer != parent.subject:
                raise HierarchyError(
                    f"CA chain is out of order: {child.subject.rfc4514_string()!r} is not issued "
                    f"by {parent.subject.rfc4514_string()!r}"
                )
            try:
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                raise HierarchyError(
                    f"CA certificate {child.subject.rfc4514_string()!r} does not verify "
                    f"against {parent.subject.rfc4514_string()!r}: {exc}"
                ) from None
            child = parent
        return cls(
            issuing=issuing,
            issuing_key=issuing_key,
            signer=signer,
            signer_key=signer_key,
            chain=chain,
            files=files,
            root_key=root_key,
        )


def _name(org: str, cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _build_ca_cert(
    *,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    issuer: x509.Certificate | None,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    not_before: datetime,
    not_after: datetime,
    path_length: int | None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(_aki_for(issuer), critical=False)
    return builder.sign(issuer_key, signature_hash_for(issuer_key))  # type: ignore[arg-type]


def _build_signer_cert(
    *,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    issuer: x509.Certificate,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_DIGITAL_SIGNATURE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ID_KP_CMC_RA]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_aki_for(issuer), critical=False)
    )
    return builder.sign(issuer_key, signature_hash_for(issuer_key))  # type: ignore[arg-type]


def _aki_for(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        key = issuer.public_key()
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(key)  # type: ignore[arg-type]


def _key_usage(**flags: bool) -> x509.KeyUsage:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


_CA_KEY_USAGE = _key_usage(key_cert_sign=True, crl_sign=True)
_DIGITAL_SIGNATURE = _key_usage(digital_signature=True)
_RSA_KEY_USAGE = _key_usage(digital_signature=True, key_encipherment=True)
_KEY_AGREEMENT = _key_usage(key_agreement=True)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Serialise hierarchy creation between processes started on the same state dir."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise HierarchyError(f"cannot read {path}: {exc.strerror}") from None


def _key_identifier(cert: x509.Certificate) -> bytes:
    """A certificate's key identifier: its SKI extension, else computed from its key."""
    ski = subject_key_id(cert)
    if ski is None:
        ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest  # type: ignore[arg-type]
    return ski


def _load_certs(path: Path) -> list[x509.Certificate]:
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise HierarchyError(f"{path} does not hold a readable X.509 certificate") from None


def _load_cert(path: Path) -> x509.Certificate:
    return _load_certs(path)[0]


def _load_key(path: Path, password: bytes | None) -> CertificateIssuerPrivateKeyTypes:
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password)
        else:
            key = serialization.load_der_private_key(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The library's message may quote parts of the input; name the file only.
        raise HierarchyError(
            f"{path} does not hold a readable private key (wrong password?)"
        ) from None
    if isinstance(key, x25519.X25519PrivateKey | x448.X448PrivateKey) or not hasattr(key, "sign"):
        raise HierarchyError(f"{path} holds a key that cannot sign")
    return key  # type: ignore[return-value]


def _as_cert(item: x509.Certificate | Path | str) -> x509.Certificate:
    return item if isinstance(item, x509.Certificate) else _load_cert(Path(item))


def _as_key(
    item: CertificateIssuerPrivateKeyTypes | Path | str, password: bytes | None
) -> CertificateIssuerPrivateKeyTypes:
    if isinstance(item, Path | str):
        return _load_key(Path(item), password)
    return item


def _path_or_none(item: object) -> Path | None:
    return Path(item) if isinstance(item, Path | str) else None


def _check_pair(
    cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes, what: Path | str
) -> None:
    if not _public_keys_equal(cert.public_key(), key.public_key()):
        raise HierarchyError(
            f"{what} does not match the certificate {cert.subject.rfc4514_string()!r}"
        )


# --------------------------------------------------------------------------- issuance


@dataclass(frozen=True, eq=False)
class IssuedCert:
    """One issued certificate: DER (what goes on the wire), parsed form, and the fields the
    store records, filled at issuance so nothing is parsed back."""

    der: bytes
    cert: x509.Certificate
    serial: int
    not_before: datetime
    not_after: datetime
    key_fingerprint: bytes
    # The subject as handed to the builder, so ``subject`` need not parse it back out of the
    # certificate (that cost ~15 µs per issuance); None: read it from ``cert``.
    subject_name: x509.Name | None = field(default=None, repr=False, compare=False)
    # The RFC 4514 text when issuance could write it straight from the subject's DER.
    subject_text: str | None = field(default=None, repr=False, compare=False)

    @cached_property
    def subject(self) -> str:
        """RFC 4514 string of the subject ('' for the NULL-DN)."""
        if self.subject_text is not None:
            return self.subject_text
        name = self.subject_name
        # DER sorts the attributes of a multi-valued RDN, so only names without one read the
        # same from the request as from the certificate.
        if name is None or any(len(rdn) > 1 for rdn in name.rdns):
            name = self.cert.subject
        return name.rfc4514_string()

    @property
    def signature_hash(self) -> str | None:
        """Name of the hash the certificate is signed with (None for EdDSA): what a certConf's
        certHash uses (RFC 9481 §2)."""
        algo = self.cert.signature_hash_algorithm
        return algo.name if algo is not None else None

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> IssuedCert:
        """Wrap a certificate issued elsewhere (imports, tests) so the store can record it."""
        return cls(
            der=cert.public_bytes(_DER),
            cert=cert,
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            key_fingerprint=key_fingerprint(cert.public_key()),
        )


class _LazyIssuedCert(IssuedCert):
    """An ``IssuedCert`` from ``_issue_plain``: the parsed certificate is made on first use
    (the CMP exchange never needs it: ~13 µs per issuance), the signature hash is known."""

    @cached_property
    def cert(self) -> x509.Certificate:  # type: ignore[override]
        return x509.load_der_x509_certificate(self.der)

    @property
    def signature_hash(self) -> str | None:
        return self._signature_hash  # type: ignore[attr-defined,no-any-return]


def _lazy_issued(values: dict[str, object]) -> IssuedCert:
    """A ``_LazyIssuedCert`` without the frozen dataclass's per-field ``object.__setattr__``."""
    issued = object.__new__(_LazyIssuedCert)
    issued.__dict__.update(values)
    return issued


#: Requested extensions the policy takes over from a request (others: ignored if non-critical,
#: refused if critical).
_ACCEPTED_EXTENSIONS: tuple[type[x509.ExtensionType], ...] = (
    x509.SubjectAlternativeName,
    x509.KeyUsage,
    x509.ExtendedKeyUsage,
    x509.CertificatePolicies,
)
#: Requested extensions the CA always sets itself; a request carrying them is not refused.
_CA_SET_EXTENSIONS: tuple[type[x509.ExtensionType], ...] = (
    x509.SubjectKeyIdentifier,
    x509.AuthorityKeyIdentifier,
    x509.CRLDistributionPoints,
    x509.AuthorityInformationAccess,
)


class CertificateIssuer:
    """Issues end-entity certificates from the hierarchy's issuing CA.

    Policy: the subject's requested SAN, keyUsage, extendedKeyUsage and certificatePolicies are
    honoured (keyUsage without CA bits); a CA basicConstraints or any other critical extension
    is refused with ``CertificateRequestRejected``; other non-critical extensions are ignored.
    The CA always adds basicConstraints CA:FALSE, SKI, AKI, a default keyUsage when none was
    asked for, and with ``base_url`` a CRL distribution point and an OCSP AIA entry.
    """

    def __init__(
        self,
        hierarchy: CaHierarchy,
        *,
        base_url: str | None = None,
        validity: timedelta = timedelta(days=365),
    ) -> None:
        if validity <= timedelta(0):
            raise FleetError("certificate validity must be positive")
        self.hierarchy = hierarchy
        self.validity = validity
        self.base_url = base_url.rstrip("/") if base_url else None
        self._issuer_name = hierarchy.issuing.subject
        self._issuing_key = hierarchy.issuing_key
        self._hash = hierarchy.issuing_hash
        self._ca_not_after = hierarchy.issuing.not_valid_after_utc
        self._ext_aki = _raw(x509.AuthorityKeyIdentifier(hierarchy.issuing_ski, None, None), False)
        self._ext_basic = _raw(x509.BasicConstraints(ca=False, path_length=None), True)
        self._ext_ku_ds = _raw(_DIGITAL_SIGNATURE, True)
        self._ext_urls: list[x509.Extension[x509.ExtensionType]] = []
        if self.base_url:
            crl_dp = x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(self.crl_url)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            )
            aia = x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(self.ocsp_url),
                    )
                ]
            )
            self._ext_urls = [_raw(crl_dp, False), _raw(aia, False)]
        # The constant extensions' DER, for the direct TBS encoding (``_sign_direct``).
        self._ext_der = {
            id(e): _extension_der(e) for e in (self._ext_aki, self._ext_basic, self._ext_ku_ds, *self._ext_urls)
        }
        self._issuer_der = self._issuer_name.public_bytes()
        self._sign_raw = _raw_signer(self._issuing_key, self._hash)
        self._sig_alg_der = b""
        if self._sign_raw is not None and not self._direct_matches_builder():
            self._sign_raw = None  # an issuing key the direct encoding does not reproduce: builder
        # The plain request (no extensions or SANs asked for, default validity, a key that gets
        # the digitalSignature keyUsage): its extensions block is constant but for the SKI.
        self._plain_ext: tuple[bytes, bytes] | None = None
        self._plain_times: tuple[int, bytes, datetime, datetime] | None = None
        if self._sign_raw is not None and validity.microseconds == 0:
            post = b"".join(self._ext_der[id(e)] for e in (self._ext_aki, *self._ext_urls))
            pre = self._ext_der[id(self._ext_basic)] + self._ext_der[id(self._ext_ku_ds)]
            block = tlv(0xA3, tlv(0x30, pre + _SKI_PREFIX + bytes(20) + post))
            self._plain_ext = (block[: len(block) - len(post) - 20], post)

    @property
    def crl_url(self) -> str:
        """Where relying parties fetch the issuing CA's CRL (HTTP layer mounts it)."""
        return f"{self.base_url}/crl/issuing.crl" if self.base_url else ""

    @property
    def ocsp_url(self) -> str:
        return f"{self.base_url}/ocsp" if self.base_url else ""

    def issue(
        self,
        public_key: CertificatePublicKeyTypes,
        subject: x509.Name | bytes | None,
        *,
        sans: Sequence[x509.GeneralName] | None = None,
        extensions: Sequence[x509.Extension[x509.ExtensionType]] = (),
        not_after: datetime | None = None,
        serial: int | None = None,
        spki: bytes | None = None,
    ) -> IssuedCert:
        """Sign a certificate for ``public_key``.

        ``subject`` ``None`` or empty means the NULL-DN, allowed only with a SAN (which is then
        critical, RFC 5280 §4.2.1.6); it may also be a Name's DER as a request carried it
        (parsed here, ``CertificateRequestRejected`` if it is not a Name; the usual simple
        shape is checked and used as it is, without Python ``Name`` objects). ``sans`` wins
        over a SAN among ``extensions``. ``not_after`` (naive means UTC) is clamped to the
        issuing CA's own expiry. Raises ``CertificateRequestRejected`` when the request breaks
        the policy. ``serial`` ``None`` draws a random one; the CA passes
        ``CertStore.allocate_serial()``. ``spki``: the key's SubjectPublicKeyInfo DER as
        received, used instead of re-encoding the key when it is the canonical P-256 form.
        """
        subject_der: bytes | None = None
        subject_text: str | None = None
        if isinstance(subject, bytes):
            subject_text = _simple_rfc4514(subject)
            if subject_text is not None and subject_text:
                subject_der = subject
            else:
                subject = _parse_name(subject)
        elif subject is not None:
            subject_der = subject.public_bytes()
            subject_text = _simple_rfc4514(subject_der)
        if (
            not extensions and not sans and not_after is None and subject_der is not None
            and self._plain_ext is not None and self._sign_raw is not None
            and _default_key_usage(public_key) is _DIGITAL_SIGNATURE
        ):
            plain = self._issue_plain(
                public_key, subject_der, subject_text, subject if isinstance(subject, x509.Name) else None,
                serial, spki,
            )
            if plain is not None:
                return plain
        if isinstance(subject, bytes):
            subject = _parse_name(subject)
        requested: dict[type[x509.ExtensionType], x509.Extension[x509.ExtensionType]] = {}
        for ext in extensions:
            value = ext.value
            if isinstance(value, _ACCEPTED_EXTENSIONS):
                requested[type(value)] = ext
            elif isinstance(value, x509.BasicConstraints):
                if value.ca:
                    raise CertificateRequestRejected("request asks for a CA certificate")
            elif isinstance(value, _CA_SET_EXTENSIONS):
                continue
            elif ext.critical:
                raise CertificateRequestRejected(
                    f"request carries an unsupported critical extension {ext.oid.dotted_string}"
                )

        san_value: x509.SubjectAlternativeName | None = None
        if sans:
            san_value = x509.SubjectAlternativeName(list(sans))
        elif x509.SubjectAlternativeName in requested:
            san_value = requested[x509.SubjectAlternativeName].value  # type: ignore[assignment]
            if not len(san_value):  # type: ignore[arg-type]
                san_value = None
        if subject is None:
            subject = _NULL_DN
        null_dn = len(subject) == 0
        if null_dn and san_value is None:
            raise CertificateRequestRejected("request has neither a subject nor a subjectAltName")

        if x509.KeyUsage in requested:
            key_usage: x509.KeyUsage = requested[x509.KeyUsage].value  # type: ignore[assignment]
            if key_usage.key_cert_sign or key_usage.crl_sign:
                raise CertificateRequestRejected("request asks for keyCertSign or cRLSign")
        else:
            key_usage = _default_key_usage(public_key)

        now = datetime.now(UTC)
        if not_after is None:
            end = now + self.validity
        else:  # a naive time is taken as UTC, as the builder itself would
            end = not_after if not_after.tzinfo else not_after.replace(tzinfo=UTC)
        end = min(end, self._ca_not_after)
        start = now - _BACKDATE
        if end <= start:
            raise CertificateRequestRejected("requested notAfter lies in the past")
        if serial is None:
            serial = x509.random_serial_number()
        spki = public_key.public_bytes(_DER, _SPKI)

        # Constant extensions are pre-encoded Extension objects, and the builder is made in one
        # constructor call: the chained builder methods copy the builder and re-check every
        # extension on each step, which cost a quarter of the issuance time.
        exts: list[x509.Extension[x509.ExtensionType]] = [self._ext_basic]
        if key_usage is _DIGITAL_SIGNATURE:
            exts.append(self._ext_ku_ds)
        else:
            exts.append(x509.Extension(ExtensionOID.KEY_USAGE, True, key_usage))
        eku = requested.get(x509.ExtendedKeyUsage)
        if eku is not None:
            exts.append(eku)
        if san_value is not None:
            exts.append(x509.Extension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, null_dn, san_value))
        direct = self._sign_raw is not None
        exts.append(_SKI_SLOT if direct else _ski_extension(spki))
        exts.append(self._ext_aki)
        policies = requested.get(x509.CertificatePolicies)
        if policies is not None:
            exts.append(x509.Extension(ExtensionOID.CERTIFICATE_POLICIES, False, policies.value))
        exts.extend(self._ext_urls)
        try:
            if direct:
                if subject_der is None:
                    subject_der = subject.public_bytes()
                    subject_text = _simple_rfc4514(subject_der)
                cert_der = self._sign_direct(serial, start, end, subject_der, spki, exts)
                cert = x509.load_der_x509_certificate(cert_der)
            else:
                cert = self._sign_with_builder(serial, start, end, subject, public_key, exts)
                cert_der = cert.public_bytes(_DER)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CertificateRequestRejected(f"cannot issue for this request: {exc}") from None
        return IssuedCert(
            der=cert_der,
            cert=cert,
            serial=serial,
            not_before=start.replace(microsecond=0),
            not_after=end.replace(microsecond=0),
            key_fingerprint=hashlib.sha256(spki).digest(),
            subject_name=subject,
            subject_text=subject_text,
        )

    def _issue_plain(
        self, public_key: CertificatePublicKeyTypes, subject_der: bytes, subject_text: str | None,
        subject: x509.Name | None, serial: int | None, spki: bytes | None,
    ) -> IssuedCert | None:
        """``issue`` for the plain request (see ``__init__``) from pre-encoded parts: the same
        certificate, at a fraction of the Python work (the tests compare it with the builder's).
        None when the general path must decide (a NULL-DN subject, a CA about to expire)."""
        second = math.floor(time.time())
        times = self._plain_times
        if times is None or times[0] != second:
            start = second - _BACKDATE_SECONDS
            end = min(second + int(self.validity.total_seconds()), math.floor(self._ca_not_after.timestamp()))
            if end <= start + 1:
                return None  # the general path refuses (or clamps) with its own message
            validity = tlv(0x30, _x509_time_of(start) + _x509_time_of(end))
            times = (second, validity, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))
            self._plain_times = times
        if subject_der == b"\x30\x00":
            return None  # NULL-DN without a SAN: refused by the general path
        if serial is None:
            serial = x509.random_serial_number()
        if spki is None or len(spki) != 91 or not spki.startswith(_P256_SPKI_PREFIX):
            spki = public_key.public_bytes(_DER, _SPKI)
        assert self._plain_ext is not None and self._sign_raw is not None
        head, tail = self._plain_ext
        ski = hashlib.sha1(_spki_bit_string(spki), usedforsecurity=False).digest()
        try:
            if not 0 < serial < 1 << 159:
                raise ValueError("serial number must be positive and at most 159 bits")
            tbs = tlv(0x30, b"".join((
                _VERSION_3, integer(serial), self._sig_alg_der, self._issuer_der, times[1], subject_der,
                spki, head, ski, tail,
            )))
            signature = self._sign_raw(tbs)
            cert_der = tlv(0x30, tbs + self._sig_alg_der + tlv(0x03, b"\x00" + signature))
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CertificateRequestRejected(f"cannot issue for this request: {exc}") from None
        values = {
            "der": cert_der,
            "serial": serial,
            "not_before": times[2],
            "not_after": times[3],
            "key_fingerprint": hashlib.sha256(spki).digest(),
            "subject_name": subject,
            "subject_text": subject_text,
            "_signature_hash": self._hash.name if self._hash is not None else None,
        }
        if subject_text is not None:
            values["subject"] = subject_text  # the cached_property's value, set up front
        return _lazy_issued(values)

    def _sign_with_builder(
        self,
        serial: int,
        start: datetime,
        end: datetime,
        subject: x509.Name,
        public_key: CertificatePublicKeyTypes,
        exts: Sequence[x509.Extension[x509.ExtensionType]],
    ) -> x509.Certificate:
        """The reference encoding: cryptography's builder, made in one constructor call (the
        chained builder methods copy the builder and re-check every extension on each step)."""
        builder = x509.CertificateBuilder(
            issuer_name=self._issuer_name,
            subject_name=subject,
            public_key=public_key,
            serial_number=serial,
            not_valid_before=_naive_utc(start),
            not_valid_after=_naive_utc(end),
            extensions=list(exts),
        )
        return builder.sign(self._issuing_key, self._hash)  # type: ignore[arg-type]

    def _sign_direct(
        self,
        serial: int,
        start: datetime,
        end: datetime,
        subject_der: bytes,
        spki: bytes,
        exts: Sequence[x509.Extension[x509.ExtensionType]],
    ) -> bytes:
        """The same certificate as ``_sign_with_builder``, its TBSCertificate encoded here and
        signed with the issuing key directly: the builder spent about 70 µs per certificate
        beyond the signature converting its Python inputs. ``__init__`` checks that both
        encodings agree byte for byte for this issuer (else the builder is used), and the tests
        compare them over random requests."""
        if not 0 < serial < 1 << 159:  # the builder's own limits (RFC 5280 §4.1.2.2)
            raise ValueError("serial number must be positive and at most 159 bits")
        known = self._ext_der
        ext_ders = [
            _ski_extension_der(spki) if e is _SKI_SLOT else known.get(id(e)) or _extension_der(e)
            for e in exts
        ]
        tbs = tlv(
            0x30,
            b"".join(
                (
                    _VERSION_3,
                    integer(serial),
                    self._sig_alg_der,
                    self._issuer_der,
                    tlv(0x30, _x509_time(start) + _x509_time(end)),
                    subject_der,
                    spki,
                    tlv(0xA3, tlv(0x30, b"".join(ext_ders))),
                )
            ),
        )
        assert self._sign_raw is not None
        signature = self._sign_raw(tbs)
        return tlv(0x30, tbs + self._sig_alg_der + tlv(0x03, b"\x00" + signature))

    def _direct_matches_builder(self) -> bool:
        """Issue one probe certificate both ways; True when the TBS encodings are identical.
        Also learns the signature AlgorithmIdentifier from the builder's certificate."""
        key = self.hierarchy.issuing.public_key()
        spki = key.public_bytes(_DER, _SPKI)
        start = datetime(2020, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
        end = datetime(2060, 1, 2, 3, 4, 5, tzinfo=UTC)  # both Time choices
        exts = [self._ext_basic, self._ext_ku_ds, _ski_extension(spki), self._ext_aki, *self._ext_urls]
        try:
            probe = self._sign_with_builder(0x1234, start, end, self._issuer_name, key, exts)  # type: ignore[arg-type]
            self._sig_alg_der = _signature_algorithm_der(probe.public_bytes(_DER))
            exts[2] = _SKI_SLOT
            direct = x509.load_der_x509_certificate(
                self._sign_direct(0x1234, start, end, self._issuer_der, spki, exts)
            )
        except Exception:  # noqa: BLE001  # any failure of the probe: the builder it is
            return False
        return direct.tbs_certificate_bytes == probe.tbs_certificate_bytes and (
            direct.signature_algorithm_oid == probe.signature_algorithm_oid
        )



_NULL_DN = x509.Name([])
#: SubjectPublicKeyInfo of an uncompressed P-256 key up to the point's 64 coordinate octets:
#: with these 27 octets and 91 in all, a key that loaded is in the form ``public_bytes`` writes.
_P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004")


def _parse_name(name_der: bytes) -> x509.Name:
    """A Name's DER as cryptography reads it (through a minimal CSR: it has no public Name
    parser); ``CertificateRequestRejected`` if it is not one."""
    p256_generator = bytes.fromhex(
        "6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296"
        "4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5"
    )
    spki = _P256_SPKI_PREFIX + p256_generator
    info = tlv(0x30, b"\x02\x01\x00" + name_der + spki + b"\xa0\x00")
    ecdsa_sha256 = bytes.fromhex("300a06082a8648ce3d040302")
    csr = tlv(0x30, info + ecdsa_sha256 + b"\x03\x01\x00")
    try:
        return x509.load_der_x509_csr(csr).subject
    except ValueError as exc:
        raise CertificateRequestRejected(f"requested subject is not a Name: {exc}") from None


_VERSION_3 = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2


def _x509_time(when: datetime) -> bytes:
    """RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, as the
    builder encodes them."""
    return _x509_time_of(math.floor(when.timestamp()))


@lru_cache(maxsize=16)
def _x509_time_of(second: int) -> bytes:
    """Cached by the second: every certificate of a second starts and ends alike."""
    t = datetime.fromtimestamp(second, UTC)
    text = f"{t.month:02d}{t.day:02d}{t.hour:02d}{t.minute:02d}{t.second:02d}Z"
    if t.year < 2050:
        return b"\x17\x0d" + f"{t.year % 100:02d}{text}".encode("ascii")
    return b"\x18\x0f" + f"{t.year:04d}{text}".encode("ascii")


def _extension_der(ext: x509.Extension[x509.ExtensionType]) -> bytes:
    """Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue }."""
    value = ext.value.public_bytes()
    critical = b"\x01\x01\xff" if ext.critical else b""
    return tlv(0x30, oid(ext.oid.dotted_string) + critical + tlv(0x04, value))


def _signature_algorithm_der(cert_der: bytes) -> bytes:
    """The signatureAlgorithm TLV of a certificate (the second element of its SEQUENCE)."""
    pos = _skip_header(cert_der, 0)
    pos = _skip_tlv(cert_der, pos)  # past the TBSCertificate
    return cert_der[pos : _skip_tlv(cert_der, pos)]


def _raw_signer(
    key: CertificateIssuerPrivateKeyTypes, hash_alg: hashes.HashAlgorithm | None
) -> Callable[[bytes], bytes] | None:
    """Sign bytes as the builder signs a certificate with ``key`` (None: a key type left to it)."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and hash_alg is not None:
        ecdsa = ec.ECDSA(hash_alg)
        return lambda data: key.sign(data, ecdsa)
    if isinstance(key, rsa.RSAPrivateKey) and hash_alg is not None:
        pkcs1 = padding.PKCS1v15()
        return lambda data: key.sign(data, pkcs1, hash_alg)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return key.sign
    return None


#: Attribute types RFC 4514 strings name by a short name (cryptography's table), by OID DER.
_SHORT_NAMES = {
    b"\x06\x03\x55\x04\x03": "CN",
    b"\x06\x03\x55\x04\x07": "L",
    b"\x06\x03\x55\x04\x08": "ST",
    b"\x06\x03\x55\x04\x0a": "O",
    b"\x06\x03\x55\x04\x0b": "OU",
    b"\x06\x03\x55\x04\x06": "C",
    b"\x06\x03\x55\x04\x09": "STREET",
    b"\x06\x0a\x09\x92\x26\x89\x93\xf2\x2c\x64\x01\x19": "DC",
    b"\x06\x0a\x09\x92\x26\x89\x93\xf2\x2c\x64\x01\x01": "UID",
}
#: String types whose text is the value's octets as UTF-8 (PrintableString and IA5String are
#: ASCII, a subset).
_TEXT_TYPES = frozenset((0x0C, 0x13, 0x16))
#: PrintableString's characters (X.680 §41.4).
_PRINTABLE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")
#: Characters RFC 4514 (and cryptography's rfc4514_string) would escape anywhere in a value.
_ESCAPED = frozenset('\\"+,;<>\0')


def _simple_rfc4514(name_der: bytes) -> str | None:
    """``x509.Name.rfc4514_string()`` read straight from the Name's DER, for the usual shape
    (one attribute per RDN, a short-named type, a UTF8/Printable/IA5 string needing no
    escapes); None for anything else, and the caller asks cryptography. Making the Python
    ``Name`` objects just to print them cost ~10 µs per issuance."""
    if len(name_der) < 2 or name_der[0] != 0x30 or name_der[1] >= 0x80 or len(name_der) != name_der[1] + 2:
        return None  # also every name longer than 127 octets
    parts: list[str] = []
    pos, end = 2, len(name_der)
    while pos < end:
        # SET (short form) { SEQUENCE (short form) { OID, string } }, exactly one attribute.
        if end - pos < 6 or name_der[pos] != 0x31 or name_der[pos + 2] != 0x30:
            return None
        set_end = pos + 2 + name_der[pos + 1]
        seq_end = pos + 4 + name_der[pos + 3]
        if seq_end != set_end or set_end > end or name_der[pos + 1] >= 0x80 or name_der[pos + 3] >= 0x80:
            return None
        oid_len = name_der[pos + 5] + 2
        short = _SHORT_NAMES.get(name_der[pos + 4 : pos + 4 + oid_len])
        value_at = pos + 4 + oid_len
        if short is None or value_at + 2 > seq_end or name_der[value_at] not in _TEXT_TYPES:
            return None
        if name_der[value_at + 1] >= 0x80 or value_at + 2 + name_der[value_at + 1] != seq_end:
            return None
        value = name_der[value_at + 2 : seq_end]
        kind = name_der[value_at]
        if kind == 0x13:
            if not _PRINTABLE.issuperset(value):
                return None  # not a PrintableString: cryptography's parser decides
        elif kind == 0x16 and not value.isascii():
            return None
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not text or text[0] in "# " or text[-1] == " " or not _ESCAPED.isdisjoint(text):
            return None
        parts.append(f"{short}={text}")
        pos = set_end
    return ",".join(reversed(parts))


def _raw(value: x509.ExtensionType, critical: bool) -> x509.Extension[x509.ExtensionType]:
    """An extension encoded once: the builder copies its bytes instead of re-encoding."""
    encoded = x509.UnrecognizedExtension(value.oid, value.public_bytes())
    return x509.Extension(value.oid, critical, encoded)


def _naive_utc(when: datetime) -> datetime:
    """What the builder's setters would store: naive UTC."""
    return when.astimezone(UTC).replace(tzinfo=None)


def _spki_bit_string(spki: bytes) -> bytes:
    """The subjectPublicKey BIT STRING value (without unused-bits octet) inside an SPKI DER."""
    pos = _skip_header(spki, 0)  # into the outer SEQUENCE
    pos = _skip_tlv(spki, pos)  # past the AlgorithmIdentifier
    if spki[pos] != 0x03:
        raise ValueError("SubjectPublicKeyInfo without a BIT STRING")
    start = _skip_header(spki, pos)
    return spki[start + 1 :]


def _skip_header(der: bytes, pos: int) -> int:
    length = der[pos + 1]
    if length < 0x80:
        return pos + 2
    return pos + 2 + (length & 0x7F)


def _skip_tlv(der: bytes, pos: int) -> int:
    length = der[pos + 1]
    if length < 0x80:
        return pos + 2 + length
    n = length & 0x7F
    return pos + 2 + n + int.from_bytes(der[pos + 2 : pos + 2 + n], "big")


def _ski_extension(spki: bytes) -> x509.Extension[x509.ExtensionType]:
    """SKI by RFC 5280 §4.2.1.2 method 1 (SHA-1 of the key bits), the value OpenSSL computes."""
    digest = hashlib.sha1(_spki_bit_string(spki), usedforsecurity=False).digest()
    return x509.Extension(
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        False,
        x509.UnrecognizedExtension(ExtensionOID.SUBJECT_KEY_IDENTIFIER, b"\x04\x14" + digest),
    )


def _ski_extension_der(spki: bytes) -> bytes:
    """``_ski_extension``'s DER, for the direct encoding."""
    digest = hashlib.sha1(_spki_bit_string(spki), usedforsecurity=False).digest()
    return _SKI_PREFIX + digest


_SKI_PREFIX = b"\x30\x1d\x06\x03\x55\x1d\x0e\x04\x16\x04\x14"  # SEQUENCE { id-ce-subjectKeyIdentifier, OCTET STRING { OCTET STRING (20) } }
#: Where the SKI goes in the extension list of a directly encoded certificate.
_SKI_SLOT = x509.Extension(
    ExtensionOID.SUBJECT_KEY_IDENTIFIER, False, x509.UnrecognizedExtension(ExtensionOID.SUBJECT_KEY_IDENTIFIER, b"")
)


def _default_key_usage(public_key: CertificatePublicKeyTypes) -> x509.KeyUsage:
    return _key_usage_for(type(public_key))


@lru_cache(maxsize=64)
def _key_usage_for(kind: type) -> x509.KeyUsage:
    """By the key's class, cached: each ``isinstance`` against cryptography's ABCs costs ~0.5 µs."""
    if issubclass(kind, rsa.RSAPublicKey):
        return _RSA_KEY_USAGE
    if issubclass(kind, x25519.X25519PublicKey | x448.X448PublicKey):
        return _KEY_AGREEMENT
    return _DIGITAL_SIGNATURE
