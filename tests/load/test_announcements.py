"""``[announcements]`` in ``fleet run``: a worker's devices believe only signed announcements of
their CA (each refusal with its own failInfo, none disturbing another device), a rann of a
device's certificate takes it off the books, a ckuann adds the new root; and end to end, the
run's revocations are pushed by the embedded CA to two workers' listeners and re-enrolled, and
a root key rollover of the CA reaches them as a ckuann."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.ca.authority import STORE_FILE, Authority
from fleet.cmp.announce import KeyUpdateAnnouncement, RevAnnouncement, announce
from fleet.cmp.backend import IssueRequest
from fleet.cmp.messages import BodyType, directory_name
from fleet.cmp.trust import TrustStore, cert_der
from fleet.errors import FleetError
from fleet.http.server import HttpRequest
from fleet.load.announce_config import AnnouncementLoad
from fleet.load.announcements import DeviceAnnouncements, announcement_setup
from fleet.load.metrics import FleetMetrics
from fleet.load.profiles import ProfileError, parse_profile

ROOT = Path(__file__).resolve().parents[2]


def fleet(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleet.cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def _issue(authority: Authority, ref: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = authority.issue(IssueRequest(
        kind=BodyType.IR, public_key=key.public_key(),
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ref)]), extensions=(), not_after=None,
        device_ref=ref, transaction_id=os.urandom(16), confirmed=True, old_cert=None, now=time.time(),
    ))
    record = authority.store.get(issued.serial)
    assert record is not None
    return record.der


def _rann(authority: Authority, cert: bytes) -> RevAnnouncement:
    c = x509.load_der_x509_certificate(cert)
    now = datetime.now(UTC)
    return RevAnnouncement(5, directory_name(c.issuer.public_bytes()), c.serial_number, now, now)


def _cert(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
          signing_key: ec.EllipticCurvePrivateKey) -> bytes:
    now = datetime.now(UTC)
    return cert_der(x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                    .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
                    .not_valid_after(now + timedelta(days=30))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                    .sign(signing_key, hashes.SHA256()))


def _rollover(authority: Authority) -> KeyUpdateAnnouncement:
    """A root key update (RFC 9810 §4.4): the new key, vouched for by the old root's key."""
    old_key = authority.hierarchy.root_key
    assert isinstance(old_key, ec.EllipticCurvePrivateKey)
    name, new_key = authority.hierarchy.root.subject, ec.generate_private_key(ec.SECP256R1())
    return KeyUpdateAnnouncement(_cert(name, name, old_key.public_key(), new_key),
                                 _cert(name, name, new_key.public_key(), old_key),
                                 _cert(name, name, new_key.public_key(), new_key))


def _post(data: bytes, method: str = "POST") -> HttpRequest:
    return HttpRequest(method, "/d/dev-00000007", [], data, "127.0.0.1")


async def test_a_worker_believes_acts_and_refuses(tmp_path: Path) -> None:
    ca, other = Authority.open(tmp_path / "ca"), Authority.open(tmp_path / "other")
    try:
        trust = TrustStore([ca.hierarchy.root])
        devices = DeviceAnnouncements(AnnouncementLoad(), trust)
        metrics = FleetMetrics(process=False)
        devices._run = SimpleNamespace(observer=metrics)  # type: ignore[assignment]  # only its observer is read
        cert = _issue(ca, "dev-00000007")
        devices.issued(7, cert, reenrolled=False)

        def signed(authority: Authority, a: object) -> bytes:
            return announce(a, authority.signer(), now=time.time(), random=os.urandom)  # type: ignore[arg-type]

        rann = signed(ca, _rann(ca, cert))
        assert (await devices.handle(_post(rann))).status == 202
        assert (await devices.handle(_post(rann))).status == 202  # again: no device holds it any more
        serial = x509.load_der_x509_certificate(cert).serial_number
        at = rann.index(serial.to_bytes((serial.bit_length() + 7) // 8, "big"))
        tampered = rann[:at] + bytes([rann[at] ^ 1]) + rann[at + 1:]  # another serial, under the old signature
        answers = [await devices.handle(_post(data)) for data in (
            tampered, signed(other, _rann(other, _issue(other, "x"))), b"\x30\x03\x02\x01\x00")]
        assert [a.status for a in answers] == [400, 400, 400]
        assert (await devices.handle(_post(signed(ca, _rollover(ca))))).status == 202
        assert (await devices.handle(_post(b"", "GET"))).status == 405
        stats = devices.stats
        assert stats.received == {"rann": 2, "ckuann": 1}
        assert stats.refused == {"badMessageCheck": 1, "signerNotTrusted": 1, "badDataFormat": 1}
        assert (stats.not_current, stats.trust_updates) == (1, 1)
        assert len(trust.anchors) == 2  # the new root beside the old one
        text = metrics.exposition().decode()
        assert 'fleet_announcements_total{body="rann",result="believed",worker="0"} 2.0' in text
        assert 'fleet_announcements_total{body="-",result="signerNotTrusted",worker="0"} 1.0' in text
    finally:
        ca.close()
        other.close()


def test_profile_section_and_its_errors(tmp_path: Path) -> None:
    base = {"arrivals": {"shape": "constant", "rate": 5}}
    p = parse_profile({**base, "announcements": {"revoke_fraction": 0.1, "port": 9400}}, where="t.toml")
    assert p.announcements is not None and p.announcements.listen_port(2) == 9402
    for section, words in (({"revoke": 1}, "unknown key 'revoke'"), ({"revoke_fraction": 2}, "between 0 and 1"),
                           ({"cert": "ra.pem"}, "cert and key go together"), ({"reason": "bored"}, "reason")):
        with pytest.raises(ProfileError) as err:
            parse_profile({**base, "announcements": section}, where="bad.toml")
        assert str(err.value).startswith("bad.toml: [announcements]") and words in str(err.value)
    with pytest.raises(FleetError, match="needs cert and key against --server"):
        announcement_setup(parse_profile({**base, "announcements": {"revoke_fraction": 0.5}}, where="t"), None,
                           external=True)


def _issued(store: Path) -> int:
    """Certificates in a CA's store so far, read without disturbing the CA writing it."""
    try:
        with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)) as db:
            return int(db.execute("SELECT count(*) FROM certificates").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


def test_fleet_run_pushes_revocations_and_a_root_rollover_to_two_workers(tmp_path: Path) -> None:
    """Two workers against the embedded CA: every revocation the run makes reaches the worker
    holding the device (the routes file) and is re-enrolled; ``fleet ca rollover`` on the CA's
    state mid-run pushes a ckuann the devices believe (a new trust anchor), and nothing fails
    after the switch."""
    report, ca_dir = tmp_path / "run.json", tmp_path / "ca"
    run = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli.main", "run", "profiles/revocation-push.toml", "--duration", "4",
         "--workers", "2", "--rate", "30", "--ca-dir", str(ca_dir), "--report", str(report), "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while _issued(ca_dir / STORE_FILE) < 10:  # devices hold certificates: the ckuann has receivers
            assert run.poll() is None and time.monotonic() < deadline, "the run issued no certificates"
            time.sleep(0.1)
        rolled = fleet("ca", "rollover", "--dir", str(ca_dir))
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        out, _ = run.communicate(timeout=90)
    finally:
        run.kill()
    assert run.returncode == 0, out
    assert "announcements: believed" in out
    results = json.loads(report.read_text())["results"]
    ops, pushed = results["operations"], results["announcements"]
    revoked = ops["revoke"]["ok"]
    assert revoked >= 5 and ops["revoke"]["failed"] == 0 and ops["ir"]["failed"] == 0
    # every revocation reached its device, on whichever worker holds it (the routes file)
    assert pushed["received"]["rann"] == revoked and pushed["unannounced"] == 0
    assert pushed["delivery"]["count"] == revoked and pushed["refused"] == {}
    assert pushed["reenrollments"] == ops["reenroll"]["ok"] == revoked
    # the rollover's ckuann, one per device with a valid certificate, each a trust anchor update
    assert pushed["received"]["ckuann"] == pushed["trust_updates"] > 0
    html = tmp_path / "run.html"
    shown = fleet("report", str(report), "--html", str(html))
    assert shown.returncode == 0, shown.stderr
    page = html.read_text()
    assert "<h2>Announcements</h2>" in page and "reenroll per second" in page
