"""The embedded CA's certificate hierarchy: root CA, issuing CA and CMP protection (RA) signer.

``CaHierarchy.load_or_create`` makes the three once in a state directory (keys first, then
certificates, under an ``fcntl`` lock so two processes started on one directory make one
hierarchy) and reloads them on every start, so a restart serves the same PKI. Operators who
bring their own credentials use ``CaHierarchy.from_files``. Either way each key is checked
against its certificate and the chain against itself before anything is served.

The DER the CMP layer puts on every response (the CA certificates and chains) is encoded once
here and cached.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID, ObjectIdentifier

from fleet.cmp.protection import subject_key_id
from fleet.errors import FleetError
from fleet.files import atomic_write
from fleet.keytypes import KeySpec, KeySpecError

__all__ = [
    "BACKDATE",
    "CA_VALIDITY",
    "DIGITAL_SIGNATURE",
    "ID_KP_CMC_RA",
    "STATE_FILES",
    "CaHierarchy",
    "HierarchyError",
    "HierarchyFiles",
    "build_ca_cert",
    "key_usage",
    "settle_rollover_locked",
    "signature_hash_for",
    "state_lock",
]

#: id-kp-cmcRA (RFC 6402): marks the certificate the CA/RA uses to protect CMP responses.
ID_KP_CMC_RA = ObjectIdentifier("1.3.6.1.5.5.7.3.28")
#: Validity of the hierarchy's own certificates.
CA_VALIDITY = timedelta(days=3650)
#: Certificates start this far in the past so devices with a slightly slow clock accept them.
BACKDATE = timedelta(minutes=5)

_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


class HierarchyError(FleetError):
    """The CA hierarchy on disk or handed in by an operator is unusable."""


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


def _public_keys_equal(a: CertificatePublicKeyTypes, b: CertificatePublicKeyTypes) -> bool:
    return a.public_bytes(_DER, _SPKI) == b.public_bytes(_DER, _SPKI)


@dataclass(frozen=True)
class HierarchyFiles:
    """Where the hierarchy's PEM files live (``None`` for credentials handed in as objects)."""

    root_cert: Path | None = None
    root_key: Path | None = None
    issuing_cert: Path | None = None
    issuing_key: Path | None = None
    signer_cert: Path | None = None
    signer_key: Path | None = None


STATE_FILES = {
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
        paths = {k: state_dir / v for k, v in STATE_FILES.items()}
        files = HierarchyFiles(**paths)
        with state_lock(state_dir):
            settle_rollover_locked(state_dir)  # a due or cut-short root key switch completes first
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
    def load_locked(cls, state_dir: Path) -> CaHierarchy:
        """The complete hierarchy in ``state_dir``, for a caller holding ``state_lock`` on it."""
        return cls._load(HierarchyFiles(**{k: Path(state_dir) / v for k, v in STATE_FILES.items()}))

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

        root = build_ca_cert(
            subject=root_name,
            public_key=root_key.public_key(),
            issuer=None,
            issuer_key=root_key,
            not_before=now - BACKDATE,
            not_after=now + CA_VALIDITY,
            path_length=None,
        )
        issuing = build_ca_cert(
            subject=issuing_name,
            public_key=issuing_key.public_key(),
            issuer=root,
            issuer_key=root_key,
            not_before=now - BACKDATE,
            not_after=root.not_valid_after_utc,
            path_length=0,
        )
        signer = _build_signer_cert(
            subject=signer_name,
            public_key=signer_key.public_key(),
            issuer=issuing,
            issuer_key=issuing_key,
            not_before=now - BACKDATE,
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
        atomic_write(
            files.issuing_cert, issuing.public_bytes(serialization.Encoding.PEM), mode=0o644
        )
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


def build_ca_cert(
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
        .add_extension(DIGITAL_SIGNATURE, critical=True)
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


def key_usage(**flags: bool) -> x509.KeyUsage:
    """A KeyUsage with the named bits set and every other one clear."""
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


_CA_KEY_USAGE = key_usage(key_cert_sign=True, crl_sign=True)
#: digitalSignature alone: the CMP signer's keyUsage and the default of an issued signing key
#: (the issuer tells it apart by identity).
DIGITAL_SIGNATURE = key_usage(digital_signature=True)


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Serialise changes to a state dir's hierarchy (creation, key rollover) between processes.
    Not re-entrant: a process holding it must not take it again (``flock`` on a second open
    file would wait for itself)."""
    fd = os.open(Path(state_dir) / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
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
        ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
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


# -- the switch of a root key rollover (``fleet.ca.rollover`` makes and commits the update) ------

#: The committed update: {"id", "switch_at", "switched"}, one atomic write (``fleet.ca.rollover``).
ROLLOVER_POINTER = "root-update.json"
#: Where each update's files are staged, one folder per id.
ROLLOVER_STAGED = "root-updates"
ROLLOVER_FILES = {
    "new_key": "new-root.key.pem",
    "new_with_new": "newwithnew.pem",
    "new_with_old": "newwithold.pem",
    "old_with_new": "oldwithnew.pem",
    "old_root": "oldwithold.pem",
    "issuing": "issuing-ca.pem",
}
#: Test hook: a process whose environment names a step (``staged``, ``committed``, ``root-key``,
#: ``root-cert``, ``issuing-cert``, ``switched``) kills itself right after it (crash tests).
ROLLOVER_KILL_AT = "FLEET_ROLLOVER_KILL_AT"


def rollover_step(name: str) -> None:
    """The crash tests' hook (``ROLLOVER_KILL_AT``)."""
    if os.environ.get(ROLLOVER_KILL_AT) == name:
        os.kill(os.getpid(), 9)


def read_rollover_pointer(state_dir: Path) -> tuple[str, float, bool] | None:
    """(id, switch time, switched) of the committed root key update, None without one."""
    pointer = Path(state_dir) / ROLLOVER_POINTER
    try:
        record = json.loads(pointer.read_text())
        return str(record["id"]), float(record["switch_at"]), bool(record["switched"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HierarchyError(f"cannot read {pointer}: {exc}") from None


def write_rollover_pointer(state_dir: Path, ident: str, switch_at: float, *, switched: bool) -> None:
    text = json.dumps({"id": ident, "switch_at": switch_at, "switched": switched}, sort_keys=True) + "\n"
    atomic_write(Path(state_dir) / ROLLOVER_POINTER, text.encode(), mode=0o644)


def settle_rollover_locked(state_dir: Path, now: float | None = None) -> bool:
    """Finish a committed root key switch that is due or was started: copy the new root key,
    root certificate and issuing CA certificate over the live files (one atomic write each),
    then mark the pointer switched. Idempotent, so a switch cut short by a crash is finished by
    the next load and no loader sees a mixed directory. The caller holds ``state_lock``; True
    when it switched."""
    state_dir = Path(state_dir)
    pointer = read_rollover_pointer(state_dir)
    if pointer is None or pointer[2]:
        return False
    ident, switch_at, _ = pointer
    folder = state_dir / ROLLOVER_STAGED / ident
    staged = {}
    for name in ("new_key", "new_with_new", "issuing"):
        try:
            staged[name] = (folder / ROLLOVER_FILES[name]).read_bytes()
        except OSError as exc:
            raise HierarchyError(f"root key update {ident}: cannot read {ROLLOVER_FILES[name]}: {exc.strerror}") from None
    now = time.time() if now is None else now
    if switch_at > now and not _switch_started(state_dir, staged):
        return False
    atomic_write(state_dir / STATE_FILES["root_key"], staged["new_key"], mode=0o600)
    rollover_step("root-key")
    atomic_write(state_dir / STATE_FILES["root_cert"], staged["new_with_new"])
    rollover_step("root-cert")
    atomic_write(state_dir / STATE_FILES["issuing_cert"], staged["issuing"])
    rollover_step("issuing-cert")
    write_rollover_pointer(state_dir, ident, switch_at, switched=True)
    rollover_step("switched")
    return True


def _switch_started(state_dir: Path, staged: dict[str, bytes]) -> bool:
    live = {}
    for name, file in (("new_key", "root_key"), ("new_with_new", "root_cert"), ("issuing", "issuing_cert")):
        try:
            live[name] = (state_dir / STATE_FILES[file]).read_bytes()
        except FileNotFoundError:
            return True  # only a switch cut short leaves a live file missing next to a pointer
        except OSError as exc:
            raise HierarchyError(f"cannot read {state_dir / STATE_FILES[file]}: {exc.strerror}") from None
    return any(live[name] == staged[name] for name in staged)
