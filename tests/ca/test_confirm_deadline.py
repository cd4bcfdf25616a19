"""The durable confirmation deadline: stored with the pending record, enforced at start and by the
tick (injected clock and trio's MockClock, no real sleeps), migrated from older state
directories, and what OCSP and the CRL say about a certificate not yet confirmed."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from fleet.ca.authority import Authority
from fleet.ca.pki import CertificateIssuer, IssuedCert
from fleet.ca.service import CaService
from fleet.ca.store import CertRecordStatus, CertStore, StoreError, serial_hex
from fleet.cmp.backend import IssueRequest
from fleet.cmp.client import ClientConfig, ClientTransaction, Done, Send
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import MacProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.server import ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets
from fleet.cmp.trust import TrustStore

from .conftest import device_name, ec_public_key

SECRET = b"deadline-secret"
T0 = 1_900_000_000.0  # the injected clock's start (seconds since the epoch)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@pytest.fixture(scope="module")
def template(issuer: CertificateIssuer) -> IssuedCert:
    return issuer.issue(ec_public_key(), device_name("template"))


def fresh(template: IssuedCert) -> IssuedCert:
    return IssuedCert(
        der=template.der, cert=template.cert, serial=x509.random_serial_number(),
        not_before=template.not_before, not_after=template.not_after, key_fingerprint=template.key_fingerprint,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CertStore]:
    with CertStore(tmp_path / "certs.db") as s:
        yield s


# --------------------------------------------------------------------------- the store


def test_deadline_is_kept_rounded_up_and_survives_a_restart(template: IssuedCert, tmp_path: Path) -> None:
    path = tmp_path / "certs.db"
    pending, implicit = fresh(template), fresh(template)
    with CertStore(path) as store:
        rec = store.record_issued(pending, confirm_deadline=at(T0 + 0.25))
        assert rec.confirm_deadline == at(T0 + 1)  # never earlier than the deadline granted
        done = store.record_issued(implicit, status=CertRecordStatus.ISSUED, confirm_deadline=at(T0))
        assert done.confirm_deadline is None  # nothing to confirm
    with CertStore(path) as store:
        got = store.get(pending.serial)
        assert got is not None and got.confirm_deadline == at(T0 + 1) and got.status is CertRecordStatus.PENDING
    with sqlite3.connect(path) as db:  # external readers see it in the view
        row = db.execute("SELECT status, confirm_deadline FROM certificates_now WHERE serial = ?",
                         (serial_hex(pending.serial),)).fetchone()
    assert row == ("pending", int(T0) + 1)


def test_expire_pending_rejects_only_what_is_past_its_deadline(template: IssuedCert, store: CertStore) -> None:
    early, late, confirmed, no_deadline, live = (fresh(template) for _ in range(5))
    store.record_issued(early, confirm_deadline=at(T0 + 10), transaction_id=b"e" * 16)
    store.record_issued(late, confirm_deadline=at(T0 + 20), transaction_id=b"l" * 16)
    store.record_issued(confirmed, confirm_deadline=at(T0 + 10))
    store.record_issued(no_deadline)
    store.record_issued(live, confirm_deadline=at(T0 + 10), transaction_id=b"v" * 16)
    store.confirm(confirmed.serial)
    store.flush()  # the sweep finds flushed records as well as unflushed ones
    generation = store.revocation_generation

    def in_progress(tid: bytes | None) -> bool:
        return tid == b"v" * 16

    assert store.expire_pending(at(T0 + 9.5), in_progress) == []
    expired = store.expire_pending(at(T0 + 10), in_progress)
    assert [r.serial for r in expired] == [early.serial]
    assert expired[0].status is CertRecordStatus.REJECTED and expired[0].revocation_time == at(T0 + 10)
    assert store.revocation_generation > generation  # the next CRL lists it
    assert {s for s, _, _ in store.revoked()} == {early.serial}
    # The live transaction's certificate waits for its transaction; once that is gone it goes too.
    assert [r.serial for r in store.expire_pending(at(T0 + 30), in_progress)] == [late.serial]
    assert [r.serial for r in store.expire_pending(at(T0 + 30))] == [live.serial]
    assert store.get(no_deadline.serial).status is CertRecordStatus.PENDING  # type: ignore[union-attr]
    assert store.get(confirmed.serial).status is CertRecordStatus.ISSUED  # type: ignore[union-attr]
    assert store.counts_by_status() == {"pending": 1, "issued": 1, "revoked": 0, "rejected": 3}


def test_reject_unconfirmed_takes_every_pending_certificate(template: IssuedCert, tmp_path: Path) -> None:
    """At start every pending certificate is rejected, flushed by the previous process or not
    yet, with a deadline or without; other statuses are left alone."""
    path = tmp_path / "certs.db"
    flushed, future, issued, revoked = (fresh(template) for _ in range(4))
    with CertStore(path) as old:
        old.record_issued(flushed, confirm_deadline=at(T0))
        old.record_issued(future, confirm_deadline=datetime.now(UTC) + timedelta(hours=1))
        old.record_issued(issued, status=CertRecordStatus.ISSUED)
        old.record_issued(revoked)
        old.revoke(revoked.serial, x509.ReasonFlags.key_compromise)
    with CertStore(path) as store:
        unflushed = fresh(template)
        store.record_issued(unflushed)  # this process's own, not yet in the database
        when = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert store.reject_unconfirmed(when) == 3
        assert store.reject_unconfirmed(when) == 0
        for item in (flushed, future, unflushed):
            rec = store.get(item.serial)
            assert rec is not None and rec.status is CertRecordStatus.REJECTED and rec.revocation_time == when
    with CertStore(path) as store:
        assert store.counts_by_status() == {"pending": 0, "issued": 1, "revoked": 1, "rejected": 3}


async def test_durable_groups_the_round_into_one_flush(template: IssuedCert, tmp_path: Path) -> None:
    path = tmp_path / "certs.db"
    store = CertStore(path, max_batch=10_000, max_delay=3600)
    try:
        assert not store.dirty
        await store.durable()  # nothing to do
        assert store.statistics().flushes == 0
        items = [fresh(template) for _ in range(20)]

        async def answer(item: IssuedCert) -> None:
            store.record_issued(item, confirm_deadline=at(T0))
            await store.durable()
            with sqlite3.connect(path) as db:  # what a restarted process would find
                assert db.execute("SELECT count(*) FROM certificates WHERE serial = ?",
                                  (serial_hex(item.serial),)).fetchone() == (1,)

        async with trio.open_nursery() as nursery:
            for item in items:
                nursery.start_soon(answer, item)
        assert store.statistics().flushes == 1 and not store.dirty
    finally:
        store.close()


async def test_durable_raises_when_the_flush_fails_and_keeps_the_change(
    template: IssuedCert, tmp_path: Path
) -> None:
    """A real failure: another writer takes the serial first; the answer must not go out, and
    the change stays queued for the next flush."""
    path = tmp_path / "certs.db"
    item = fresh(template)
    with CertStore(path, max_batch=10_000, max_delay=3600) as store:
        store.record_issued(item)
        with CertStore(path) as intruder:
            intruder.record_issued(item, status=CertRecordStatus.ISSUED)
        with pytest.raises(StoreError):
            await store.durable()
        assert store.dirty and store.get(item.serial).status is CertRecordStatus.PENDING  # type: ignore[union-attr]
        with sqlite3.connect(path) as db:  # the intruder's row goes: the queued change gets in
            db.execute("DELETE FROM certificates WHERE serial = ?", (serial_hex(item.serial),))
        await store.durable()
        assert not store.dirty
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT status FROM certificates").fetchall() == [("pending",)]


# --------------------------------------------------------------------------- migration

# The layout fleet wrote before the deadline column (user_version 2), as the earlier code made it.
_LAYOUT_2 = """
CREATE TABLE certificates (
    id INTEGER PRIMARY KEY, serial TEXT NOT NULL UNIQUE, subject TEXT NOT NULL, device_ref TEXT,
    key_sha256 BLOB NOT NULL, not_before INTEGER NOT NULL, not_after INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'issued', 'revoked', 'rejected')),
    revocation_reason TEXT, revocation_time INTEGER, transaction_id TEXT, created INTEGER NOT NULL,
    der BLOB NOT NULL
);
CREATE INDEX certificates_dead ON certificates (status) WHERE status IN ('revoked', 'rejected');
CREATE TABLE status_changes (
    id INTEGER PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending', 'issued', 'revoked', 'rejected')),
    revocation_reason TEXT, revocation_time INTEGER
);
CREATE INDEX status_changes_dead ON status_changes (status) WHERE status IN ('revoked', 'rejected');
CREATE VIEW certificates_now AS
SELECT c.id, c.serial, c.subject, c.device_ref, c.key_sha256, c.not_before, c.not_after,
    CASE WHEN s.id IS NULL THEN c.status ELSE s.status END AS status,
    CASE WHEN s.id IS NULL THEN c.revocation_reason ELSE s.revocation_reason END AS revocation_reason,
    CASE WHEN s.id IS NULL THEN c.revocation_time ELSE s.revocation_time END AS revocation_time,
    c.transaction_id, c.created, c.der
FROM certificates AS c LEFT JOIN status_changes AS s ON s.id = c.id;
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
PRAGMA user_version = 2;
"""


def _old_state_dir(state: Path, template: IssuedCert) -> dict[str, IssuedCert]:
    """A state directory whose store has the layout-2 tables: a pending, an issued and a revoked
    row, and a row written pending and confirmed later (through status_changes)."""
    state.mkdir(parents=True)
    items = {k: fresh(template) for k in ("pending", "issued", "revoked", "confirmed_later")}
    with sqlite3.connect(state / "certs.sqlite") as db:
        db.executescript(_LAYOUT_2)
        for label, item in items.items():
            status = {"revoked": "revoked", "issued": "issued"}.get(label, "pending")
            db.execute(
                "INSERT INTO certificates (serial, subject, device_ref, key_sha256, not_before, not_after, "
                "status, revocation_reason, revocation_time, transaction_id, created, der) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (serial_hex(item.serial), "CN=old", None, item.key_fingerprint, 1_800_000_000, 1_900_000_000,
                 status, "keyCompromise" if status == "revoked" else None,
                 1_850_000_000 if status == "revoked" else None, None, 1_800_000_000, item.der),
            )
        db.execute("INSERT INTO status_changes (id, status) SELECT id, 'issued' FROM certificates "
                   "WHERE serial = ?", (serial_hex(items["confirmed_later"].serial),))
    return items


def test_layout_2_opens_and_its_pending_rows_are_rejected_at_start(template: IssuedCert, tmp_path: Path) -> None:
    """Pending rows without a deadline are not given one (the store cannot know what the old
    process granted): the service's start rejects them, like every pending certificate."""
    state = tmp_path / "state"
    items = _old_state_dir(state, template)
    with CertStore(state / "certs.sqlite") as store:  # what `fleet ca stats` does: no rejection
        assert store.counts_by_status() == {"pending": 1, "issued": 2, "revoked": 1, "rejected": 0}
        old = store.get(items["pending"].serial)
        assert old is not None and old.confirm_deadline is None
    with sqlite3.connect(state / "certs.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        columns = [row[1] for row in db.execute("PRAGMA table_info(certificates_now)")]
        assert columns[-1] == "confirm_deadline"
    authority = Authority.open(state)
    try:
        service = CaService(authority, clock=lambda: T0)
        assert service.recover() == 1
        rec = authority.store.get(items["pending"].serial)
        assert rec is not None and rec.status is CertRecordStatus.REJECTED and rec.revocation_time == at(T0)
        assert authority.store.counts_by_status() == {"pending": 0, "issued": 2, "revoked": 1, "rejected": 1}
        # New issuances go into the migrated table with their deadline.
        issued = authority.issue(IssueRequest(
            kind=BodyType.IR, public_key=ec_public_key(), subject=device_name("new"), extensions=(),
            not_after=None, device_ref=None, transaction_id=b"n" * 16, confirmed=False,
            confirm_deadline=T0 + 5.5,
        ))
    finally:
        authority.close()
    with CertStore(state / "certs.sqlite") as store:
        got = store.get(issued.serial)
        assert got is not None and got.confirm_deadline == at(T0 + 6)


# --------------------------------------------------------------------------- the service's tick


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _client(authority: Authority) -> ClientConfig:
    return ClientConfig(protector=MacProtector(SECRET, reference=b"dev"),
                        trust=TrustStore([authority.hierarchy.root]))


def _ir(authority: Authority, clock: Clock, **kw: object) -> ClientTransaction:
    return ClientTransaction(
        _client(authority),
        CertRequest(BodyType.IR, ec.generate_private_key(ec.SECP256R1()), subject=device_name("d"), **kw),  # type: ignore[arg-type]
        now=lambda: at(clock.now),
    )


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[tuple[CaService, Clock]]:
    authority = Authority.open(tmp_path / "state", base_url="http://127.0.0.1:8080")
    clock = Clock(T0)
    service = CaService(authority, config=ServerConfig(confirm_wait=5.0, hung_timeout=30.0),
                        secrets=SharedSecrets(default=SECRET), clock=clock)
    yield service, clock
    authority.close()


def test_ir_records_the_confirm_wait_deadline_it_granted(ca: tuple[CaService, Clock]) -> None:
    service, clock = ca
    server = service.default
    tx = _ir(service.authority, clock)
    clock.now = T0 + 0.5
    event = tx.receive(server.handle(tx.start().data, clock.now).data)
    assert isinstance(event, Send)  # the certConf, not sent
    issued = tx.result
    assert issued is not None and issued.certificate is not None
    serial = x509.load_der_x509_certificate(issued.certificate).serial_number
    rec = service.authority.store.get(serial)
    assert rec is not None and rec.confirm_deadline == at(T0 + 6)  # 0.5 + 5, rounded up
    implicit = _ir(service.authority, clock, implicit_confirm=True)
    done = implicit.receive(server.handle(implicit.start().data, clock.now).data)
    assert isinstance(done, Done) and done.certificate is not None
    rec = service.authority.store.get(x509.load_der_x509_certificate(done.certificate).serial_number)
    assert rec is not None and rec.status is CertRecordStatus.ISSUED and rec.confirm_deadline is None


def test_tick_rejects_a_pending_certificate_no_transaction_awaits(ca: tuple[CaService, Clock]) -> None:
    """A certificate recorded pending without a transaction (as a failure between issuance and
    answer would leave it) is rejected by the tick at its deadline, and counted."""
    service, clock = ca
    authority = service.authority
    orphan = authority.issue(IssueRequest(
        kind=BodyType.IR, public_key=ec_public_key(), subject=device_name("orphan"), extensions=(),
        not_after=None, device_ref=None, transaction_id=os.urandom(16), confirmed=False,
        confirm_deadline=T0 + 5,
    ))
    clock.now = T0 + 4.9
    service.tick()
    assert authority.store.get(orphan.serial).status is CertRecordStatus.PENDING  # type: ignore[union-attr]
    clock.now = T0 + 5
    service.tick()
    rec = authority.store.get(orphan.serial)
    assert rec is not None and rec.status is CertRecordStatus.REJECTED and rec.revocation_time == at(T0 + 5)
    assert service.outcomes[("tick", "confirm_timeout", "systemUnavail")] == 1


def test_tick_leaves_a_late_delivered_certificate_to_its_transaction(ca: tuple[CaService, Clock]) -> None:
    """Delayed delivery: the recorded deadline covers a pollReq up to hung_timeout after the
    response is ready; a pollReq later than that (before the tick closed the transaction) gets a
    later confirmWaitTime, and the store's sweep must leave the certificate to the live
    transaction, whose certConf is then accepted."""
    service, clock = ca
    server = service.default
    tx = _ir(service.authority, clock)
    waiting = tx.receive(server.handle(tx.start().data, clock.now, defer=1.0).data)
    assert isinstance(waiting, Send) and waiting.body_type is BodyType.POLLREQ
    clock.now = T0 + 1 + 30 + 0.5  # past the hung deadline, and no tick has run
    confirm = tx.receive(server.handle(waiting.data, clock.now).data)
    assert isinstance(confirm, Send) and confirm.body_type is BodyType.CERTCONF
    assert tx.result is not None and tx.result.certificate is not None
    serial = x509.load_der_x509_certificate(tx.result.certificate).serial_number
    assert service.authority.store.get(serial).confirm_deadline == at(T0 + 36)  # type: ignore[union-attr]
    clock.now = T0 + 36.25  # past the recorded deadline, before the one the pollReq granted (36.5)
    service.tick()
    assert service.authority.store.get(serial).status is CertRecordStatus.PENDING  # type: ignore[union-attr]
    done = tx.receive(server.handle(confirm.data, clock.now).data)
    assert isinstance(done, Done)
    assert service.authority.store.get(serial).status is CertRecordStatus.ISSUED  # type: ignore[union-attr]


async def test_periodic_tick_under_mock_clock(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The service's own ticker (trio.sleep between ticks) rejects an orphan within a tick of
    its deadline; the MockClock jumps, nothing really sleeps."""
    authority = Authority.open(tmp_path / "state")
    try:
        service = CaService(authority, clock=lambda: T0 + trio.current_time(), tick_interval=1.0)
        orphan = authority.issue(IssueRequest(
            kind=BodyType.IR, public_key=ec_public_key(), subject=device_name("orphan"), extensions=(),
            not_after=None, device_ref=None, transaction_id=os.urandom(16), confirmed=False,
            confirm_deadline=T0 + trio.current_time() + 60,
        ))
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service._ticker)
            while authority.store.get(orphan.serial).status is CertRecordStatus.PENDING:  # type: ignore[union-attr]
                await trio.sleep(0.25)
            nursery.cancel_scope.cancel()
        assert 60 <= trio.current_time() - start <= 61.25
    finally:
        authority.close()


# --------------------------------------------------------------------------- OCSP and CRL


def _ocsp_request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_missed_deadline_turns_the_hold_into_a_revocation(ca: tuple[CaService, Clock]) -> None:
    """Pending: on hold in OCSP, not on the CRL; past the deadline: rejected, on the CRL,
    revoked in OCSP without a reason code."""
    service, clock = ca
    authority = service.authority
    tx = _ir(authority, clock)
    tx.receive(service.default.handle(tx.start().data, clock.now).data)
    assert tx.result is not None and tx.result.certificate is not None
    cert = x509.load_der_x509_certificate(tx.result.certificate)
    answer = ocsp.load_der_ocsp_response(authority.ocsp.respond(_ocsp_request(cert, authority.hierarchy.issuing)))
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason is x509.ReasonFlags.certificate_hold
    crl = x509.load_der_x509_crl(authority.crl.current_crl_der())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is None
    clock.now = T0 + 6
    service.tick()
    answer = ocsp.load_der_ocsp_response(authority.ocsp.respond(_ocsp_request(cert, authority.hierarchy.issuing)))
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED and answer.revocation_reason is None
    assert answer.revocation_time_utc == at(T0 + 6)
    crl = x509.load_der_x509_crl(authority.crl.current_crl_der())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


async def test_no_ip_leaves_when_its_record_cannot_be_committed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real write failure (a trigger another connection put on the table): the ir is answered
    HTTP 503 with one log line instead of an ip whose certificate the records would not hold;
    once the store can be written again, the CA answers as before."""
    authority = Authority.open(tmp_path / "state")
    path = tmp_path / "state" / "certs.sqlite"
    service = CaService(authority, secrets=SharedSecrets(default=SECRET))
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(service.serve, "127.0.0.1", 0)
            with sqlite3.connect(path) as db:
                db.execute("CREATE TRIGGER full BEFORE INSERT ON certificates "
                           "BEGIN SELECT RAISE(ABORT, 'disk is full'); END")
            async with httpx.AsyncClient(timeout=10) as http:
                tx = ClientTransaction(_client(authority), CertRequest(
                    BodyType.IR, ec.generate_private_key(ec.SECP256R1()), subject=device_name("d")))
                rsp = await http.post(f"http://127.0.0.1:{port}/pkix/", content=tx.start().data,
                                      headers={"Content-Type": "application/pkixcmp"})
                assert rsp.status_code == 503 and rsp.text == "certificate store unavailable\n"
                errors = [r for r in caplog.records if r.levelname == "ERROR"]
                assert len(errors) == 1 and "disk is full" in errors[0].getMessage()
                with sqlite3.connect(path) as db:
                    db.execute("DROP TRIGGER full")
                tx = ClientTransaction(_client(authority), CertRequest(
                    BodyType.IR, ec.generate_private_key(ec.SECP256R1()), subject=device_name("d")))
                rsp = await http.post(f"http://127.0.0.1:{port}/pkix/", content=tx.start().data,
                                      headers={"Content-Type": "application/pkixcmp"})
                assert rsp.status_code == 200 and isinstance(tx.receive(rsp.content), Send)
            nursery.cancel_scope.cancel()
        with sqlite3.connect(path) as db:  # both certificates are recorded (the first one unsent)
            assert db.execute("SELECT count(*) FROM certificates WHERE status = 'pending'").fetchone() == (2,)
    finally:
        authority.close()
