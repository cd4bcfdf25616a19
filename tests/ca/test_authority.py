"""Authority: the CaBackend the CMP server role uses (issuance policy, records, revocation, genp)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.ca.authority import STORE_FILE, Authority
from fleet.ca.issuance import IssuedCert
from fleet.ca.store import CertRecordStatus, serial_hex
from fleet.cmp import genm, oids
from fleet.cmp.backend import CertState, IssueRequest, Rejected
from fleet.cmp.messages import BodyType, FailInfo, InfoTypeAndValue


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[Authority]:
    auth = Authority.open(tmp_path / "ca", base_url="http://127.0.0.1:8080")
    yield auth
    auth.close()


def request(cn: str = "dev", *, confirmed: bool = False, **kw: object) -> IssueRequest:
    return IssueRequest(
        kind=BodyType.IR, public_key=ec.generate_private_key(ec.SECP256R1()).public_key(), subject=name(cn),
        extensions=kw.pop("extensions", ()), not_after=None, device_ref="ref-7", transaction_id=b"t" * 16,  # type: ignore[arg-type]
        confirmed=confirmed,
    )


def test_issue_records_pending_then_confirm(authority: Authority) -> None:
    issued = authority.issue(request())
    rec = authority.store.get(issued.serial)
    assert rec.status is CertRecordStatus.PENDING and rec.device_ref == "ref-7" and rec.transaction_id == b"t" * 16
    authority.confirm(issued.serial)
    assert authority.store.get(issued.serial).status is CertRecordStatus.ISSUED
    assert authority.issue(request(confirmed=True)).serial != issued.serial
    assert authority.statistics().by_status["issued"] == 2


def test_policy_rejection_maps_to_bad_cert_template(authority: Authority) -> None:
    ca = x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=True, path_length=None))
    with pytest.raises(Rejected) as err:
        authority.issue(request(extensions=(ca,)))
    assert err.value.fail is FailInfo.badCertTemplate


def test_issued_serials_come_from_the_store_and_survive_a_restart(tmp_path: Path) -> None:
    """Serials are the store's unique-by-construction ones, in the certificate itself, and a
    restarted CA draws from a new run."""
    auth = Authority.open(tmp_path / "ca")
    first = [auth.issue(request(f"d{i}")) for i in range(3)]
    ca = x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=True, path_length=None))
    with pytest.raises(Rejected):
        auth.issue(request(extensions=(ca,)))
    assert not auth.store._allocated  # a refused request gives its serial back
    auth.close()
    auth = Authority.open(tmp_path / "ca")
    second = auth.issue(request("d3"))
    assert auth.store.get(second.serial) is not None
    auth.close()
    assert all(i.cert.serial_number == i.serial and len(f"{i.serial:X}") == 40 for i in [*first, second])
    assert len({i.serial >> 128 for i in first}) == 1
    assert second.serial >> 128 != first[0].serial >> 128


def test_find_only_own_certificates(authority: Authority) -> None:
    issued = authority.issue(request())
    known = authority.find(authority.hierarchy.issuing.subject, issued.serial)
    assert known is not None and known.der == issued.der and known.status == "pending"
    assert authority.find(name("Someone Else CA"), issued.serial) is None
    assert authority.find(authority.hierarchy.issuing.subject, 12345) is None


def test_revoke_flushes_and_refuses_twice(authority: Authority) -> None:
    issued = authority.issue(request())
    authority.revoke(issued.serial, x509.ReasonFlags.key_compromise, datetime.now(UTC))
    assert authority.store.statistics().unflushed == 0  # durable before the rp is sent
    with pytest.raises(Rejected) as err:
        authority.revoke(issued.serial, None, datetime.now(UTC))
    assert err.value.fail is FailInfo.certRevoked
    # A revoked certificate cannot be confirmed any more; reject after revoke is a no-op.
    with pytest.raises(Rejected):
        authority.confirm(issued.serial)
    authority.reject(issued.serial, datetime.now(UTC))
    assert authority.store.get(issued.serial).status is CertRecordStatus.REVOKED


def test_general_info(authority: Authority) -> None:
    h = authority.hierarchy
    assert genm.decode_ca_certs(authority.general_info(genm.ca_certs_request())) == h.chain_for_issued_der
    assert genm.decode_root_ca_key_update(authority.general_info(genm.root_ca_cert_request())) is None
    other = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not us")]).public_bytes()
    assert genm.decode_crls(authority.general_info(genm.crl_status_list_request(other))) == ()
    ours = genm.decode_crls(authority.general_info(genm.crl_status_list_request(h.issuing.subject.public_bytes())))
    assert x509.load_der_x509_crl(ours[0]).issuer == h.issuing.subject
    assert authority.general_info(InfoTypeAndValue(oids.IT_SIGN_KEY_PAIR_TYPES)).value
    assert authority.general_info(InfoTypeAndValue("1.3.6.1.5.5.7.4.99")).value is None


def test_issued_chain_excludes_root_and_restart_keeps_hierarchy(tmp_path: Path) -> None:
    first = Authority.open(tmp_path / "ca")
    root, serial = first.root, first.issue(request(confirmed=True)).serial
    assert root not in first.issued_chain and first.issued_chain[0] == first.hierarchy.issuing_der
    first.close()
    again = Authority.open(tmp_path / "ca")
    try:
        assert again.root == root
        assert again.store.get(serial).status is CertRecordStatus.ISSUED
    finally:
        again.close()


def _kur(old: IssuedCert, *, confirmed: bool) -> IssueRequest:
    return IssueRequest(
        kind=BodyType.KUR, public_key=ec.generate_private_key(ec.SECP256R1()).public_key(), subject=name("dev"),
        extensions=(), not_after=None, device_ref="ref-7", transaction_id=b"k" * 16, confirmed=confirmed,
        old_cert=old.cert,
    )


def _open_files(path: Path) -> int:
    """How many file descriptors of this process are open on ``path`` itself (one per SQLite
    connection; the WAL and shared-memory files have names of their own)."""
    target = str(path.resolve())
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if _readlink(fd) == target)


def _readlink(fd: Path) -> str | None:
    try:
        return os.readlink(fd)
    except OSError:
        return None


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_one_connection_to_the_certificate_database(tmp_path: Path) -> None:
    """Replacements live in the store: the authority opens the database once."""
    auth = Authority.open(tmp_path / "ca")
    try:
        assert _open_files(tmp_path / "ca" / STORE_FILE) == 1
    finally:
        auth.close()
    assert _open_files(tmp_path / "ca" / STORE_FILE) == 0


async def test_a_confirmed_kur_replaces_the_old_certificate_durably(authority: Authority) -> None:
    """Replaced once the new certificate is confirmed, never before; the replacement is a change of
    the store that ``durable()`` (which the service awaits before the pkiConf) makes visible to
    another reader of the file; a rejected kur replaces nothing."""
    old = authority.issue(request(confirmed=True))
    refused = authority.issue(_kur(old, confirmed=False))
    authority.reject(refused.serial, datetime.now(UTC))
    assert authority.cert_state(old.cert) is CertState.GOOD and authority.store.replaced_by(old.serial) is None
    new = authority.issue(_kur(old, confirmed=False))
    assert authority.cert_state(old.cert) is CertState.GOOD  # not replaced until confirmed
    await authority.store.durable()
    authority.confirm(new.serial)
    assert authority.cert_state(old.cert) is CertState.REPLACED
    assert authority.store.dirty  # the answer to that certConf waits for durable()
    await authority.store.durable()
    with sqlite3.connect(authority.store.path) as db:
        assert db.execute("SELECT serial, by_serial FROM replaced_certificates").fetchall() == [
            (serial_hex(old.serial), serial_hex(new.serial))
        ]
    assert authority.cert_state(new.cert) is CertState.GOOD


async def test_a_kur_with_implicit_confirmation_replaces_at_once(authority: Authority) -> None:
    old = authority.issue(request(confirmed=True))
    await authority.store.durable()
    new = authority.issue(_kur(old, confirmed=True))
    assert authority.cert_state(old.cert) is CertState.REPLACED
    assert authority.store.statistics().unflushed == 2  # the new record and the replacement, one batch
    await authority.store.durable()
    assert authority.store.replaced_by(old.serial) == new.serial
