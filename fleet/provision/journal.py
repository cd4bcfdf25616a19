"""The provisioning journal: every device's state, durable before fleet acts on it.

One SQLite file in WAL mode with ``synchronous=FULL``: a commit is on disk when it returns, so a
``kill -9`` or a power loss leaves the journal as of its last commit, never half a step.

A device moves through::

    new -> key -> sent -> received -> confirmed
                   |        |
                   |        +-- certConf refused: orphan (revoke it with rr), back to key
                   +----------- no answer: possible orphan (the CA rejects it), back to key
                   +----------- files not storable: certConf rejects it (an orphan), failed
    any step -> failed (permanent error; a rerun starts it again from its key)

``key``: the private key is in its 0600 file (or the device has a CSR). ``sent``: the
transactionID of the request in flight. ``received``: the certificate, the CA's response and the
senderNonce it answered, with the certificate files already written; fleet sends certConf only
after this is durable. ``confirmed``: the CA acknowledged certConf with pkiConf.

Writes go through ``JournalWriter``, which groups the changes of all running devices into one
transaction per disk flush (group commit) so the cost of an fsync is shared. A device waits until
``sent`` is durable before it sends and until ``received`` is durable before it confirms; ``key``
(its file is already fsynced) and ``confirmed`` (lost, the rerun settles ``received`` with the CA)
are queued into the next commit without waiting. Two processes on one journal are refused by an
exclusive ``flock`` on ``<journal>.lock`` (released by the kernel when a process dies).
"""

from __future__ import annotations

import enum
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

import trio

from fleet.errors import FleetError

__all__ = [
    "DeviceRecord",
    "DeviceState",
    "Journal",
    "JournalBusy",
    "JournalError",
    "JournalWriter",
    "Orphan",
    "OrphanFate",
]

SCHEMA_VERSION = "1"


class JournalError(FleetError):
    """The journal file cannot be used."""


class JournalBusy(JournalError):
    """Another process holds the journal."""


class DeviceState(enum.StrEnum):
    NEW = "new"
    KEY = "key"
    SENT = "sent"
    RECEIVED = "received"
    CONFIRMED = "confirmed"
    FAILED = "failed"


class OrphanFate(enum.StrEnum):
    """What became of a certificate the CA issued (or may have issued) that the device won't keep."""

    PENDING_REVOKE = "pending_revoke"  # received, rr not yet answered
    REVOKED = "revoked"  # rr accepted
    ALREADY_DEAD = "already_dead"  # rr: the CA had revoked/rejected it already (confirmWaitTime)
    REVOKE_FAILED = "revoke_failed"  # rr refused for another reason: the CA rejects it unconfirmed
    LEFT_TO_CA = "left_to_ca_expiry"  # never received or no key to sign rr: unconfirmed, the CA rejects it
    REJECTED = "rejected_in_certconf"  # received, its files could not be stored: certConf rejected it


@dataclass(frozen=True)
class DeviceRecord:
    """A device as the journal knows it. Never holds a private key or a secret."""

    device_id: str
    state: DeviceState = DeviceState.NEW
    fingerprint: str = ""
    key_id: str | None = None  # SHA-256 of the SubjectPublicKeyInfo, hex
    transaction_id: bytes | None = None
    nonce: bytes | None = None  # our senderNonce that the stored response answers
    response: bytes | None = None  # the CA's ip/cp (DER) holding the certificate
    certificate: bytes | None = None
    serial: str | None = None
    attempts: int = 0  # requests sent, over all runs
    error_kind: str | None = None
    error: str | None = None
    fail_names: str | None = None
    updated: float = 0.0


@dataclass(frozen=True)
class Orphan:
    """A certificate (possibly) issued to a device that it will not keep."""

    device_id: str
    transaction_id: bytes
    received: bool  # True: we hold the certificate; False: the CA may have issued one we never saw
    fate: OrphanFate
    certificate: bytes | None = None
    serial: str | None = None
    detail: str = ""
    updated: float = 0.0


Change = tuple[DeviceRecord, str] | Orphan  # (record, event name) or an orphan


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, state TEXT NOT NULL, fingerprint TEXT NOT NULL, key_id TEXT,
    transaction_id BLOB, nonce BLOB, response BLOB, certificate BLOB, serial TEXT,
    attempts INTEGER NOT NULL, error_kind TEXT, error TEXT, fail_names TEXT, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS orphans (
    device_id TEXT NOT NULL, transaction_id BLOB NOT NULL, received INTEGER NOT NULL,
    fate TEXT NOT NULL, certificate BLOB, serial TEXT, detail TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (device_id, transaction_id));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, event TEXT NOT NULL,
    state TEXT NOT NULL, transaction_id BLOB, serial TEXT, detail TEXT, at REAL NOT NULL);
"""
_DEVICE_COLUMNS = (
    "device_id, state, fingerprint, key_id, transaction_id, nonce, response, certificate, serial, "
    "attempts, error_kind, error, fail_names, updated"
)
_ORPHAN_COLUMNS = "device_id, transaction_id, received, fate, certificate, serial, detail, updated"


class Journal:
    """Device records and orphans, in memory and (unless ``path`` is None) in SQLite.

    ``open`` takes the lock and loads everything; ``commit`` writes a batch of changes in one
    transaction. Only one thread may call ``commit`` at a time (``JournalWriter`` sees to it).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.devices: dict[str, DeviceRecord] = {}
        self.orphans: dict[tuple[str, bytes], Orphan] = {}
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, path: Path | str, *, server: str | None = None) -> Journal:
        journal = cls(Path(path))
        journal._lock()
        try:
            journal._connect(server)
        except BaseException:
            journal.close()
            raise
        return journal

    @classmethod
    def in_memory(cls) -> Journal:
        """A journal that persists nothing (benchmarks, ``--no-journal``)."""
        return cls(None)

    @property
    def durable(self) -> bool:
        return self._db is not None

    def meta(self, name: str) -> str | None:
        if self._db is None:
            return None
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def device(self, device_id: str) -> DeviceRecord:
        return self.devices.get(device_id) or DeviceRecord(device_id)

    def orphans_of(self, device_id: str) -> list[Orphan]:
        return [o for (d, _), o in self.orphans.items() if d == device_id]

    def remember(self, changes: Iterable[Change]) -> None:
        """Apply changes to the in-memory view (done before they are durable)."""
        for change in changes:
            if isinstance(change, Orphan):
                self.orphans[(change.device_id, change.transaction_id)] = change
            else:
                self.devices[change[0].device_id] = change[0]

    def commit(self, changes: list[Change]) -> None:
        """Write ``changes`` in one transaction; durable when this returns."""
        db = self._db
        if db is None or not changes:
            return
        devices: list[tuple[object, ...]] = []
        events: list[tuple[object, ...]] = []
        orphans: list[tuple[object, ...]] = []
        for change in changes:
            if isinstance(change, Orphan):
                o = change
                orphans.append((o.device_id, o.transaction_id, int(o.received), o.fate.value,
                                o.certificate, o.serial, o.detail, o.updated))
                events.append((o.device_id, f"orphan_{o.fate.value}", "-", o.transaction_id, o.serial,
                               o.detail, o.updated))
                continue
            r, event = change
            devices.append((r.device_id, r.state.value, r.fingerprint, r.key_id, r.transaction_id,
                            r.nonce, r.response, r.certificate, r.serial, r.attempts, r.error_kind,
                            r.error, r.fail_names, r.updated))
            events.append((r.device_id, event, r.state.value, r.transaction_id, r.serial,
                           r.error if r.state is DeviceState.FAILED else None, r.updated))
        try:
            with db:  # one transaction
                if devices:
                    db.executemany(f"INSERT OR REPLACE INTO devices ({_DEVICE_COLUMNS}) VALUES "
                                   f"({', '.join('?' * 14)})", devices)
                if orphans:
                    db.executemany(f"INSERT OR REPLACE INTO orphans ({_ORPHAN_COLUMNS}) VALUES "
                                   f"({', '.join('?' * 8)})", orphans)
                db.executemany("INSERT INTO events (device_id, event, state, transaction_id, serial, "
                               "detail, at) VALUES (?, ?, ?, ?, ?, ?, ?)", events)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot write journal {self.path}: {exc}") from None

    def events(self, device_id: str | None = None) -> list[tuple[str, str, str]]:
        """(device, event, state) in the order they were written (for reports and tests)."""
        if self._db is None:
            return []
        sql = "SELECT device_id, event, state FROM events"
        args: tuple[str, ...] = ()
        if device_id is not None:
            sql += " WHERE device_id = ?"
            args = (device_id,)
        return [tuple(r) for r in self._db.execute(sql + " ORDER BY seq", args)]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _lock(self) -> None:
        assert self.path is not None
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open journal lock {lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise JournalBusy(
                f"journal {self.path} is in use by another fleet provision (pid {holder}); "
                "wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _connect(self, server: str | None) -> None:
        assert self.path is not None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.isolation_level = "DEFERRED"
            db.executescript(_SCHEMA)
            version = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if version is None:
                with db:
                    db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                    db.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (str(time.time()),))
            elif version[0] != SCHEMA_VERSION:
                raise JournalError(f"journal {self.path} has schema {version[0]}, expected {SCHEMA_VERSION}")
            if server is not None:
                with db:
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('server', ?)", (server,))
            for row in db.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices"):
                rec = DeviceRecord(row[0], DeviceState(row[1]), *row[2:])
                self.devices[rec.device_id] = rec
            for row in db.execute(f"SELECT {_ORPHAN_COLUMNS} FROM orphans"):
                o = Orphan(row[0], row[1], bool(row[2]), OrphanFate(row[3]), *row[4:])
                self.orphans[(o.device_id, o.transaction_id)] = o
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"cannot use journal {self.path}: {exc}") from None
        self._db = db


class JournalWriter:
    """Group commit for many trio tasks: ``await write(...)`` returns once the change is durable.

    Changes reach the in-memory view at once; the flusher commits everything queued since its last
    commit in one transaction, in a worker thread so the event loop keeps serving the network.
    A write whose task is cancelled stays queued; ``close`` commits what is left.
    """

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._pending: list[Change] = []
        self._done = trio.Event()
        self._wakeup = trio.Event()
        self._failure: BaseException | None = None
        self.commits = 0

    async def write(self, *changes: Change) -> None:
        self.journal.remember(changes)
        if not self.journal.durable:
            await trio.lowlevel.checkpoint()
            return
        if self._failure is not None:
            raise self._failure
        self._pending.extend(changes)
        done = self._done
        self._wakeup.set()
        await done.wait()
        if self._failure is not None:
            raise self._failure

    def stage(self, *changes: Change) -> None:
        """Queue changes for the next commit without waiting for it: for steps whose loss in a
        crash is harmless (the key step: the key file is already durable; the confirmed step: a
        rerun finds 'received' and settles it with the CA)."""
        self.journal.remember(changes)
        if self.journal.durable and self._failure is None:
            self._pending.extend(changes)
            self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The flusher; run it in the nursery of the tasks that write."""
        task_status.started()
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            batch, self._pending = self._pending, []
            done, self._done = self._done, trio.Event()
            try:
                # Not abandoned on cancel: a commit in progress finishes before we stop.
                await trio.to_thread.run_sync(self.journal.commit, batch)
            except BaseException as exc:
                if not isinstance(exc, trio.Cancelled):
                    self._failure = exc
                else:
                    self._pending[:0] = batch
                done.set()
                raise
            self.commits += 1
            done.set()

    def close(self) -> None:
        """Commit what is still queued (after the tasks stopped, e.g. on Ctrl-C)."""
        batch, self._pending = self._pending, []
        if batch and self._failure is None:
            self.journal.commit(batch)


def updated(record: DeviceRecord, **fields: object) -> DeviceRecord:
    """A copy of ``record`` with ``fields`` changed and the time stamped."""
    return replace(record, updated=time.time(), **fields)  # type: ignore[arg-type]
