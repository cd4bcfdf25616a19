"""Key reuse: a request for a public key this CA has already certified is refused by default.

RFC 9483 §4.1.3 asks a key update for a new key pair, and a CA that certifies one key under two
names or twice under one name makes revocation ambiguous. ``KnownKeys`` answers "was this key
certified?" without an index on the store's random key fingerprints (``fleet.ca.store_schema``
says why there is none): it keeps the first eight octets of every fingerprint in a set, read
from the store at the first request, and asks the store itself (a table read) only when a
prefix matches, which happens for a real reuse and almost never otherwise.

A key counts as certified while a certificate for it is issued (confirmed), on hold, or revoked
for keyCompromise. A certificate not confirmed yet (pending), never confirmed (rejected) or
revoked for another reason does not hold its key: a device that lost its answer or its
transaction may enroll the same key again, as ``fleet provision`` does after a crash with a
request in flight (the unconfirmed certificate it never saw is rejected at its deadline).
"""

from __future__ import annotations

import hashlib

from cryptography import x509

from fleet.ca.store import CertRecordStatus, CertStore

__all__ = ["KnownKeys", "spki_fingerprint"]


def spki_fingerprint(spki: bytes) -> bytes:
    return hashlib.sha256(spki).digest()


class KnownKeys:
    """Fingerprints of the keys certified by ``store`` (module doc)."""

    def __init__(self, store: CertStore) -> None:
        self._store = store
        self._prefixes: set[bytes] | None = None

    def certified(self, fingerprint: bytes) -> bool:
        """Whether a certificate that holds the key of ``fingerprint`` exists (module doc)."""
        prefixes = self._prefixes
        if prefixes is None:
            prefixes = self._prefixes = {fp[:8] for fp in self._store.key_fingerprints()}
        if fingerprint[:8] not in prefixes:
            return False
        return any(_holds_key(rec.status, rec.revocation_reason) for rec in self._store.find_by_key(fingerprint))

    def add(self, fingerprint: bytes) -> None:
        if self._prefixes is not None:
            self._prefixes.add(fingerprint[:8])


def _holds_key(status: CertRecordStatus, reason: x509.ReasonFlags | None) -> bool:
    if status is CertRecordStatus.ISSUED:
        return True
    return status is CertRecordStatus.REVOKED and reason in _HOLDING_REASONS


_HOLDING_REASONS = frozenset({x509.ReasonFlags.key_compromise, x509.ReasonFlags.certificate_hold})
