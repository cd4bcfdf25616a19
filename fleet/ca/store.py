"""Durable records of every certificate the embedded CA issued (SQLite in WAL mode).

Writes are batched: ``record_issued``, ``confirm``, ``reject`` and ``revoke`` change an in-memory
overlay at once (every read sees them immediately) and reach the database in one transaction
when the batch holds ``max_batch`` changes, when the oldest change is ``max_delay`` seconds old
(checked on the next write, and by ``run_flusher``), on ``flush()`` and ``durable()``, and on
``close()``.

Durability, stated plainly:

* A change is durable against a killed process (kill -9, crash) once ``flush()`` has returned:
  the transaction is committed in the WAL, which survives the process. With
  ``synchronous=NORMAL`` a power loss or OS crash may still roll back the last commits since
  the previous WAL checkpoint; the database stays consistent, but this contract covers a dead
  process, not a dead machine.
* Until then a kill -9 loses at most the unflushed batch: at most ``max_batch`` changes, or
  ``max_delay`` seconds of them when ``run_flusher`` runs.
* The contract with the CA service: it awaits ``durable()`` before it sends any answer, so a
  kill -9 loses only changes nobody was told about. An ip/cp/kup never leaves before its
  'pending' record is durable (a certificate the records lost could never be rejected or
  revoked: OCSP would call it unknown and no CRL would list it), a pkiConf never before the
  confirmation (and the replacement of the certificate a kur updated, ``record_replacement``),
  an rp never before the revocation. ``durable()`` groups commits: every answer
  made in the same trio scheduling round shares one transaction.
* Unconfirmed certificates: a 'pending' record keeps the deadline its certConf must meet
  (``confirm_deadline``, from confirmWaitTime). ``expire_pending`` rejects those past it that
  no live transaction is settling (the service's tick); ``reject_unconfirmed`` rejects every
  pending certificate, which the service does at start, because the transactions that could
  still confirm them died with the previous process. So a crash never leaves behind a
  certificate that is unconfirmed, past its deadline and not listed as revoked.

Serials: ``allocate_serial`` hands out serials that are unique by construction, so
``record_issued`` needs no database look-up for them and the serial index grows at its end:
a run number, taken durably from the ``meta`` table before the first serial of a process is
used (so a crash never lets a later run reuse a serial already sent), then a counter, then 64
random bits (the CA/Browser Forum's minimum of CSPRNG output). A run whose range already holds
a row (a random serial of an older version, an import) is skipped. Any other serial is looked
up as before, and one inside the current run's range that was not allocated is refused.

Layout: ``fleet.ca.store_schema`` (tables, the ``certificates_now`` view external readers should
use, and how a database of an earlier layout is brought to this one).

Threading: every method is synchronous and runs in the caller's thread; the store is meant for
one trio thread (the CA's event loop) and uses no ``trio.to_thread``. A flush blocks that thread
for the length of one SQLite transaction (bench/README.md gives a measured length). One process
owns a database file: the status counters and the duplicate-serial check assume no other writer.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, Self

import trio
from cryptography import x509

from fleet.ca.store_schema import (
    CENTRAL_KEY,
    CENTRAL_KEY_OF,
    CHANGE,
    COLUMNS,
    DEAD_ROWS,
    INSERT,
    REPLACED_BY,
    REPLACEMENT,
    CertRecord,
    CertRecordStatus,
    from_row,
    seconds,
    serial_hex,
    to_current_layout,
    to_row,
    utc,
)
from fleet.errors import FleetError
from fleet.randomness import RandomPool

__all__ = [
    "CertRecord",
    "CertRecordStatus",
    "CertStore",
    "CertificateAlreadyRevoked",
    "InvalidStatusChange",
    "Recordable",
    "SerialCollision",
    "StoreError",
    "StoreStatistics",
    "UnknownCertificate",
    "serial_hex",
]


class StoreError(FleetError):
    """The certificate database cannot be used."""


class UnknownCertificate(StoreError):
    """No certificate with this serial was issued by this CA (CMP: badCertId)."""


class CertificateAlreadyRevoked(StoreError):
    """The certificate is revoked or rejected already (CMP: certRevoked)."""


class InvalidStatusChange(StoreError):
    """The requested status change is not allowed from the certificate's current status."""


class SerialCollision(StoreError):
    """A serial number was recorded twice; the issuer must draw a new one."""


_DEAD = (CertRecordStatus.REVOKED, CertRecordStatus.REJECTED)
# Members as plain module names: ``CertRecordStatus.PENDING`` goes through enum's class descriptor,
# and the store reads them several times per issuance and per certConf.
_PENDING = CertRecordStatus.PENDING
_ISSUED = CertRecordStatus.ISSUED
_SECOND = timedelta(seconds=1)


# allocate_serial's layout (158 bits, so DER needs 20 octets at most and the text is always
# 40 hex digits): 1 | run (29 bits) | counter (64 bits) | random (64 bits).
_RUN_BITS = 29
_RUN_SHIFT = 128
_COUNTER_SHIFT = 64
_MAX_RUN = (1 << _RUN_BITS) - 1


class Recordable(Protocol):
    """What ``record_issued`` needs; ``fleet.ca.pki.IssuedCert`` provides it."""

    @property
    def der(self) -> bytes: ...
    @property
    def serial(self) -> int: ...
    @property
    def subject(self) -> str: ...
    @property
    def not_before(self) -> datetime: ...
    @property
    def not_after(self) -> datetime: ...
    @property
    def key_fingerprint(self) -> bytes: ...


@dataclass(frozen=True)
class StoreStatistics:
    """Counters for metrics: changes waiting, flushes done, rows written, last flush time."""

    unflushed: int
    flushes: int
    changes_flushed: int
    last_flush_seconds: float


_RECORD_FIELDS = frozenset(f.name for f in fields(CertRecord))


def _new_record(values: dict[str, Any]) -> CertRecord:
    """``CertRecord(**values)`` without the frozen dataclass's per-field ``object.__setattr__``
    (a record is made per issuance and again per certConf)."""
    rec = object.__new__(CertRecord)
    rec.__dict__.update(values)
    return rec


def _changed(rec: CertRecord, **changes: Any) -> CertRecord:
    """``dataclasses.replace(rec, **changes)`` for the hot status changes (confirm), at a fifth
    of its cost; only known fields may change."""
    if not _RECORD_FIELDS.issuperset(changes):
        raise TypeError(f"CertRecord has no field {min(set(changes) - _RECORD_FIELDS)}")
    values = dict(rec.__dict__)
    values.update(changes)
    return _new_record(values)


_whole_now: tuple[int, datetime] = (-1, datetime.fromtimestamp(0, UTC))


def _now_whole() -> datetime:
    """``datetime.now(UTC).replace(microsecond=0)``, made once per second."""
    global _whole_now
    second = int(time.time())
    if _whole_now[0] != second:
        _whole_now = (second, datetime.fromtimestamp(second, UTC))
    return _whole_now[1]


class CertStore:
    """Issued-certificate records with batched, explicitly flushed writes (see module doc)."""

    def __init__(self, path: Path | str, *, max_batch: int = 512, max_delay: float = 0.05) -> None:
        if max_batch < 1 or max_delay <= 0:
            raise StoreError("certificate store batch size and delay must be positive")
        self.path = Path(path)
        self.max_batch = max_batch
        self.max_delay = max_delay
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            to_current_layout(self._db)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open certificate store {self.path}: {exc}") from None
        # Unflushed changes: new rows, and status changes of rows already in the database.
        self._new: dict[int, CertRecord] = {}
        self._changed: dict[int, CertRecord] = {}
        # Unflushed replacements: serial -> (serial of the certificate that replaced it, when).
        self._replacements: dict[int, tuple[int, datetime]] = {}
        self._central: dict[int, tuple[str, str]] = {}  # serial -> (key type, delivery), unflushed
        # Records issued by this process and still 'pending', flushed or not: the certConf that
        # settles each one finds it here instead of reading the row back. Entries leave on any
        # status change, and the CMP layer rejects what is not confirmed in time, so this holds
        # about as many records as there are transactions awaiting a certConf.
        self._pending: dict[int, CertRecord] = {}
        self._oldest_change: float | None = None
        # Changes made and changes durable, counted: ``durable()`` waits for the one to reach
        # the other.
        self._seq = 0
        self._flushed_seq = 0
        self._counts = {s.value: 0 for s in CertRecordStatus}
        for status, n in self._db.execute(
            "SELECT status, count(*) FROM certificates_now GROUP BY status"
        ):
            self._counts[status] = n
        self._revocation_generation = 0
        self._flushes = 0
        self._changes_flushed = 0
        self._last_flush_seconds = 0.0
        self._closed = False
        self._run_top: int | None = None  # serial >> _RUN_SHIFT of this process's run
        self._counter = 0
        self._allocated: set[int] = set()  # allocated, neither recorded nor released yet
        # Serials' random bits, drawn 512 at a time (one system call instead of 512); each
        # 8 octets are used once, and a forked child draws afresh.
        self._random = RandomPool()  # serials' random bits (a fork draws afresh)

    # -- lifecycle

    def close(self) -> None:
        """Flush what is pending and close the database."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serials

    def allocate_serial(self) -> int:
        """A serial no certificate of this store has, nor ever will be given again (module doc).
        Pass it to ``record_issued``, or to ``release_serial`` when issuance fails."""
        if self._run_top is None:
            self._run_top = self._new_run()
        self._counter += 1
        if self._counter >= 1 << (_RUN_SHIFT - _COUNTER_SHIFT):
            self._run_top, self._counter = self._new_run(), 1
        serial = (
            (self._run_top << _RUN_SHIFT)
            | (self._counter << _COUNTER_SHIFT)
            | int.from_bytes(self._random.take(8), "big")
        )
        self._allocated.add(serial)
        return serial

    def release_serial(self, serial: int) -> None:
        """Forget an allocated serial that was never used (it is not handed out again)."""
        self._allocated.discard(serial)

    def _new_run(self) -> int:
        for _ in range(1000):
            try:
                (run,) = self._db.execute(
                    "INSERT INTO meta (name, value) VALUES ('serial_run', 1) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value"
                ).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write certificate store {self.path}: {exc}") from None
            if run > _MAX_RUN:
                raise StoreError("certificate store has used up its serial number runs")
            top = (1 << _RUN_BITS) | run
            prefix = format(top, "08X")  # every serial of the run is this and 32 hex digits
            taken = self._db.execute(
                "SELECT 1 FROM certificates WHERE serial >= ? AND serial < ? LIMIT 1",
                (prefix, prefix + "G"),
            ).fetchone()
            if taken is None and not any(r >> _RUN_SHIFT == top for r in self._new):
                return top
        raise StoreError("certificate store found no free serial number run")

    # -- writes

    def record_issued(
        self,
        issued: Recordable,
        *,
        transaction_id: bytes | None = None,
        device_ref: str | None = None,
        status: CertRecordStatus = CertRecordStatus.PENDING,
        confirm_deadline: datetime | None = None,
    ) -> CertRecord:
        """Record a certificate just issued, 'pending' until ``confirm`` (pass
        ``status=CertRecordStatus.ISSUED`` when implicit confirmation was granted). A pending one is
        rejected by ``expire_pending`` once ``confirm_deadline`` has passed (a deadline with
        microseconds is rounded up to the next second)."""
        serial = issued.serial
        if serial in self._allocated:
            pass  # unique by construction: no look-up (module doc)
        elif (
            serial >> _RUN_SHIFT == self._run_top
            or serial in self._new
            or serial in self._changed
            or self._db_has(serial)
        ):
            raise SerialCollision(f"serial {serial_hex(serial)} is already recorded")
        if status not in (_PENDING, _ISSUED):
            raise InvalidStatusChange(f"a new certificate cannot start as {status}")
        if confirm_deadline is not None:
            if status is not _PENDING:
                confirm_deadline = None  # nothing to confirm
            elif confirm_deadline.microsecond:
                confirm_deadline = confirm_deadline.replace(microsecond=0) + _SECOND
        rec = _new_record(
            {
                "serial": serial,
                "subject": issued.subject,
                "device_ref": device_ref,
                "key_fingerprint": issued.key_fingerprint,
                "not_before": issued.not_before,
                "not_after": issued.not_after,
                "status": status,
                "revocation_reason": None,
                "revocation_time": None,
                "transaction_id": transaction_id,
                "created": _now_whole(),
                "der": issued.der,
                "confirm_deadline": confirm_deadline,
            }
        )
        self._allocated.discard(serial)
        self._new[serial] = rec
        if status is _PENDING:
            self._pending[serial] = rec
        self._counts[status._value_] += 1
        self._changed_one()
        return rec

    def confirm(self, serial: int | str) -> CertRecord:
        """The device accepted the certificate (certConf): pending -> issued. Idempotent."""
        rec = self._pending.get(serial)  # type: ignore[arg-type]  # the usual case; a str serial misses, _require parses it
        if rec is None:
            rec = self._require(serial)
            if rec.status is _ISSUED:
                return rec
            if rec.status is not _PENDING:
                raise InvalidStatusChange(
                    f"certificate {serial_hex(rec.serial)} is {rec.status}, cannot confirm"
                )
        values = dict(rec.__dict__)
        values["status"] = _ISSUED
        return self._set(rec, _new_record(values))

    def reject(self, serial: int | str, when: datetime | None = None) -> CertRecord:
        """The device rejected the certificate, or its certConf never came: pending -> rejected.

        The rejection time is kept as the revocation time so CRL and OCSP can list it."""
        rec = self._require(serial)
        if rec.status is CertRecordStatus.REJECTED:
            return rec
        if rec.status is not CertRecordStatus.PENDING:
            raise InvalidStatusChange(
                f"certificate {serial_hex(rec.serial)} is {rec.status}, cannot reject"
            )
        return self._set(
            rec,
            replace(rec, status=CertRecordStatus.REJECTED, revocation_time=_whole(when)),
        )

    def revoke(
        self,
        serial: int | str,
        reason: x509.ReasonFlags | None = None,
        when: datetime | None = None,
    ) -> CertRecord:
        """Revoke a pending or issued certificate. Call ``flush()`` before telling anyone."""
        if reason is x509.ReasonFlags.remove_from_crl:
            raise InvalidStatusChange("removeFromCRL is for delta CRLs, not a revocation reason")
        rec = self._require(serial)
        if rec.status in _DEAD:
            raise CertificateAlreadyRevoked(
                f"certificate {serial_hex(rec.serial)} is {rec.status} already"
            )
        if reason is x509.ReasonFlags.unspecified:
            reason = None  # RFC 5280 §5.3.1: leave the reason code out rather than unspecified
        return self._set(
            rec,
            replace(
                rec,
                status=CertRecordStatus.REVOKED,
                revocation_reason=reason,
                revocation_time=_whole(when),
            ),
        )

    def release_hold(self, serial: int | str) -> CertRecord:
        """removeFromCRL: a certificate revoked with reason certificateHold is valid again
        (RFC 5280 §5.3.1), revoked -> issued. Call ``flush()`` before telling anyone."""
        rec = self._require(serial)
        on_hold = rec.revocation_reason is x509.ReasonFlags.certificate_hold
        if rec.status is not CertRecordStatus.REVOKED or not on_hold:
            raise InvalidStatusChange(
                f"certificate {serial_hex(rec.serial)} is not on hold, cannot remove it from the CRL"
            )
        return self._set(
            rec, replace(rec, status=CertRecordStatus.ISSUED, revocation_reason=None, revocation_time=None)
        )

    def reject_unconfirmed(self, when: datetime | None = None) -> int:
        """Reject every pending certificate, whatever its deadline; returns how many.

        For the start of a CA process: the transactions that could still confirm them died
        with the previous process, so none of them can ever be confirmed (module doc)."""
        if not self._counts[_PENDING._value_]:
            return 0
        when = _whole(when)
        found = {
            rec.serial: rec
            for rec in map(
                from_row,
                self._db.execute(f"SELECT {COLUMNS} FROM certificates_now WHERE status = 'pending'"),
            )
        }
        for rec in self._overlay():  # unflushed changes are newer than the database
            if rec.status is _PENDING:
                found[rec.serial] = rec
            else:
                found.pop(rec.serial, None)
        for rec in found.values():
            self._set(rec, replace(rec, status=CertRecordStatus.REJECTED, revocation_time=when))
        return len(found)

    def expire_pending(
        self, when: datetime, in_progress: Callable[[bytes | None], bool] | None = None
    ) -> list[CertRecord]:
        """Reject the pending certificates of this process whose ``confirm_deadline`` is at or
        before ``when``, except those whose transaction ``in_progress`` says is still live
        (the CMP server settles those itself); returns the rejected records. Cheap enough for
        a tick: it reads only this process's pending records, no database."""
        cutoff = when.astimezone(UTC)
        due = [
            rec
            for rec in self._pending.values()
            if rec.confirm_deadline is not None
            and rec.confirm_deadline <= cutoff
            and (in_progress is None or not in_progress(rec.transaction_id))
        ]
        rejected_at = _whole(cutoff)
        return [
            self._set(rec, replace(rec, status=CertRecordStatus.REJECTED, revocation_time=rejected_at))
            for rec in due
        ]

    def record_replacement(self, serial: int, by_serial: int, when: datetime | None = None) -> None:
        """Certificate ``serial`` was replaced by the confirmed ``by_serial`` (a key update): it
        stays valid for CRL and OCSP, and ``fleet.ca.authority`` no longer lets it sign. A change
        like a status change: batched, durable after ``flush()`` or ``durable()``, and committed
        with (or after) ``by_serial``'s record and confirmation, so a crash never leaves a
        certificate replaced by one the records lost. The first replacement stands."""
        if self.replaced_by(serial) is not None:
            return
        new = self._require(by_serial)
        if new.status is not _ISSUED:
            raise InvalidStatusChange(
                f"certificate {serial_hex(new.serial)} is {new.status}, it replaces nothing"
            )
        self._require(serial)
        self._replacements[serial] = (by_serial, _whole(when))
        self._changed_one()

    def replaced_by(self, serial: int) -> int | None:
        """The serial of the certificate that replaced ``serial`` (``record_replacement``), or
        None. One look-up by primary key: asked for every signature-protected request."""
        pending = self._replacements.get(serial)
        if pending is not None:
            return pending[0]
        row = self._db.execute(REPLACED_BY, (serial_hex(serial),)).fetchone()
        return None if row is None else int(row[0], 16)

    def record_central_key(self, serial: int, key_type: str, delivery: str) -> None:
        """The key of ``serial`` was generated by this CA (central key generation) and delivered
        by ``delivery``; batched and committed with the certificate's row. Never the key."""
        self._require(serial)
        self._central[serial] = (key_type, delivery)
        self._changed_one()

    def central_key(self, serial: int) -> tuple[str, str] | None:
        """(key type, delivery) when this CA generated the key of ``serial``, else None."""
        pending = self._central.get(serial)
        if pending is not None:
            return pending
        row = self._db.execute(CENTRAL_KEY_OF, (serial_hex(serial),)).fetchone()
        return None if row is None else (row[0], row[1])

    @property
    def dirty(self) -> bool:
        """Whether some change is not durable yet (``durable()`` would have to flush)."""
        return self._flushed_seq != self._seq

    async def durable(self) -> None:
        """Return once every change made before the call is durable (module doc).

        Group commit: it first lets the other tasks that are ready run (one trio checkpoint),
        so the answers made in the same scheduling round share one flush. Raises
        ``StoreError`` when the flush fails; the changes stay queued for the next one."""
        target = self._seq
        if self._flushed_seq >= target:
            return
        await trio.lowlevel.checkpoint()
        if self._flushed_seq < target:
            self.flush()

    def flush(self) -> None:
        """Write every unflushed change in one transaction; durable on return (module doc)."""
        if not self._new and not self._changed and not self._replacements and not self._central:
            self._oldest_change = None
            self._flushed_seq = self._seq
            return
        started = time.perf_counter()
        n = self._unflushed()
        try:
            self._db.execute("BEGIN")
            try:
                if self._new:
                    self._db.executemany(INSERT, [to_row(r) for r in self._new.values()])
                if self._changed:
                    self._db.executemany(
                        CHANGE,
                        [
                            (
                                r.status._value_,
                                r.revocation_reason.value if r.revocation_reason else None,
                                seconds(r.revocation_time) if r.revocation_time else None,
                                serial_hex(r.serial),
                            )
                            for r in self._changed.values()
                        ],
                    )
                if self._replacements:  # after the rows and statuses they follow (same transaction)
                    self._db.executemany(
                        REPLACEMENT,
                        [(serial_hex(old), serial_hex(new), seconds(at)) for old, (new, at) in self._replacements.items()],
                    )
                if self._central:  # after the rows they describe (same transaction)
                    self._db.executemany(CENTRAL_KEY, [(serial_hex(s), *v) for s, v in self._central.items()])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:
            raise SerialCollision(f"certificate store rejected a batch: {exc}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write certificate store {self.path}: {exc}") from None
        self._new.clear()
        self._changed.clear()
        self._replacements.clear()
        self._central.clear()
        self._oldest_change = None
        self._flushed_seq = self._seq
        self._flushes += 1
        self._changes_flushed += n
        self._last_flush_seconds = time.perf_counter() - started

    def flush_if_due(self) -> bool:
        """Flush when the oldest unflushed change is ``max_delay`` old; True if it flushed."""
        oldest = self._oldest_change
        if oldest is not None and time.monotonic() - oldest >= self.max_delay:
            self.flush()
            return True
        return False

    async def run_flusher(self) -> None:
        """Flush every ``max_delay`` seconds while changes wait; run it in the CA's nursery so
        a quiet CA still writes its last issuances. Runs until cancelled."""
        while True:
            await trio.sleep(self.max_delay)
            self.flush_if_due()

    # -- reads (all see unflushed changes)

    def get(self, serial: int | str) -> CertRecord | None:
        key = _serial_int(serial)
        rec = self._new.get(key) or self._changed.get(key) or self._pending.get(key)
        if rec is not None:
            return rec
        row = self._db.execute(
            f"SELECT {COLUMNS} FROM certificates_now WHERE serial = ?", (serial_hex(key),)
        ).fetchone()
        return from_row(row) if row else None

    def find_by_key(self, fingerprint: bytes) -> list[CertRecord]:
        """Every certificate for the key with this SPKI SHA-256, oldest first. Reads the whole
        table: for tests and occasional look-ups (an index on random fingerprints rewrote a
        page per issuance at every flush; module doc)."""
        found = {
            rec.serial: rec
            for rec in map(
                from_row,
                self._db.execute(
                    f"SELECT {COLUMNS} FROM certificates_now WHERE key_sha256 = ? ORDER BY id",
                    (fingerprint,),
                ),
            )
        }
        for rec in self._overlay():
            if rec.key_fingerprint == fingerprint:
                found[rec.serial] = rec
        return list(found.values())

    def devices(self) -> dict[str, int]:
        """Each device reference with a valid certificate: the serial of its newest one (where a
        broadcast announcement goes). Reads the whole table: for rare events (a key rollover)."""
        found = dict(self._db.execute(
            "SELECT device_ref, serial FROM certificates_now WHERE status = 'issued' AND device_ref IS NOT NULL "
            "ORDER BY id"))
        refs = {ref: int(serial, 16) for ref, serial in found.items()}
        for rec in self._overlay():
            if rec.device_ref is not None and rec.status is _ISSUED:
                refs[rec.device_ref] = rec.serial
        return refs

    def key_fingerprints(self) -> Iterator[bytes]:
        """The key fingerprint of every certificate recorded, flushed or not (with repeats)."""
        for (key,) in self._db.execute("SELECT key_sha256 FROM certificates"):
            yield bytes(key)
        for rec in self._overlay():
            yield rec.key_fingerprint

    def revoked(self) -> list[tuple[int, datetime, x509.ReasonFlags | None]]:
        """(serial, revocation time, reason) for every revoked or rejected certificate."""
        dead: dict[int, tuple[int, datetime, x509.ReasonFlags | None]] = {}
        for serial, rtime, reason in self._db.execute(DEAD_ROWS):
            key = int(serial, 16)
            dead[key] = (key, utc(rtime), x509.ReasonFlags(reason) if reason else None)
        for rec in self._overlay():
            if rec.status in _DEAD:
                assert rec.revocation_time is not None
                dead[rec.serial] = (rec.serial, rec.revocation_time, rec.revocation_reason)
            else:
                dead.pop(rec.serial, None)
        return list(dead.values())

    def counts_by_status(self) -> dict[str, int]:
        """Certificates per status (kept in memory: cheap enough for every metrics scrape)."""
        return dict(self._counts)

    @property
    def revocation_generation(self) -> int:
        """Grows whenever a certificate becomes revoked or rejected, or a hold is released
        (CRL cache invalidation)."""
        return self._revocation_generation

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            unflushed=self._unflushed(),
            flushes=self._flushes,
            changes_flushed=self._changes_flushed,
            last_flush_seconds=self._last_flush_seconds,
        )

    def next_crl_number(self) -> int:
        """Allocate the next CRL number, durably (RFC 5280 §5.2.3: it must only grow)."""
        try:
            row = self._db.execute(
                "INSERT INTO meta (name, value) VALUES ('crl_number', 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value"
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write certificate store {self.path}: {exc}") from None
        return int(row[0])

    # -- internals

    def _overlay(self) -> Iterator[CertRecord]:
        yield from self._changed.values()
        yield from self._new.values()

    def _db_has(self, serial: int) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM certificates WHERE serial = ?", (serial_hex(serial),)
            ).fetchone()
            is not None
        )

    def _require(self, serial: int | str) -> CertRecord:
        rec = self.get(serial)
        if rec is None:
            raise UnknownCertificate(
                f"no certificate with serial {serial_hex(_serial_int(serial))}"
            )
        return rec

    def _set(self, old: CertRecord, new: CertRecord) -> CertRecord:
        if old.serial in self._new:
            self._new[old.serial] = new
        else:
            self._changed[old.serial] = new
        if new.status is _PENDING:
            self._pending[old.serial] = new
        else:
            self._pending.pop(old.serial, None)
        self._counts[old.status._value_] -= 1
        self._counts[new.status._value_] += 1
        if new.status in _DEAD or old.status in _DEAD:  # the CRL changes either way
            self._revocation_generation += 1
        self._changed_one()
        return new

    def _changed_one(self) -> None:
        self._seq += 1
        now = time.monotonic()
        if self._oldest_change is None:
            self._oldest_change = now
        if (
            len(self._new) + len(self._changed) + len(self._replacements) >= self.max_batch
            or now - self._oldest_change >= self.max_delay
        ):
            self.flush()

    def _unflushed(self) -> int:
        return len(self._new) + len(self._changed) + len(self._replacements) + len(self._central)


def _serial_int(serial: int | str) -> int:
    if isinstance(serial, int):
        return serial
    try:
        return int(serial.replace(":", ""), 16)
    except ValueError:
        raise UnknownCertificate(f"serial {serial[:50]!r} is not hexadecimal") from None


def _whole(when: datetime | None) -> datetime:
    when = datetime.now(UTC) if when is None else when.astimezone(UTC)
    return when.replace(microsecond=0)
