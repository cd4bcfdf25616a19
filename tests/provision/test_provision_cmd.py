"""``fleet provision`` end to end: real subprocesses against ``fleet ca serve``, killed with
SIGKILL at random moments and rerun until done; then every device, file and CA record is checked,
and ``openssl verify`` accepts every chain."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from provision_helpers import (
    CaProcess,
    VendorPki,
    mac_manifest,
    make_csr,
    provision_argv,
    run_provision,
    secret_for,
)

from fleet.ca.pki import key_fingerprint
from fleet.ca.store import CertRecordStatus
from fleet.files import load_certificate, load_certificates, load_csr, load_private_key
from fleet.provision.journal import Journal, OrphanFate


def openssl_verify(ca: Path, chain: Path, *certs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca), "-untrusted", str(chain), *map(str, certs)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_dry_run_and_a_bad_manifest_send_nothing(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    mac_manifest(manifest, 3)
    ok = run_provision(str(manifest), "--dry-run")
    assert ok.returncode == 0 and "3 devices OK (3 ir/mac)" in ok.stdout
    manifest.write_text("id,subject,secret\na,/CN=a,pass:x\nb,/CN=b,env:PV_NOT_SET_ANYWHERE\nc,/QQ=c,pass:x\n")
    bad = run_provision(str(manifest), "--server", "http://127.0.0.1:9/", "--out", str(tmp_path / "out"))
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert lines[-1] == (f"fleet: error: manifest {manifest}: line 3: secret: environment variable "
                         "'PV_NOT_SET_ANYWHERE' for the secret is not set (and 1 more problems)")
    assert lines[0].startswith(f"fleet: manifest {manifest}: also line 4: subject: ")
    assert "Traceback" not in bad.stderr and not (tmp_path / "out").exists()


def test_mixed_mac_idevid_and_p10cr_devices(tmp_path: Path) -> None:
    vendor = VendorPki(tmp_path / "vendor")
    ca = CaProcess(tmp_path, "--vendor-trust", str(vendor.root_path))
    try:
        rows = ["id,subject,sans,secret,cert,key,csr,csr_key"]
        for i in range(4):
            rows.append(f"mac-{i},/CN=mac-{i}/O=Fleet,DNS:mac-{i}.example,pass:{secret_for(f'mac-{i}')},,,,")
        for i in range(3):
            cert, key = vendor.idevid(f"sig-{i}")
            rows.append(f"sig-{i},/CN=sig-{i},URI:urn:dev:sig-{i},,{cert},{key},,")
        for i in range(3):
            csr, csr_key = make_csr(tmp_path / "vendor", f"p10-{i}", keep_key=i < 2)
            rows.append(f"p10-{i},,,pass:{secret_for(f'p10-{i}')},,,{csr},{csr_key or ''}")
        manifest = tmp_path / "mixed.csv"
        manifest.write_text("\n".join(rows) + "\n")
        out = tmp_path / "out"
        result = run_provision(str(manifest), "--server", ca.url, "--out", str(out), "--trusted", str(ca.root_path),
                               "--key-pass", "pass:device-key-pw", "--p12", "--no-progress")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "10/10 provisioned" in result.stdout and "device-key-pw" not in result.stdout + result.stderr
        summary = json.loads((out / "summary.json").read_text())
        by_id = {r["id"]: r for r in summary["results"]}
        assert {(r["operation"], r["auth"]) for r in by_id.values()} == {("ir", "mac"), ("ir", "idevid"), ("p10cr", "mac")}
        for device_id in by_id:
            folder = out / device_id
            check = openssl_verify(folder / "ca.pem", folder / "chain.pem", folder / "cert.pem")
            assert check.returncode == 0 and check.stdout.strip().endswith(": OK"), check.stdout + check.stderr
            cert = load_certificate(folder / "cert.pem")
            if device_id.startswith("p10"):
                assert not (folder / "key.pem").exists() and not (folder / "device.p12").exists()
                csr = load_csr(tmp_path / "vendor" / f"{device_id}.csr")
                assert cert.public_key() == csr.public_key()
            else:
                assert stat.S_IMODE(os.stat(folder / "key.pem").st_mode) == 0o600
                key = load_private_key(folder / "key.pem", b"device-key-pw")
                assert cert.public_key() == key.public_key()
                assert (folder / "device.p12").exists()
    finally:
        ca.stop()


def _fleet_state(tmp_path: Path, out: Path, ca: CaProcess, ids: list[str]) -> None:
    """Every device: exactly one valid certificate at the CA, for its key; files whole; the CA's
    records = devices + orphans; openssl verify accepts every chain."""
    time.sleep(3.0 + 1.5)  # confirmWaitTime (3 s) and a tick: unconfirmed orphans are rejected
    ca.stop()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["provisioned"] == len(ids)
    leftovers = [p for p in out.rglob("*.tmp")]
    assert leftovers == []
    store = ca.store()
    try:
        counts = {k: v for k, v in store.counts_by_status().items() if v}
        serials: list[int] = []
        for device_id in ids:
            folder = out / device_id
            cert = load_certificate(folder / "cert.pem")
            key = load_private_key(folder / "key.pem")
            assert cert.public_key() == key.public_key()
            assert len(load_certificates(folder / "chain.pem")) >= 1 and len(load_certificates(folder / "ca.pem")) == 1
            mine = store.find_by_key(key_fingerprint(key.public_key()))
            valid = [r for r in mine if r.status is CertRecordStatus.ISSUED]
            assert [r.serial for r in valid] == [cert.serial_number], device_id
            serials.append(cert.serial_number)
    finally:
        store.close()
    with Journal.open(out / "journal.sqlite") as journal:
        orphans = list(journal.orphans.values())
    received = [o for o in orphans if o.received]
    possible = [o for o in orphans if not o.received]
    assert all(o.fate is not OrphanFate.PENDING_REVOKE for o in orphans)
    dead = counts.get("revoked", 0) + counts.get("rejected", 0)
    pending = counts.get("pending", 0)
    assert counts.get("issued") == len(ids)
    # Every certificate the CA made is a device's one, or an orphan fleet reported. Unconfirmed
    # orphans are rejected after confirmWaitTime; one issued to a polling transaction that was
    # killed stays pending until the CA's hung-transaction timeout (300 s), never confirmed.
    assert pending <= len(possible)
    assert len(received) <= dead + pending <= len(received) + len(possible)
    assert counts.get("revoked", 0) >= sum(1 for o in received if o.fate is OrphanFate.REVOKED)
    # openssl verify: all devices got the same CA files, so one call checks every certificate.
    first = out / ids[0]
    for device_id in ids:
        assert (out / device_id / "ca.pem").read_bytes() == (first / "ca.pem").read_bytes()
        assert (out / device_id / "chain.pem").read_bytes() == (first / "chain.pem").read_bytes()
    check = openssl_verify(first / "ca.pem", first / "chain.pem", *(out / i / "cert.pem" for i in ids))
    assert check.returncode == 0 and check.stdout.count(": OK") == len(ids), check.stdout[-2000:] + check.stderr


@pytest.mark.parametrize("faults", ["none", "faulty"])
def test_500_devices_survive_kill_9_at_random_moments(tmp_path: Path, faults: str) -> None:
    extra: list[str] = []
    run_extra: list[str] = []
    if faults == "faulty":  # 20% of new requests fail, every answer is delayed, some polled
        extra = ["--error-fraction", "0.2", "--latency", "uniform:0.002:0.03", "--waiting-fraction", "0.03",
                 "--check-after", "0.2", "--seed", "7"]
        run_extra = ["--backoff", "0.05", "--backoff-max", "0.4", "--max-attempts", "30"]
    ca = CaProcess(tmp_path, *extra, confirm_wait=3.0)
    try:
        manifest = tmp_path / "m.csv"
        ids = mac_manifest(manifest, 500)
        out = tmp_path / "out"
        argv = provision_argv(str(manifest), "--server", ca.url, "--out", str(out), "--no-progress",
                              "--concurrency", "24", "--seed", "3", *run_extra)
        # Paced so the batch takes longer than six kills can interrupt (500 devices at 50/s: 10 s,
        # each killed run at most 1.6 s): every kill lands mid-batch however fast the machine is.
        paced = argv + ["--rate", "50"]
        rng = random.Random(11 if faults == "none" else 12)
        # Six kill -9 at random moments; for the plain CA a Ctrl-C in the middle (slowed with
        # --rate so that a second run can try the journal meanwhile).
        schedule = ["kill"] * 3 + (["sigint"] if faults == "none" else []) + ["kill"] * 3
        kills = 0
        for run in range(40):
            step = schedule[run] if run < len(schedule) else "finish"
            args = argv + ["--rate", "40"] if step == "sigint" else paced if step == "kill" else argv
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    stdin=subprocess.DEVNULL)
            if step == "kill":
                try:
                    proc.wait(timeout=rng.uniform(0.6, 1.6))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate(timeout=30)
                    kills += 1
                    continue
            elif step == "sigint":
                lock = out / "journal.sqlite.lock"
                deadline = time.monotonic() + 60
                while not (lock.exists() and lock.read_text().strip() == str(proc.pid)):
                    assert time.monotonic() < deadline and proc.poll() is None, "the run never took the journal"
                    time.sleep(0.05)
                time.sleep(0.5)  # under way: holds the journal and sends requests
                busy = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
                proc.send_signal(signal.SIGINT)
                stdout, stderr = proc.communicate(timeout=60)
                assert busy.returncode == 1 and "is in use by another fleet provision" in busy.stderr, busy.stderr
                assert proc.returncode == 130, stderr[-3000:]
                assert "rerun the same command to resume" in stderr and "Traceback" not in stderr
                assert json.loads((out / "summary.json").read_text())["interrupted"] is True
                continue
            stdout, stderr = proc.communicate(timeout=120)
            assert "Traceback" not in stderr, stderr[-3000:]
            if proc.returncode == 0:
                break
            assert proc.returncode == 1, stderr[-3000:]
        else:
            pytest.fail("provisioning did not complete in 40 runs")
        assert kills >= 5
        assert "500/500 provisioned" in stdout
        _fleet_state(tmp_path, out, ca, ids)
    finally:
        ca.stop()
