"""``fleet cmp listen`` as a real process: announcements POSTed to it are believed or refused
one by one (a refused one never stops it), a rann of its own certificate says re-enroll, a
verified ckuann writes the new trust anchor, and ``--count`` ends it with exit 0. Hostile ckuanns
(a bad signature, another CA's rollover, a newWithNew that is not the key vouched for) are refused
each with its own failInfo and never become the trust anchor."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cli_helpers import env
from cmp.ca_stub import Credentials, issue, make_ca, make_cert
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from fleet.cmp import messages
from fleet.cmp.announce import KeyUpdateAnnouncement, RevAnnouncement, announce
from fleet.cmp.protection import SignatureProtector

NOW = datetime.now(UTC).replace(microsecond=0)


def _signer(ca: Credentials) -> SignatureProtector:
    s = issue(ca, "CMP signer")
    return SignatureProtector(s.key, s.cert, s.chain)


def _rann(ca: Credentials, serial: int) -> RevAnnouncement:
    return RevAnnouncement(5, messages.directory_name(ca.cert.subject.public_bytes()), serial, NOW,
                           NOW - timedelta(hours=1))


def _post(port: int, body: bytes) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/announce", data=body, method="POST",
                                 headers={"Content-Type": "application/pkixcmp"})
    try:
        with urllib.request.urlopen(req, timeout=10) as rsp:
            return rsp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_listen_believes_acts_and_refuses(tmp_path: Path) -> None:
    ca, other = make_ca("Device CA"), make_ca("Other CA")
    device = issue(ca, "device-1")
    (tmp_path / "root.pem").write_bytes(ca.cert.public_bytes(Encoding.PEM))
    (tmp_path / "device.pem").write_bytes(device.cert.public_bytes(Encoding.PEM))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli.main", "cmp", "listen", "--trusted", "root.pem", "--cert", "device.pem",
         "--trusted-out", "new-root.pem", "--count", "3"],
        cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], 30)[0]
        first = proc.stdout.readline()
        port = int(first.rsplit("(port ", 1)[1].split(")")[0])
        ours = _signer(ca)

        def send(a, signer: SignatureProtector = ours) -> bytes:  # type: ignore[no-untyped-def]
            return announce(a, signer, now=time.time(), random=os.urandom)

        tampered = bytearray(send(_rann(ca, device.cert.serial_number)))
        tampered[tampered.index(b"Device CA") + 1] ^= 1
        new_key = ec.generate_private_key(ec.SECP256R1())
        new_root = Credentials(new_key, make_cert(ca.cert.subject, new_key.public_key(), None, new_key, ca=True))
        update = KeyUpdateAnnouncement(
            make_cert(ca.cert.subject, ca.key.public_key(), new_root, new_key, ca=True).public_bytes(Encoding.DER),
            make_cert(ca.cert.subject, new_key.public_key(), ca, ca.key, ca=True).public_bytes(Encoding.DER),
            new_root.cert.public_bytes(Encoding.DER),
        )
        other_key = ec.generate_private_key(ec.SECP256R1())
        other_new = Credentials(other_key, make_cert(other.cert.subject, other_key.public_key(), None, other_key,
                                                     ca=True))
        others_update = KeyUpdateAnnouncement(  # another CA's rollover, sent by our signer
            make_cert(other.cert.subject, other.key.public_key(), other_new, other_key, ca=True).public_bytes(Encoding.DER),
            make_cert(other.cert.subject, other_key.public_key(), other, other.key, ca=True).public_bytes(Encoding.DER),
            other_new.cert.public_bytes(Encoding.DER),
        )
        broken_update = KeyUpdateAnnouncement(update.old_with_new, update.new_with_old,
                                              other_new.cert.public_bytes(Encoding.DER))  # newWithNew: another key
        tampered_update = bytearray(send(update))
        tampered_update[tampered_update.index(b"Device CA") + 1] ^= 1
        statuses = [
            _post(port, send(_rann(other, 7), _signer(other))),  # another CA's signer
            _post(port, bytes(tampered)),  # bad signature
            _post(port, send(_rann(other, 7))),  # our CA announcing another CA's certificate
            _post(port, bytes(tampered_update)),  # a ckuann with a bad signature
            _post(port, send(others_update)),  # a ckuann for another CA
            _post(port, send(broken_update)),  # a ckuann whose newWithNew is not the key vouched for
            _post(port, send(_rann(ca, device.cert.serial_number))),  # ours: re-enroll
            _post(port, send(update)),  # our CA's key rollover
            _post(port, send(_rann(ca, 12345))),  # another device's certificate
        ]
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert statuses == [400] * 6 + [200] * 3
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["accepted"], x.get("fail_info")) for x in lines[:6]] == [
        (False, "signerNotTrusted"), (False, "badMessageCheck"), (False, "wrongAuthority"),
        (False, "badMessageCheck"), (False, "wrongAuthority"), (False, "badCertId")]
    believed = lines[6:]
    assert believed[0] == {"accepted": True, "body": "rann", "serial": device.cert.serial_number, "status": 5,
                        "this_device": True, "action": "re-enroll"}
    assert believed[1]["action"] == "trust anchor updated"
    assert believed[2]["this_device"] is False
    written = x509.load_pem_x509_certificate((tmp_path / "new-root.pem").read_bytes())
    assert written == new_root.cert
