"""What the certificate store holds and how SQLite holds it: the record of a certificate and its
status, the tables, the view external readers use, the statements the store runs, the steps
that bring a database of an earlier layout to this one, and the conversion between records and
rows (serials as ``serial_hex`` text, times as whole seconds).

Layout: a certificate's row in ``certificates`` is written once. A later status change of a row
already in the database goes to ``status_changes`` (one small row per certificate, keyed by its
``id``), which overrides the row's status, revocation reason and time; the view
``certificates_now`` shows each certificate as it stands, and external readers should use it.
Rewriting the ~700-byte row instead (pending -> issued for every certConf) cost about twice as
much per flush. There is no index on the key fingerprint either: random keys put every new row
on a different index page, so each flush wrote one extra page per issuance; ``find_by_key``
reads the table instead. ``replaced_certificates`` lists the certificates a confirmed key update
(kur) replaced: the serial, the serial of the certificate that replaced it, and when.

Earlier layouts are used as they are. A database whose statuses live only in ``certificates``,
with an index on the key fingerprint, loses that index on open, and the view finds no
overrides. Older versions of fleet would not see the overrides: ``PRAGMA user_version`` is 2
from that layout on, and 3 once ``certificates`` has the ``confirm_deadline`` column (added on
open, NULL for the rows written before it: those are rejected at the next start like any
pending one). ``replaced_certificates`` was first kept by ``fleet.ca.authority`` through a
connection of its own, in the same file and with the same columns; a database that has it is
the store's as it stands, and one that lacks it gets it empty. ``central_keys`` (added without
a layout change: older databases get it empty on open) marks the certificates whose key the CA
generated, with the key type and the delivery, never the key.
"""

from __future__ import annotations

import enum
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

__all__ = [
    "CENTRAL_KEY",
    "CENTRAL_KEY_OF",
    "CHANGE",
    "COLUMNS",
    "DEAD_ROWS",
    "INSERT",
    "LAYOUT",
    "REPLACED_BY",
    "REPLACEMENT",
    "CertRecord",
    "CertRecordStatus",
    "from_row",
    "seconds",
    "serial_hex",
    "to_current_layout",
    "to_row",
    "utc",
]


class CertRecordStatus(enum.StrEnum):
    """Lifecycle of an issued certificate.

    pending -> issued (certConf accepted) | rejected (certConf rejected, or never came);
    pending | issued -> revoked; revoked with reason certificateHold -> issued (removeFromCRL).
    Rejected certificates were signed and sent, so CRL and OCSP treat them as revoked. A pending
    certificate is not good yet: OCSP answers it as on hold (``fleet.ca.revocation``).
    """

    PENDING = "pending"
    ISSUED = "issued"
    REVOKED = "revoked"
    REJECTED = "rejected"


def serial_hex(serial: int) -> str:
    """Canonical text of a serial: upper-case hex, even length (as ``openssl x509 -serial``)."""
    text = format(serial, "X")
    return text if len(text) % 2 == 0 else "0" + text


@dataclass(frozen=True)
class CertRecord:
    """One row of the certificate table. Times are timezone-aware UTC, whole seconds."""

    serial: int
    subject: str
    device_ref: str | None
    key_fingerprint: bytes
    not_before: datetime
    not_after: datetime
    status: CertRecordStatus
    revocation_reason: x509.ReasonFlags | None
    revocation_time: datetime | None
    transaction_id: bytes | None
    created: datetime
    der: bytes
    # A pending certificate's certConf deadline (confirmWaitTime, rounded up to the second);
    # None when confirmed implicitly, or recorded before the store kept deadlines.
    confirm_deadline: datetime | None = None

    def __repr__(self) -> str:
        return (
            f"CertRecord(serial={serial_hex(self.serial)}, subject={self.subject!r}, "
            f"status={self.status})"
        )



_SCHEMA = """
CREATE TABLE IF NOT EXISTS certificates (
    id INTEGER PRIMARY KEY,
    serial TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    device_ref TEXT,
    key_sha256 BLOB NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'issued', 'revoked', 'rejected')),
    revocation_reason TEXT,
    revocation_time INTEGER,
    transaction_id TEXT,
    created INTEGER NOT NULL,
    der BLOB NOT NULL,
    confirm_deadline INTEGER
);
DROP INDEX IF EXISTS certificates_key;
CREATE INDEX IF NOT EXISTS certificates_dead ON certificates (status)
    WHERE status IN ('revoked', 'rejected');
CREATE TABLE IF NOT EXISTS status_changes (
    id INTEGER PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending', 'issued', 'revoked', 'rejected')),
    revocation_reason TEXT,
    revocation_time INTEGER
);
CREATE INDEX IF NOT EXISTS status_changes_dead ON status_changes (status)
    WHERE status IN ('revoked', 'rejected');
CREATE TABLE IF NOT EXISTS replaced_certificates (
    serial TEXT PRIMARY KEY, by_serial TEXT NOT NULL, replaced_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS central_keys (
    serial TEXT PRIMARY KEY,
    key_type TEXT NOT NULL,
    delivery TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
LAYOUT = 3  # PRAGMA user_version of this layout (module doc)
# Brings a database of layout 1 or 2 to this one: the deadline column, and the view with it.
_MIGRATE = """
BEGIN;
{add_column}
DROP VIEW IF EXISTS certificates_now;
CREATE VIEW certificates_now AS
SELECT c.id, c.serial, c.subject, c.device_ref, c.key_sha256, c.not_before, c.not_after,
    CASE WHEN s.id IS NULL THEN c.status ELSE s.status END AS status,
    CASE WHEN s.id IS NULL THEN c.revocation_reason ELSE s.revocation_reason END AS revocation_reason,
    CASE WHEN s.id IS NULL THEN c.revocation_time ELSE s.revocation_time END AS revocation_time,
    c.transaction_id, c.created, c.der, c.confirm_deadline
FROM certificates AS c LEFT JOIN status_changes AS s ON s.id = c.id;
PRAGMA user_version = 3;
COMMIT;
"""

COLUMNS = (
    "serial, subject, device_ref, key_sha256, not_before, not_after, status, "
    "revocation_reason, revocation_time, transaction_id, created, der, confirm_deadline"
)
INSERT = f"INSERT INTO certificates ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
# A status change of a row already in ``certificates``: a small row of its own (module doc).
CHANGE = (
    "INSERT OR REPLACE INTO status_changes (id, status, revocation_reason, revocation_time) "
    "SELECT id, ?, ?, ? FROM certificates WHERE serial = ?"
)
# Revoked and rejected certificates, each by its partial index.
DEAD_ROWS = (
    "SELECT c.serial, s.revocation_time, s.revocation_reason FROM status_changes AS s "
    "JOIN certificates AS c ON c.id = s.id WHERE s.status IN ('revoked', 'rejected') "
    "UNION ALL "
    "SELECT c.serial, c.revocation_time, c.revocation_reason FROM certificates AS c "
    "WHERE c.status IN ('revoked', 'rejected') "
    "AND NOT EXISTS (SELECT 1 FROM status_changes AS s WHERE s.id = c.id)"
)
# A certificate replaced by a confirmed kur: (serial, by_serial, replaced_at); the first one stands.
REPLACEMENT = "INSERT OR IGNORE INTO replaced_certificates (serial, by_serial, replaced_at) VALUES (?, ?, ?)"
REPLACED_BY = "SELECT by_serial FROM replaced_certificates WHERE serial = ?"
# A certificate whose key the CA generated (central key generation): its type and how it was
# delivered (pwri, kari, ktri). Never the key itself.
CENTRAL_KEY = "INSERT OR IGNORE INTO central_keys (serial, key_type, delivery) VALUES (?, ?, ?)"
CENTRAL_KEY_OF = "SELECT key_type, delivery FROM central_keys WHERE serial = ?"


def to_current_layout(db: sqlite3.Connection) -> None:
    """Create the tables, or bring a database of an earlier layout to this one (module doc)."""
    db.executescript(_SCHEMA)
    (layout,) = db.execute("PRAGMA user_version").fetchone()
    if layout >= LAYOUT:
        return
    columns = {row[1] for row in db.execute("PRAGMA table_info(certificates)")}
    add = "" if "confirm_deadline" in columns else "ALTER TABLE certificates ADD COLUMN confirm_deadline INTEGER;"
    try:
        db.executescript(_MIGRATE.format(add_column=add))
    except sqlite3.Error:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def seconds(when: datetime) -> int:
    """A time as the tables hold it: whole seconds since the epoch."""
    return int(when.timestamp())


def utc(ts: int) -> datetime:
    """A time the tables hold, as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC)


def to_row(rec: CertRecord) -> tuple[object, ...]:
    """A record as the values of ``COLUMNS``."""
    return (
        serial_hex(rec.serial),
        rec.subject,
        rec.device_ref,
        rec.key_fingerprint,
        seconds(rec.not_before),
        seconds(rec.not_after),
        rec.status._value_,
        rec.revocation_reason.value if rec.revocation_reason else None,
        seconds(rec.revocation_time) if rec.revocation_time else None,
        rec.transaction_id.hex() if rec.transaction_id is not None else None,
        seconds(rec.created),
        rec.der,
        seconds(rec.confirm_deadline) if rec.confirm_deadline else None,
    )


def from_row(row: tuple[Any, ...]) -> CertRecord:
    """A row of ``COLUMNS`` (from ``certificates_now``) as a record."""
    (serial, subject, device_ref, key, nb, na, status, reason, rtime, tid, created, der, deadline) = row
    return CertRecord(
        serial=int(serial, 16),
        subject=subject,
        device_ref=device_ref,
        key_fingerprint=bytes(key),
        not_before=utc(nb),
        not_after=utc(na),
        status=CertRecordStatus(status),
        revocation_reason=x509.ReasonFlags(reason) if reason else None,
        revocation_time=None if rtime is None else utc(rtime),
        transaction_id=None if tid is None else bytes.fromhex(tid),
        created=utc(created),
        der=bytes(der),
        confirm_deadline=None if deadline is None else utc(deadline),
    )
