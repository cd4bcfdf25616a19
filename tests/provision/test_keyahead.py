"""``fleet provision --key-ahead N``: keys made ahead in worker processes, written only when the
device starts; a SIGKILL leaves no key file for a device that had not started, no worker behind,
and the rerun completes with every certificate matching its key file."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from provision_helpers import CaProcess, provision_argv, run_provision, secret_for

from fleet.files import load_certificate, load_private_key
from fleet.keytypes import KeySpec
from fleet.provision.journal import DeviceState, Journal, updated
from fleet.provision.keyahead import KeyAhead, planned_key_types
from fleet.provision.manifest import parse_manifest

P256, ED25519, RSA2048 = KeySpec.parse("ec:P-256"), KeySpec.parse("ed25519"), KeySpec.parse("rsa:2048")


def _manifest(path: Path, types: list[str]) -> list[str]:
    ids = [f"k{i:04d}" for i in range(len(types))]
    rows = ["id,subject,secret,key_type"]
    rows += [f"{i},/CN={i}/O=Fleet,pass:{secret_for(i)},{t}" for i, t in zip(ids, types, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return ids


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(c) for c in (task / "children").read_text().split())
        except FileNotFoundError:  # a thread that has just ended
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_planned_keys_are_taken_in_order_and_a_key_not_planned_is_made_on_the_spot() -> None:
    with KeyAhead([P256, ED25519, RSA2048, P256], depth=2, workers=1) as ahead:
        first = ahead._pending[P256][0]
        deadline = time.monotonic() + 60
        while not (first.running() or first.done()):  # handed to the worker: taken, not cancelled
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert isinstance(ahead.take(P256), ec.EllipticCurvePrivateKey)
        assert isinstance(ahead.take(ED25519), ed25519.Ed25519PrivateKey)
        key = ahead.take(RSA2048)
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
        assert isinstance(ahead.take(P256), ec.EllipticCurvePrivateKey)
        extra = ahead.take(P256)  # beyond the plan: made here
        assert isinstance(extra, ec.EllipticCurvePrivateKey)
        stats = ahead.statistics()
    assert stats.prepared + stats.made_on_the_spot == 5 and stats.made_on_the_spot >= 1
    assert stats.prepared >= 1  # the worker made at least the first while the test waited for it


def test_only_devices_that_still_need_a_key_are_planned(tmp_path: Path) -> None:
    devices = parse_manifest("id,subject,secret,key_type\n"
                             "a,/CN=a,pass:x,rsa:2048\nb,/CN=b,pass:x,ec:P-256\nc,/CN=c,pass:x,ed25519\n")
    with Journal.open(tmp_path / "j.sqlite") as journal:
        rec = updated(journal.device("b"), state=DeviceState.KEY)
        journal.remember([(rec, "key")])
        assert planned_key_types(devices, journal) == [RSA2048, ED25519]
        assert planned_key_types(devices, journal, token=True) == []


def test_key_ahead_provisions_with_keys_written_0600_when_devices_start(tmp_path: Path) -> None:
    ca = CaProcess(tmp_path)
    try:
        manifest = tmp_path / "m.csv"
        ids = _manifest(manifest, ["rsa:2048", "ec:P-256", "ed25519"] * 4)
        out = tmp_path / "out"
        done = run_provision(str(manifest), "--server", ca.url, "--out", str(out), "--no-progress",
                             "--key-ahead", "6", "--concurrency", "3")
        assert done.returncode == 0, done.stderr[-3000:]
        assert "PRIVATE KEY" not in done.stdout + done.stderr
        for device_id in ids:
            key_path = out / device_id / "key.pem"
            assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
            assert load_certificate(out / device_id / "cert.pem").public_key() == load_private_key(key_path).public_key()
        bad = run_provision(str(manifest), "--server", ca.url, "--out", str(out), "--key-ahead", "-1")
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
    finally:
        ca.stop()


def test_a_kill_leaves_no_key_of_a_device_that_had_not_started_and_resume_completes(tmp_path: Path) -> None:
    ca = CaProcess(tmp_path)
    try:
        manifest = tmp_path / "m.csv"
        ids = _manifest(manifest, ["ec:P-256"] * 150)
        out = tmp_path / "out"
        argv = provision_argv(str(manifest), "--server", ca.url, "--out", str(out), "--no-progress",
                              "--key-ahead", "100", "--concurrency", "4")
        proc = subprocess.Popen([*argv, "--rate", "15"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(list(out.glob("*/key.pem"))) < 10:  # under way, the workers far ahead (EC keys are quick)
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert workers, "no worker process"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers):  # each worker notices its parent is gone
            assert time.monotonic() < deadline, "a key worker outlived the provisioner"
            time.sleep(0.1)
        # A key file (or the temporary file of one being written) only in a device's folder...
        with_key = {p.parent.name for p in [*out.glob("*/key.pem"), *out.glob("*/*.tmp")]}
        with Journal.open(out / "journal.sqlite") as journal:
            started = {i for i in ids if journal.device(i).state is not DeviceState.NEW}
        # ... of a device that had started: recorded, or written in the last moments before its
        # journal step was committed (at most one per concurrent device).
        assert len(with_key - started) <= 4, (len(with_key), len(started))
        assert len(with_key) < 100  # far fewer than the keys made ahead
        done = run_provision(*argv[4:])
        assert done.returncode == 0, done.stderr[-3000:]
        assert not list(out.rglob("*.tmp"))  # the rerun clears what the kill interrupted
        for device_id in ids:
            key_path = out / device_id / "key.pem"
            assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
            assert load_certificate(out / device_id / "cert.pem").public_key() == load_private_key(key_path).public_key()
        assert os.path.getsize(out / "summary.json") > 0
    finally:
        ca.stop()


def test_a_dead_worker_makes_the_devices_make_their_own_keys() -> None:
    with KeyAhead([P256] * 6, depth=2, workers=1) as ahead:
        assert isinstance(ahead.take(P256), ec.EllipticCurvePrivateKey)
        executor = ahead._executor
        assert executor is not None
        for process in list(executor._processes.values()):  # kill the worker under the pool
            process.kill()
            process.join(10)
        keys = [ahead.take(P256) for _ in range(5)]
        assert all(isinstance(k, ec.EllipticCurvePrivateKey) for k in keys)
        assert ahead.statistics().made_on_the_spot >= 1
