"""Certificate store: round trips, status changes, batching and what survives a kill -9."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from cryptography import x509

from fleet.ca.pki import CertificateIssuer, IssuedCert
from fleet.ca.store import (
    CertificateAlreadyRevoked,
    CertRecordStatus,
    CertStore,
    InvalidStatusChange,
    SerialCollision,
    UnknownCertificate,
    serial_hex,
)

from .conftest import device_name, ec_public_key, openssl, write_pem


@pytest.fixture(scope="module")
def template(issuer: CertificateIssuer) -> IssuedCert:
    """One real certificate; copies with fresh serials stand in for many issuances cheaply."""
    return issuer.issue(ec_public_key(), device_name("template"))


def fresh(template: IssuedCert) -> IssuedCert:
    return IssuedCert(
        der=template.der,
        cert=template.cert,
        serial=x509.random_serial_number(),
        not_before=template.not_before,
        not_after=template.not_after,
        key_fingerprint=template.key_fingerprint,
    )


def _rows(path: Path) -> int:
    """Rows visible to an independent reader (what another process would see)."""
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM certificates").fetchone()[0])


def test_round_trip_before_and_after_flush_and_reopen(
    issuer: CertificateIssuer, tmp_path: Path
) -> None:
    issued = issuer.issue(ec_public_key(), device_name("dev-42"), sans=[x509.DNSName("d.example")])
    tid = os.urandom(16)
    path = tmp_path / "certs.db"
    with CertStore(path) as store:
        rec = store.record_issued(issued, transaction_id=tid, device_ref="dev-42")
        assert store.get(issued.serial) == rec  # visible before the flush
        assert store.get(serial_hex(issued.serial)) == rec
        store.flush()
    with CertStore(path) as store:
        got = store.get(issued.serial)
        assert got is not None
        assert got == rec
        assert got.subject == "CN=dev-42" and got.device_ref == "dev-42"
        assert got.transaction_id == tid and got.der == issued.der
        assert got.status is CertRecordStatus.PENDING
        assert got.not_after == issued.cert.not_valid_after_utc
        assert got.key_fingerprint == issued.key_fingerprint
        assert got.revocation_time is None and got.revocation_reason is None
        assert store.get(12345) is None


def test_serial_text_matches_openssl(template: IssuedCert, tmp_path: Path) -> None:
    assert serial_hex(0xABC) == "0ABC"
    pem = write_pem(tmp_path / "cert.pem", template.cert)
    result = openssl("x509", "-in", pem, "-noout", "-serial")
    assert result.stdout.strip() == f"serial={serial_hex(template.serial)}"


def test_confirm_by_hex_serial_takes_the_slow_path_to_the_same_result(template: IssuedCert, tmp_path: Path) -> None:
    """confirm() looks an int serial up among the pending at once; a hex string misses there and
    must still confirm through the general lookup."""
    store = CertStore(tmp_path / "certs.db")
    a = fresh(template)
    store.record_issued(a)
    assert store.confirm(serial_hex(a.serial)).status is CertRecordStatus.ISSUED
    assert store.counts_by_status()["pending"] == 0
    assert store.confirm(serial_hex(a.serial)).status is CertRecordStatus.ISSUED  # idempotent


def test_status_changes_and_counts(template: IssuedCert, tmp_path: Path) -> None:
    store = CertStore(tmp_path / "certs.db")
    a, b, c, d = (fresh(template) for _ in range(4))
    for item in (a, b, c, d):
        store.record_issued(item)
    store.record_issued(fresh(template), status=CertRecordStatus.ISSUED)  # implicit confirmation
    assert store.counts_by_status() == {"pending": 4, "issued": 1, "revoked": 0, "rejected": 0}

    assert store.confirm(a.serial).status is CertRecordStatus.ISSUED
    assert store.confirm(a.serial).status is CertRecordStatus.ISSUED  # idempotent
    store.flush()  # b, c, d now change rows that are already in the database
    rejected = store.reject(b.serial)
    assert rejected.status is CertRecordStatus.REJECTED and rejected.revocation_time is not None
    when = datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    revoked = store.revoke(c.serial, x509.ReasonFlags.key_compromise, when)
    assert revoked.revocation_time == when.replace(microsecond=0)
    unspecified = store.revoke(a.serial, x509.ReasonFlags.unspecified)
    assert unspecified.revocation_reason is None
    expected = {"pending": 1, "issued": 1, "revoked": 2, "rejected": 1}
    assert store.counts_by_status() == expected

    with pytest.raises(CertificateAlreadyRevoked, match="revoked already"):
        store.revoke(c.serial)
    with pytest.raises(CertificateAlreadyRevoked, match="rejected already"):
        store.revoke(b.serial)
    with pytest.raises(InvalidStatusChange, match="cannot confirm"):
        store.confirm(c.serial)
    with pytest.raises(InvalidStatusChange, match="cannot reject"):
        store.reject(c.serial)
    with pytest.raises(InvalidStatusChange, match="removeFromCRL"):
        store.revoke(d.serial, x509.ReasonFlags.remove_from_crl)
    with pytest.raises(UnknownCertificate, match="no certificate with serial 0F"):
        store.revoke(15)
    with pytest.raises(UnknownCertificate, match="not hexadecimal"):
        store.get("zz")
    store.close()

    reopened = CertStore(tmp_path / "certs.db")
    assert reopened.counts_by_status() == expected  # rebuilt from the table
    got = reopened.get(c.serial)
    assert got is not None and got.revocation_reason is x509.ReasonFlags.key_compromise
    assert got.revocation_time == when.replace(microsecond=0)
    reopened.close()


def test_pending_records_stay_current_after_flush_and_restart(
    template: IssuedCert, tmp_path: Path
) -> None:
    """Pending records are kept in memory for their certConf; every status change replaces or
    drops them, so reads after a flush never see a stale 'pending'."""
    path = tmp_path / "certs.db"
    store = CertStore(path)
    a, b, c, d = (fresh(template) for _ in range(4))
    for item in (a, b, c, d):
        store.record_issued(item)
    store.flush()
    assert store.confirm(a.serial).status is CertRecordStatus.ISSUED
    store.reject(b.serial)
    store.revoke(c.serial)
    store.flush()
    for item, status in ((a, "issued"), (b, "rejected"), (c, "revoked"), (d, "pending")):
        got = store.get(item.serial)
        assert got is not None and got.status == status
    with pytest.raises(InvalidStatusChange, match="cannot confirm"):
        store.confirm(c.serial)  # revoked while its certConf was under way
    store.close()

    with sqlite3.connect(path) as db:
        rows = dict(db.execute("SELECT serial, status FROM certificates_now"))
    assert [rows[serial_hex(i.serial)] for i in (a, b, c, d)] == [
        "issued",
        "rejected",
        "revoked",
        "pending",
    ]
    reopened = CertStore(path)  # a restart: d is only in the database now
    assert reopened.confirm(d.serial).status is CertRecordStatus.ISSUED
    reopened.close()
    with CertStore(path) as again:
        got = again.get(d.serial)
        assert got is not None and got.status is CertRecordStatus.ISSUED


def test_revoked_lists_database_and_unflushed_changes(template: IssuedCert, tmp_path: Path) -> None:
    store = CertStore(tmp_path / "certs.db")
    old, new, fresh_rejected, good = (fresh(template) for _ in range(4))
    for item in (old, new, fresh_rejected, good):
        store.record_issued(item)
    store.revoke(old.serial, x509.ReasonFlags.superseded)
    store.flush()
    store.revoke(new.serial, x509.ReasonFlags.key_compromise)
    store.reject(fresh_rejected.serial)
    generation = store.revocation_generation
    assert generation == 3
    listed = {serial: reason for serial, _, reason in store.revoked()}
    assert listed == {
        old.serial: x509.ReasonFlags.superseded,
        new.serial: x509.ReasonFlags.key_compromise,
        fresh_rejected.serial: None,
    }
    store.confirm(good.serial)
    assert store.revocation_generation == generation  # confirmations do not touch the CRL
    store.flush()
    assert {s for s, _, _ in store.revoked()} == set(listed)
    store.close()


def test_find_by_key(issuer: CertificateIssuer, tmp_path: Path) -> None:
    key = ec_public_key()
    store = CertStore(tmp_path / "certs.db")
    first = issuer.issue(key, device_name())
    store.record_issued(first)
    store.flush()
    second = issuer.issue(key, device_name())
    store.record_issued(second)
    store.record_issued(issuer.issue(ec_public_key(), device_name()))
    found = store.find_by_key(first.key_fingerprint)
    assert [r.serial for r in found] == [first.serial, second.serial]
    assert store.find_by_key(b"\0" * 32) == []
    store.close()


def test_duplicate_serial_is_refused(template: IssuedCert, tmp_path: Path) -> None:
    store = CertStore(tmp_path / "certs.db")
    item = fresh(template)
    store.record_issued(item)
    with pytest.raises(SerialCollision):
        store.record_issued(item)  # still unflushed
    store.flush()
    with pytest.raises(SerialCollision, match=serial_hex(item.serial)):
        store.record_issued(item)  # in the database
    assert store.counts_by_status()["pending"] == 1
    store.close()


def test_batches_are_flushed_by_size_and_visible_to_other_readers(
    template: IssuedCert, tmp_path: Path
) -> None:
    path = tmp_path / "certs.db"
    store = CertStore(path, max_batch=100, max_delay=3600)
    for _ in range(99):
        store.record_issued(fresh(template))
    assert store.statistics().unflushed == 99
    assert _rows(path) == 0  # not durable yet: another reader sees nothing
    store.record_issued(fresh(template))  # the 100th change fills the batch
    stats = store.statistics()
    assert stats.unflushed == 0 and stats.flushes == 1 and stats.changes_flushed == 100
    assert _rows(path) == 100
    store.record_issued(fresh(template))
    store.flush()
    assert _rows(path) == 101
    store.close()


def test_batches_are_flushed_by_age(template: IssuedCert, tmp_path: Path) -> None:
    store = CertStore(tmp_path / "certs.db", max_batch=10_000, max_delay=0.02)
    store.record_issued(fresh(template))
    assert not store.flush_if_due()
    time.sleep(0.03)
    store.record_issued(fresh(template))  # the next write notices the oldest change is due
    assert store.statistics().unflushed == 0
    store.close()


async def test_run_flusher_writes_a_quiet_tail(template: IssuedCert, tmp_path: Path) -> None:
    path = tmp_path / "certs.db"
    store = CertStore(path, max_batch=10_000, max_delay=0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run_flusher)
        store.record_issued(fresh(template))
        with trio.fail_after(5):
            while store.statistics().unflushed:
                await trio.sleep(0.005)
        nursery.cancel_scope.cancel()
    assert _rows(path) == 1
    store.close()


def test_kill_9_loses_only_the_unflushed_batch(tmp_path: Path) -> None:
    """A real SIGKILL after a flush: the flushed rows are there, the unflushed ones are not."""
    path = tmp_path / "certs.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        from fleet.ca.pki import CaHierarchy, CertificateIssuer
        from fleet.ca.store import CertStore
        h = CaHierarchy.load_or_create({str(tmp_path / "state")!r})
        issuer = CertificateIssuer(h)
        store = CertStore({str(path)!r}, max_batch=10_000, max_delay=3600)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "d")])
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        for _ in range(300):
            store.record_issued(issuer.issue(key, name))
        store.flush()
        for _ in range(50):
            store.record_issued(issuer.issue(key, name))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    with CertStore(path) as store:
        assert store.counts_by_status() == {
            "pending": 300,
            "issued": 0,
            "revoked": 0,
            "rejected": 0,
        }


def test_crl_numbers_grow_across_restarts(tmp_path: Path) -> None:
    with CertStore(tmp_path / "certs.db") as store:
        assert [store.next_crl_number() for _ in range(3)] == [1, 2, 3]
    with CertStore(tmp_path / "certs.db") as store:
        assert store.next_crl_number() == 4


def test_records_per_second(template: IssuedCert, tmp_path: Path) -> None:
    items = [fresh(template) for _ in range(10_000)]
    tids = [os.urandom(16) for _ in items]
    store = CertStore(tmp_path / "certs.db")
    started = time.perf_counter()
    for item, tid in zip(items, tids, strict=True):
        store.record_issued(item, transaction_id=tid, device_ref="dev")
    store.flush()
    batched = len(items) / (time.perf_counter() - started)

    started = time.perf_counter()
    for item in items[:1000]:
        store.confirm(item.serial)
    store.flush()
    confirms = 1000 / (time.perf_counter() - started)
    store.close()

    strict = CertStore(tmp_path / "strict.db")
    started = time.perf_counter()
    for item in items[:1000]:
        strict.record_issued(item)
        strict.flush()  # one transaction per record: the "durable before answering" mode
    per_record = 1000 / (time.perf_counter() - started)
    strict.close()
    print(
        f"\nstore: {batched:,.0f} records/s batched, {confirms:,.0f} confirms/s, "
        f"{per_record:,.0f} records/s flushing each"
    )
    assert batched >= 2_000


def test_bad_path_is_a_store_error(tmp_path: Path) -> None:
    from fleet.ca.store import StoreError

    with pytest.raises(StoreError, match="cannot open certificate store"):
        CertStore(tmp_path / "missing-dir" / "certs.db")


def test_record_times_are_whole_utc_seconds(template: IssuedCert, tmp_path: Path) -> None:
    with CertStore(tmp_path / "certs.db") as store:
        rec = store.record_issued(fresh(template))
        assert rec.created.tzinfo is UTC and rec.created.microsecond == 0
        assert abs(datetime.now(UTC) - rec.created) < timedelta(seconds=5)


def test_release_hold(template: IssuedCert, tmp_path: Path) -> None:
    store = CertStore(tmp_path / "certs.db")
    held, final = fresh(template), fresh(template)
    for item in (held, final):
        store.record_issued(item, status=CertRecordStatus.ISSUED)
    store.revoke(final.serial, x509.ReasonFlags.key_compromise)
    store.flush()
    generation = store.revocation_generation
    with pytest.raises(InvalidStatusChange, match="not on hold"):
        store.release_hold(final.serial)  # keyCompromise is final
    with pytest.raises(InvalidStatusChange, match="not on hold"):
        store.release_hold(held.serial)  # not revoked at all
    store.revoke(held.serial, x509.ReasonFlags.certificate_hold)
    assert store.revocation_generation == generation + 1
    released = store.release_hold(held.serial)
    assert released.status is CertRecordStatus.ISSUED
    assert released.revocation_time is None and released.revocation_reason is None
    assert store.revocation_generation == generation + 2  # the CRL must drop it again
    assert [serial for serial, _, _ in store.revoked()] == [final.serial]
    assert store.counts_by_status() == {"pending": 0, "issued": 1, "revoked": 1, "rejected": 0}
    store.close()

    reopened = CertStore(tmp_path / "certs.db")
    got = reopened.get(held.serial)
    assert got is not None and got.status is CertRecordStatus.ISSUED and got.revocation_time is None
    assert [serial for serial, _, _ in reopened.revoked()] == [final.serial]
    reopened.close()


def _with_serial(template: IssuedCert, serial: int) -> IssuedCert:
    return IssuedCert(
        der=template.der,
        cert=template.cert,
        serial=serial,
        not_before=template.not_before,
        not_after=template.not_after,
        key_fingerprint=template.key_fingerprint,
    )


def test_allocated_serials_are_unique_positive_and_20_octets(tmp_path: Path) -> None:
    with CertStore(tmp_path / "certs.db") as store:
        serials = [store.allocate_serial() for _ in range(2000)]
    assert len(set(serials)) == 2000
    assert all(0 < s < 2**159 for s in serials)  # DER INTEGER of at most 20 octets, positive
    assert {len(serial_hex(s)) for s in serials} == {40}
    low = {s & (2**64 - 1) for s in serials}
    assert len(low) == 2000  # the 64 random bits differ too (CSPRNG, not a counter)


def test_recording_an_allocated_serial_skips_the_lookup(template: IssuedCert, tmp_path: Path) -> None:
    store = CertStore(tmp_path / "certs.db")
    serial = store.allocate_serial()
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.record_issued(_with_serial(template, serial))
    store._db.set_trace_callback(None)
    assert not statements
    with pytest.raises(SerialCollision):
        store.record_issued(_with_serial(template, serial))  # once only
    store.flush()
    with pytest.raises(SerialCollision):
        store.record_issued(_with_serial(template, serial))  # nor after the flush
    store.close()


def test_foreign_serial_in_the_current_run_is_refused(template: IssuedCert, tmp_path: Path) -> None:
    with CertStore(tmp_path / "certs.db") as store:
        serial = store.allocate_serial()
        with pytest.raises(SerialCollision):
            store.record_issued(_with_serial(template, serial + 2**64))  # next counter, not handed out
        store.release_serial(serial)
        with pytest.raises(SerialCollision):
            store.record_issued(_with_serial(template, serial))  # released: no longer ours to record
        store.record_issued(fresh(template))  # random serials outside the run still go through the look-up


def test_a_run_that_holds_a_row_is_skipped(template: IssuedCert, tmp_path: Path) -> None:
    path = tmp_path / "certs.db"
    with CertStore(path) as store:
        first = store.allocate_serial()
    # A row inside the next run's range (as a random serial of an older version could be).
    squatter = first + (1 << 128)
    with CertStore(path) as store:
        store.record_issued(_with_serial(template, squatter))
    with CertStore(path) as store:
        serial = store.allocate_serial()
        assert serial >> 128 not in (first >> 128, squatter >> 128)
        store.record_issued(_with_serial(template, serial))
        assert store.counts_by_status()["pending"] == 2


def test_serials_sent_before_a_kill_9_are_never_allocated_again(tmp_path: Path) -> None:
    """Unflushed records are lost in a crash, but their serials may be out in ip messages: the
    run number is durable before the first of them is used, so the next process never reuses one."""
    path = tmp_path / "certs.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from fleet.ca.store import CertStore
        store = CertStore({str(path)!r}, max_batch=10_000, max_delay=3600)
        print(*[store.allocate_serial() for _ in range(100)], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    before = {int(s) for s in proc.stdout.split()}
    assert len(before) == 100
    with CertStore(path) as store:
        after = {store.allocate_serial() for _ in range(100)}
    assert not before & after
    assert {s >> 128 for s in before}.isdisjoint({s >> 128 for s in after})


def test_fast_record_construction_equals_the_dataclass_way() -> None:
    """record_issued/confirm build records without the dataclass machinery; the result must be
    the same record (equal, same repr, still frozen) as ``CertRecord(...)`` / ``replace``."""
    from dataclasses import FrozenInstanceError, replace

    from fleet.ca.store import CertRecord, _changed, _new_record

    values = {
        "serial": 0x1234, "subject": "CN=a", "device_ref": "dev", "key_fingerprint": b"k" * 32,
        "not_before": datetime(2030, 1, 1, tzinfo=UTC), "not_after": datetime(2031, 1, 1, tzinfo=UTC),
        "status": CertRecordStatus.PENDING, "revocation_reason": None, "revocation_time": None,
        "transaction_id": b"t" * 16, "created": datetime(2030, 1, 1, tzinfo=UTC), "der": b"\x30\x00",
    }
    made = CertRecord(**values)  # type: ignore[arg-type]
    fast = _new_record(values)
    assert fast == made and repr(fast) == repr(made) and hash(repr(fast))
    assert _changed(fast, status=CertRecordStatus.ISSUED) == replace(made, status=CertRecordStatus.ISSUED)
    assert fast.status is CertRecordStatus.PENDING  # the original is untouched
    with pytest.raises(FrozenInstanceError):
        fast.status = CertRecordStatus.REVOKED  # type: ignore[misc]
    with pytest.raises(TypeError):
        _changed(fast, colour="red")


# The certificate table as fleet wrote it before status changes got their own table
# (commit d5c5800 and earlier): statuses updated in place, an index on the key fingerprint.
_LAYOUT_1 = """
CREATE TABLE certificates (
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
    der BLOB NOT NULL
);
CREATE INDEX certificates_key ON certificates (key_sha256);
CREATE INDEX certificates_dead ON certificates (status) WHERE status IN ('revoked', 'rejected');
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def test_a_database_of_the_earlier_layout_is_used_as_it_is(template: IssuedCert, tmp_path: Path) -> None:
    """A state directory of the earlier layout opens with its statuses, counts, revocations and
    serial runs intact; changes to its rows go to status_changes; the key index is dropped."""
    path = tmp_path / "certs.db"
    pending, issued, revoked, rejected = (fresh(template) for _ in range(4))
    with sqlite3.connect(path) as db:
        db.executescript(_LAYOUT_1)
        for item, status, reason, rtime in (
            (pending, "pending", None, None), (issued, "issued", None, None),
            (revoked, "revoked", "keyCompromise", 1_900_000_000), (rejected, "rejected", None, 1_900_000_001),
        ):
            db.execute(
                "INSERT INTO certificates (serial, subject, device_ref, key_sha256, not_before, not_after, "
                "status, revocation_reason, revocation_time, transaction_id, created, der) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (serial_hex(item.serial), "CN=old", "dev", item.key_fingerprint, 1_800_000_000, 1_900_000_000,
                 status, reason, rtime, None, 1_800_000_000, item.der),
            )
        db.execute("INSERT INTO meta (name, value) VALUES ('serial_run', 7)")
    with CertStore(path) as store:
        assert store.counts_by_status() == {"pending": 1, "issued": 1, "revoked": 1, "rejected": 1}
        assert {s: r for s, _, r in store.revoked()} == {
            revoked.serial: x509.ReasonFlags.key_compromise, rejected.serial: None,
        }
        got = store.get(revoked.serial)
        assert got is not None and got.revocation_time == datetime.fromtimestamp(1_900_000_000, UTC)
        assert len(store.find_by_key(issued.key_fingerprint)) == 4  # fresh() copies one key
        assert store.allocate_serial() >> 128 == (1 << 29) | 8  # the run counter goes on
        store.confirm(pending.serial)
        store.revoke(issued.serial, x509.ReasonFlags.superseded)
    with sqlite3.connect(path) as db:
        indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "certificates_key" not in indexes
        assert db.execute("SELECT count(*) FROM status_changes").fetchone() == (2,)
        assert db.execute("PRAGMA user_version").fetchone() == (3,)  # layout 3: the confirm_deadline column
    with CertStore(path) as store:
        assert store.counts_by_status() == {"pending": 0, "issued": 1, "revoked": 2, "rejected": 1}
        assert {s for s, _, _ in store.revoked()} == {revoked.serial, rejected.serial, issued.serial}
        got = store.get(issued.serial)
        assert got is not None and got.revocation_reason is x509.ReasonFlags.superseded


def test_a_second_change_replaces_the_first_override(template: IssuedCert, tmp_path: Path) -> None:
    """confirm, then revoke, then release a hold, each flushed: one override row, the latest."""
    path = tmp_path / "certs.db"
    item = fresh(template)
    with CertStore(path) as store:
        store.record_issued(item)
        store.flush()
        store.confirm(item.serial)
        store.flush()
        store.revoke(item.serial, x509.ReasonFlags.certificate_hold)
        store.flush()
        assert [s for s, _, _ in store.revoked()] == [item.serial]
        store.release_hold(item.serial)
        store.flush()
        assert store.revoked() == []
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT status, revocation_reason FROM status_changes").fetchall() == [("issued", None)]
        assert db.execute("SELECT status FROM certificates").fetchall() == [("pending",)]
    with CertStore(path) as store:
        got = store.get(item.serial)
        assert got is not None and got.status is CertRecordStatus.ISSUED and got.revocation_reason is None


# --------------------------------------------------------------------------- replacements (kur)


def _replaced_rows(path: Path) -> list[tuple[str, str]]:
    """replaced_certificates as an independent reader sees it."""
    with sqlite3.connect(path) as db:
        return db.execute("SELECT serial, by_serial FROM replaced_certificates ORDER BY serial").fetchall()


def test_a_replacement_is_a_batched_change_like_a_status_change(template: IssuedCert, tmp_path: Path) -> None:
    """Visible at once to the store's own reads, durable with the next flush, in the same
    transaction as the new certificate's confirmation, and kept across a restart."""
    path = tmp_path / "certs.db"
    old, new = fresh(template), fresh(template)
    with CertStore(path, max_batch=10_000, max_delay=3600) as store:
        store.record_issued(old, status=CertRecordStatus.ISSUED)
        store.record_issued(new)
        store.flush()
        store.confirm(new.serial)
        store.record_replacement(old.serial, new.serial)
        assert store.replaced_by(old.serial) == new.serial and store.replaced_by(new.serial) is None
        assert store.dirty and store.statistics().unflushed == 2
        assert _replaced_rows(path) == []  # not durable yet
        flushes = store.statistics().flushes
        store.flush()
        assert store.statistics().flushes == flushes + 1  # confirmation and replacement: one transaction
        assert not store.dirty
        assert _replaced_rows(path) == [(serial_hex(old.serial), serial_hex(new.serial))]
        assert store.get(old.serial).status is CertRecordStatus.ISSUED  # type: ignore[union-attr]  # still valid for CRL/OCSP
    with CertStore(path) as store:
        assert store.replaced_by(old.serial) == new.serial


async def test_durable_covers_a_replacement(template: IssuedCert, tmp_path: Path) -> None:
    """What the CA service awaits before any answer: the pkiConf of a kur's certConf does not go
    out before the replacement it made is durable."""
    path = tmp_path / "certs.db"
    old, new = fresh(template), fresh(template)
    with CertStore(path, max_batch=10_000, max_delay=3600) as store:
        store.record_issued(old, status=CertRecordStatus.ISSUED)
        store.record_issued(new, status=CertRecordStatus.ISSUED)  # implicit confirmation: same batch
        store.flush()
        store.record_replacement(old.serial, new.serial)
        assert store.dirty
        await store.durable()
        assert not store.dirty
        assert _replaced_rows(path) == [(serial_hex(old.serial), serial_hex(new.serial))]


def test_a_crash_loses_a_replacement_only_with_the_confirmation_it_follows(tmp_path: Path) -> None:
    """A real SIGKILL before the flush: the new certificate is still pending and the old one not
    replaced (never the old one replaced by a certificate the records lost or never confirmed)."""
    path = tmp_path / "certs.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        from fleet.ca.pki import CaHierarchy, CertificateIssuer
        from fleet.ca.store import CertRecordStatus, CertStore
        h = CaHierarchy.load_or_create({str(tmp_path / "state")!r})
        issuer = CertificateIssuer(h)
        store = CertStore({str(path)!r}, max_batch=10_000, max_delay=3600)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "d")])
        old = issuer.issue(ec.generate_private_key(ec.SECP256R1()).public_key(), name)
        new = issuer.issue(ec.generate_private_key(ec.SECP256R1()).public_key(), name)
        store.record_issued(old, status=CertRecordStatus.ISSUED)
        store.record_issued(new)
        store.flush()
        print(old.serial, new.serial, flush=True)
        store.confirm(new.serial)
        store.record_replacement(old.serial, new.serial)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, check=False)
    assert proc.returncode == -9, proc.stderr.decode()
    old_serial, new_serial = map(int, proc.stdout.split())
    with CertStore(path) as store:
        assert store.get(new_serial).status is CertRecordStatus.PENDING  # type: ignore[union-attr]
        assert store.replaced_by(old_serial) is None


def test_replacement_rules(template: IssuedCert, tmp_path: Path) -> None:
    """Only a confirmed certificate replaces, both must be known, and the first replacement
    stands (flushed or not)."""
    old, pending, other = fresh(template), fresh(template), fresh(template)
    with CertStore(tmp_path / "certs.db") as store:
        store.record_issued(old, status=CertRecordStatus.ISSUED)
        store.record_issued(pending)
        store.record_issued(other, status=CertRecordStatus.ISSUED)
        with pytest.raises(InvalidStatusChange):
            store.record_replacement(old.serial, pending.serial)
        with pytest.raises(UnknownCertificate):
            store.record_replacement(old.serial, 0x1234)
        with pytest.raises(UnknownCertificate):
            store.record_replacement(0x1234, other.serial)
        assert store.replaced_by(old.serial) is None and store.statistics().unflushed == 3  # nothing added
        store.confirm(pending.serial)
        store.record_replacement(old.serial, pending.serial)
        store.record_replacement(old.serial, other.serial)  # ignored: replaced already
        assert store.replaced_by(old.serial) == pending.serial
        store.flush()
        store.record_replacement(old.serial, other.serial)  # ignored, from the database
        assert store.replaced_by(old.serial) == pending.serial and not store.dirty


# fleet.ca.authority's table before the store kept it: its own connection, the same file.
_AUTHORITY_TABLE = (
    "CREATE TABLE IF NOT EXISTS replaced_certificates ("
    "serial TEXT PRIMARY KEY, by_serial TEXT NOT NULL, replaced_at INTEGER NOT NULL)"
)


def test_the_authoritys_replacement_table_becomes_the_stores(template: IssuedCert, tmp_path: Path) -> None:
    """A state directory whose authority kept replacements in a table of its own opens with
    them; the store goes on writing that table; a database without it gets it empty."""
    path = tmp_path / "certs.db"
    old, new, later_old, later_new = (fresh(template) for _ in range(4))
    with CertStore(path) as store:
        for item in (old, new, later_old, later_new):
            store.record_issued(item, status=CertRecordStatus.ISSUED)
    with sqlite3.connect(path) as db:  # as the earlier Authority wrote it
        db.execute("DROP TABLE replaced_certificates")  # a store of before this change had none
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'replaced_certificates'").fetchall() == []
        db.execute(_AUTHORITY_TABLE)
        db.execute("INSERT OR IGNORE INTO replaced_certificates VALUES (?, ?, ?)",
                   (serial_hex(old.serial), serial_hex(new.serial), 1_900_000_000))
    with CertStore(path) as store:
        assert store.replaced_by(old.serial) == new.serial
        store.record_replacement(later_old.serial, later_new.serial)
    assert _replaced_rows(path) == sorted(
        [(serial_hex(old.serial), serial_hex(new.serial)), (serial_hex(later_old.serial), serial_hex(later_new.serial))]
    )
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT replaced_at FROM replaced_certificates WHERE serial = ?",
                          (serial_hex(old.serial),)).fetchone() == (1_900_000_000,)
        assert db.execute("PRAGMA user_version").fetchone() == (3,)  # the file's layout is unchanged
    fresh_path = tmp_path / "fresh.db"
    with sqlite3.connect(fresh_path) as db:
        db.executescript(_LAYOUT_1)  # no replacement table at all
    with CertStore(fresh_path) as store:
        assert store.replaced_by(old.serial) is None
    assert _replaced_rows(fresh_path) == []
