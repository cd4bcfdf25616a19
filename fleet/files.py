"""Reading credentials and writing results safely: atomic writes, 0600 for keys, PEM or DER in."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet.cmp.protection import PrivateKey
from fleet.errors import FleetError


class CredentialError(FleetError):
    """A certificate or key file that is missing or unreadable."""


class OutputPathError(FleetError):
    """A file fleet was asked to write cannot be written there."""


def check_output_path(path: Path | str, what: str) -> None:
    """Refuse, before any work is done, an output file that could not be written: a folder, a
    missing or non-folder parent, or a folder fleet cannot create files in (tried for real, so
    read-only mounts, immutable folders and root's permissions are all judged correctly)."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise OutputPathError(f"{what} {str(path)!r} is a folder; give a file name")
    if not parent.exists():
        raise OutputPathError(f"{what} {str(path)!r}: folder {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise OutputPathError(f"{what} {str(path)!r}: {str(parent)!r} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".probe")
    except OSError as exc:
        raise OutputPathError(f"{what} {str(path)!r}: cannot create files in {str(parent)!r}: {exc.strerror}") from None
    os.close(fd)
    os.unlink(probe)


def write_output(path: Path | str, data: bytes, what: str, *, mode: int = 0o644) -> None:
    """``atomic_write`` whose failure is one ``OutputPathError`` line naming the option and path."""
    try:
        atomic_write(path, data, mode=mode)
    except OSError as exc:
        raise OutputPathError(f"cannot write {what} {str(path)!r}: {exc.strerror or exc}") from None


def atomic_write(path: Path | str, data: bytes | Iterable[bytes], *, mode: int = 0o644) -> None:
    """Write via a temporary file in the same folder (created with ``mode``, so a key is never
    readable by others, even for a moment), fsync, rename, fsync the folder: never a torn file.
    ``data`` may be one bytes object or an iterable of chunks."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                for chunk in data:
                    f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: Path | str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CredentialError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None


def load_certificates(path: Path | str) -> list[x509.Certificate]:
    """All certificates in a PEM file (or the one in a DER file)."""
    data = _read(path, "certificate file")
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except (ValueError, x509.InvalidVersion):
        raise CredentialError(f"{str(path)!r} holds no readable certificate") from None
    return certs


def load_certificate(path: Path | str) -> x509.Certificate:
    return load_certificates(path)[0]


def load_private_key(path: Path | str, password: bytes | None = None) -> PrivateKey:
    """The key in a PEM or DER file. A passphrase given for a clear key is ignored, as openssl
    does (a script that always passes one keeps working when keys are stored unencrypted)."""
    data = _read(path, "key file")
    load = serialization.load_pem_private_key if b"-----BEGIN" in data else serialization.load_der_private_key
    try:
        try:
            key = load(data, password)
        except TypeError:
            if password is None:
                raise CredentialError(f"key file {str(path)!r} is encrypted: give its passphrase") from None
            key = load(data, None)  # the passphrase was for a key stored in the clear
    except ValueError:
        raise CredentialError(f"{str(path)!r} holds no readable private key (or the passphrase is wrong)") from None
    return key  # type: ignore[return-value]


def load_csr(path: Path | str) -> x509.CertificateSigningRequest:
    data = _read(path, "CSR file")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise CredentialError(f"{str(path)!r} holds no readable PKCS#10 request") from None


def private_key_pem(key: PrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def write_private_key(path: Path | str, key: PrivateKey, password: bytes | None = None) -> None:
    atomic_write(path, private_key_pem(key, password), mode=0o600)


def certs_pem(certs: Iterable[bytes | x509.Certificate]) -> bytes:
    out = []
    for c in certs:
        cert = x509.load_der_x509_certificate(c) if isinstance(c, bytes) else c
        out.append(cert.public_bytes(serialization.Encoding.PEM))
    return b"".join(out)


def write_certificates(path: Path | str, certs: Iterable[bytes | x509.Certificate]) -> None:
    atomic_write(path, certs_pem(certs))
