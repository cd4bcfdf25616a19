"""Root CA key rollover (RFC 9810 §4.4, RFC 9483 §4.3.2): ``fleet ca rollover``.

``prepare`` makes a new root key and the three certificates of the update: newWithNew (the new
root, self-signed), newWithOld (the new key certified by the old one) and oldWithNew (the old
key certified by the new one), plus the issuing CA re-certified under the new key. It schedules
the switch (``switch_at``): until then the CA issues as before and offers the update (genm
rootCaCert, caKeyUpdateInfo, a pushed ckuann) so devices can trust the new root in advance; from
then on the new key is the root of everything the CA serves.

Crash safety: a kill at any point leaves either the old or the new hierarchy usable.

* Staging writes the new files into a temporary folder, fsyncs them, and renames the folder
  into ``root-updates/<id>`` (a crash before the rename leaves a temporary folder nobody reads).
* Committing is one atomic write of the pointer file ``root-update.json`` (id, switch time,
  state): before it the update does not exist, after it the update is decided.
* Switching copies the new root key, root certificate and issuing CA certificate over the live
  files one atomic write at a time, then marks the pointer "switched". A crash in between leaves
  the pointer "pending" with some files new: ``fleet.ca.hierarchy.settle_rollover_locked``
  (run by every load under the state lock) finishes a switch that is due or was started, so no loader sees a mixed directory.

A running ``fleet ca serve`` notices a new pointer and a due switch in its tick
(``RolloverWatch``), and adopts the new hierarchy live. Root-only: the issuing CA keeps its key
and the CMP signer its certificate (issued by the issuing CA, whose key did not change).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from fleet.ca.hierarchy import (
    BACKDATE,
    CA_VALIDITY,
    ROLLOVER_FILES,
    ROLLOVER_POINTER,
    ROLLOVER_STAGED,
    STATE_FILES,
    CaHierarchy,
    HierarchyError,
    build_ca_cert,
    read_rollover_pointer,
    rollover_step,
    settle_rollover_locked,
    state_lock,
    write_rollover_pointer,
)
from fleet.cmp.announce import KeyUpdateAnnouncement
from fleet.cmp.genm import RootCaKeyUpdate
from fleet.files import atomic_write

__all__ = ["POINTER", "RolloverError", "RolloverWatch", "RootUpdate", "prepare", "read_update", "settle_locked"]

POINTER = ROLLOVER_POINTER
STAGED = ROLLOVER_STAGED
_FILES = ROLLOVER_FILES
_PEM = serialization.Encoding.PEM
_DER = serialization.Encoding.DER


class RolloverError(HierarchyError):
    """A rollover that cannot be made (no root key here, one already pending, bad time)."""


@dataclass(frozen=True, eq=False)
class RootUpdate:
    """One root key update as committed in a state dir (module doc)."""

    ident: str
    old_root: x509.Certificate  # oldWithOld
    new_with_new: x509.Certificate
    new_with_old: x509.Certificate
    old_with_new: x509.Certificate
    issuing: x509.Certificate  # the issuing CA under the new root
    switch_at: float
    switched: bool

    def genm_value(self) -> RootCaKeyUpdate:
        """The rootCaKeyUpdate answer to a genm rootCaCert (RFC 9483 §4.3.2)."""
        return RootCaKeyUpdate(_der(self.new_with_new), _der(self.new_with_old), _der(self.old_with_new))

    def announcement(self) -> KeyUpdateAnnouncement:
        """The ckuann content (RFC 9810 §5.3.13)."""
        return KeyUpdateAnnouncement(_der(self.old_with_new), _der(self.new_with_old), _der(self.new_with_new))

    def offers_update_for(self, old_root_der: bytes | None) -> bool:
        """Whether a device that trusts ``old_root_der`` (None: did not say) gets this update."""
        return old_root_der is None or old_root_der == _der(self.old_root)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(_DER)


def _same_kind(key: CertificateIssuerPrivateKeyTypes) -> CertificateIssuerPrivateKeyTypes:
    """A new key of the old root key's type and size."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(key.curve)
    if isinstance(key, rsa.RSAPrivateKey):
        return rsa.generate_private_key(65537, key.key_size)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return ed25519.Ed25519PrivateKey.generate()
    if isinstance(key, ed448.Ed448PrivateKey):
        return ed448.Ed448PrivateKey.generate()
    raise RolloverError(f"cannot roll over a root key of type {type(key).__name__}")


def prepare(state_dir: Path, *, switch_at: float | None = None, now: float | None = None) -> RootUpdate:
    """Make, stage and commit a root key update; switch at once unless ``switch_at`` is later."""
    now = time.time() if now is None else now
    switch_at = now if switch_at is None else switch_at
    state_dir = Path(state_dir)
    if not (state_dir / STATE_FILES["root_key"]).exists():
        raise RolloverError(f"{state_dir} holds no CA made by fleet ca serve (no {STATE_FILES['root_key']})")
    with state_lock(state_dir):
        current = settle_locked(state_dir, now)
        if current is not None and not current.switched:
            when = datetime.fromtimestamp(current.switch_at, UTC).isoformat(timespec="seconds")
            raise RolloverError(f"a root key rollover is already pending in {state_dir} (switch at {when})")
        hierarchy = CaHierarchy.load_locked(state_dir)
        assert hierarchy.root_key is not None
        ident = _stage(state_dir, hierarchy, now)
        rollover_step("staged")
        write_rollover_pointer(state_dir, ident, switch_at, switched=False)
        rollover_step("committed")
        settle_rollover_locked(state_dir, now)  # switches now unless switch_at is later
        update = read_update(state_dir)
        assert update is not None
        return update


def _stage(state_dir: Path, h: CaHierarchy, now_seconds: float) -> str:
    """Write the update's files into ``root-updates/<id>`` (temporary folder, then rename)."""
    old_root, old_key = h.root, h.root_key
    assert old_key is not None
    new_key = _same_kind(old_key)
    now = datetime.fromtimestamp(now_seconds, UTC).replace(microsecond=0)
    start = now - BACKDATE
    new_with_new = build_ca_cert(subject=old_root.subject, public_key=new_key.public_key(), issuer=None,
                                 issuer_key=new_key, not_before=start, not_after=now + CA_VALIDITY, path_length=None)
    old_end = old_root.not_valid_after_utc
    new_with_old = build_ca_cert(subject=old_root.subject, public_key=new_key.public_key(), issuer=old_root,
                                 issuer_key=old_key, not_before=start, not_after=old_end, path_length=None)
    old_with_new = build_ca_cert(subject=old_root.subject, public_key=old_root.public_key(), issuer=new_with_new,
                                 issuer_key=new_key, not_before=start, not_after=old_end, path_length=None)
    issuing = build_ca_cert(subject=h.issuing.subject, public_key=h.issuing.public_key(), issuer=new_with_new,
                            issuer_key=new_key, not_before=start, not_after=new_with_new.not_valid_after_utc,
                            path_length=0)
    ident = f"{int(now_seconds)}-{new_with_new.serial_number:x}"[:40]
    staged = state_dir / STAGED
    staged.mkdir(mode=0o700, exist_ok=True)
    for leftover in staged.glob(".*.tmp"):  # an earlier rollover cut short before its rename
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=staged, prefix=f".{ident}.", suffix=".tmp"))
    key_pem = new_key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    contents = {"new_key": key_pem, "new_with_new": new_with_new.public_bytes(_PEM),
                "new_with_old": new_with_old.public_bytes(_PEM), "old_with_new": old_with_new.public_bytes(_PEM),
                "old_root": old_root.public_bytes(_PEM), "issuing": issuing.public_bytes(_PEM)}
    for name, data in contents.items():
        atomic_write(tmp / _FILES[name], data, mode=0o600 if name == "new_key" else 0o644)
    os.rename(tmp, staged / ident)
    _fsync_dir(staged)
    return ident


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_update(state_dir: Path) -> RootUpdate | None:
    """The committed root key update of ``state_dir``, or None when there never was one."""
    state_dir = Path(state_dir)
    pointer = read_rollover_pointer(state_dir)
    if pointer is None:
        return None
    ident, switch_at, switched = pointer
    folder = state_dir / STAGED / ident
    certs = {}
    for name in ("old_root", "new_with_new", "new_with_old", "old_with_new", "issuing"):
        path = folder / _FILES[name]
        try:
            certs[name] = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise HierarchyError(f"root key update {ident}: cannot read {path}: {exc}") from None
    return RootUpdate(ident, switch_at=switch_at, switched=switched, **certs)


def settle_locked(state_dir: Path, now: float | None = None) -> RootUpdate | None:
    """Finish a committed switch that is due or was started (module doc); the update, if any.
    The caller holds ``state_lock``."""
    settle_rollover_locked(state_dir, now)
    return read_update(state_dir)


@dataclass(frozen=True)
class RolloverChange:
    """What ``RolloverWatch.poll`` saw: an update new to this process, a switch now live."""

    update: RootUpdate
    new: bool
    switched: bool
    hierarchy: CaHierarchy | None  # the new hierarchy, loaded, once switched


class RolloverWatch:
    """A serving CA's view of its state dir's root key update, polled by the service tick.

    Cheap when nothing happens: one ``stat`` of the pointer file, and a clock comparison while a
    switch is pending."""

    def __init__(self, state_dir: Path, update: RootUpdate | None, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = Path(state_dir)
        self.update = update
        self.clock = clock
        self._stat = self._signature()

    def _signature(self) -> tuple[int, int] | None:
        try:
            st = (self.state_dir / POINTER).stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_ino

    def poll(self) -> RolloverChange | None:
        """The change since the last poll, or None."""
        before = self.update
        due = before is not None and not before.switched and before.switch_at <= self.clock()
        if self._signature() == self._stat and not due:
            return None
        update = read_update(self.state_dir)
        if update is not None and not update.switched and update.switch_at <= self.clock():
            with state_lock(self.state_dir):
                update = settle_locked(self.state_dir, self.clock())
        self._stat = self._signature()
        if update is None:
            return None
        self.update = update
        new = before is None or before.ident != update.ident
        switched = update.switched and (new or not before.switched)  # type: ignore[union-attr]
        if not new and not switched:
            return None
        return RolloverChange(update, new, switched, CaHierarchy.load_or_create(self.state_dir) if switched else None)
