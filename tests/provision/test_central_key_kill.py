"""``fleet provision`` with central keys (the CA generates them), killed with SIGKILL at random
moments and rerun until done: no key is lost (every device ends with the key of its one valid
certificate), none is issued twice (no two certificates at the CA share a key), and after every
kill the journal holds no plaintext private key and refers to no certificate whose key is not
already on disk (written 0600 before the journal says 'received')."""

from __future__ import annotations

import random
import sqlite3
import stat
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from provision_helpers import CaProcess, provision_argv, secret_for
from test_provision_cmd import _fleet_state

from fleet.cmp.trust import load_cert
from fleet.files import load_certificate, load_private_key
from fleet.provision.journal import DeviceState, Journal

# A plaintext PKCS #8 EC key begins with version 0 and the id-ecPublicKey algorithm.
PKCS8_EC_PREFIX = bytes.fromhex("020100301306072a8648ce3d0201")


def _manifest(path: Path, count: int) -> list[str]:
    ids = [f"k{i:03d}" for i in range(count)]
    rows = ["id,subject,secret,central_key"]
    rows += [f"{i},/CN={i}/O=Fleet,pass:{secret_for(i)},ec:P-256" for i in ids]
    path.write_text("\n".join(rows) + "\n")
    return ids


def _spki(obj) -> bytes:  # type: ignore[no-untyped-def]
    return obj.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_journal_after_a_kill(out: Path) -> None:
    """What a kill leaves: no plaintext key in the journal's files, and every certificate the
    journal holds for a device ('received' or 'confirmed') has its key already in key.pem."""
    files = [p for p in out.glob("journal.sqlite*") if p.suffix != ".lock"]
    on_disk = [load_private_key(p) for p in out.glob("*/key.pem")]
    scalars = [k.private_numbers().private_value.to_bytes(32, "big") for k in on_disk]  # type: ignore[union-attr]
    for path in files:
        data = path.read_bytes()
        assert PKCS8_EC_PREFIX not in data and b"PRIVATE KEY" not in data, path
        assert not any(s in data for s in scalars), path
    with Journal.open(out / "journal.sqlite") as journal:
        held = [r for r in journal.devices.values() if r.state in (DeviceState.RECEIVED, DeviceState.CONFIRMED)]
    for rec in held:
        key_path = out / rec.device_id / "key.pem"
        assert key_path.exists(), f"{rec.device_id}: the journal holds a certificate whose key is not on disk"
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert rec.certificate is not None
        assert _spki(load_private_key(key_path)) == _spki(load_cert(rec.certificate)), rec.device_id


def test_central_keys_survive_kill_9_at_random_moments(tmp_path: Path) -> None:
    ca = CaProcess(tmp_path, "--kga")
    try:
        manifest, out = tmp_path / "m.csv", tmp_path / "out"
        ids = _manifest(manifest, 40)
        argv = provision_argv(str(manifest), "--server", ca.url, "--out", str(out), "--no-progress",
                              "--concurrency", "8", "--seed", "5")
        rng = random.Random(13)
        kills = 0
        for run in range(20):
            kill = run < 4
            # Paced while it is to be killed (40 devices at 12/s: over 3 s), so each kill lands mid-batch.
            proc = subprocess.Popen(argv + (["--rate", "12"] if kill else []), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
            if kill:
                try:
                    proc.wait(timeout=rng.uniform(0.9, 1.8))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate(timeout=30)
                    kills += 1
                    if (out / "journal.sqlite").exists():
                        _check_journal_after_a_kill(out)
                    continue
            stdout, stderr = proc.communicate(timeout=120)
            assert "Traceback" not in stderr, stderr[-3000:]
            if proc.returncode == 0:
                break
            assert proc.returncode == 1, stderr[-3000:]
        else:
            raise AssertionError("provisioning did not complete in 20 runs")
        assert kills >= 3
        assert f"{len(ids)}/{len(ids)} provisioned" in stdout
        _check_journal_after_a_kill(out)
        _fleet_state(tmp_path, out, ca, ids)  # one valid certificate per device, for its key.pem
    finally:
        ca.stop()
    with sqlite3.connect(ca.dir / "certs.sqlite") as db:  # the CA stopped: its store is flushed
        twice = db.execute("SELECT COUNT(*) FROM certificates GROUP BY key_sha256 HAVING COUNT(*) > 1").fetchall()
        total = db.execute("SELECT COUNT(*) FROM certificates").fetchone()[0]
    assert total >= len(ids) and twice == [], "a centrally generated key was issued twice"
    store = ca.store()
    try:
        for device_id in ids:
            cert = load_certificate(out / device_id / "cert.pem")
            assert store.central_key(cert.serial_number) == ("ec:P-256", "pwri"), device_id
    finally:
        store.close()
