"""Prepared devices: the CertRequest and POP made ahead are exactly what the live path sends and
fleet's real CA accepts; the pool file's integrity and used watermark; ``[devices].prepared``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from inprocess_ca import MASTER, InProcessCa

from fleet.cmp import der
from fleet.cmp.client import ClientTransaction
from fleet.cmp.errors import RequestRejected
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import pbm_key
from fleet.cmp.requests import CertRequest, PreparedCertRequest, body_der, build_body, spki_der
from fleet.cmp.trust import TrustStore, load_cert
from fleet.exchange import run_transaction
from fleet.keys import KeyPool, KeySpec
from fleet.load.device import DeviceFactory
from fleet.load.prepared import Identity, PreparedKey, PreparedPool, PreparedPoolError
from fleet.load.prepared_store import PreparedStore, prepare_range
from fleet.load.profiles import DevicePopulation, ProfileError, parse_profile

ROOT = Path(__file__).resolve().parents[2]
DEVICES = DevicePopulation(count=20, subject="/O=Test/CN=nf-{index}", sans=("URI:urn:uuid:{uuid}", "DNS:nf-{index}.example"))


def _factory(prepared: PreparedPool | None = None, ca: InProcessCa | None = None) -> DeviceFactory:
    spec = KeySpec.parse("ec:P-256")
    return DeviceFactory(DEVICES, {"ec:P-256": KeyPool(spec, (), on_exhausted="generate")}, master_secret=MASTER,
                         trust=TrustStore([ca.root()] if ca else []), prepared=prepared)


def test_a_prepared_body_is_the_live_body_with_its_own_pop() -> None:
    pool = PreparedPool.from_records(KeySpec.parse("ec:P-256"), prepare_range(DEVICES, 0, 3))
    taken = pool.request(2, BodyType.IR)
    assert taken is not None
    prepared, key = taken
    factory = _factory()
    live = CertRequest(BodyType.IR, key.load(), factory.subject_der(2), factory.sans(2))
    mine, theirs = build_body(prepared).messages[0], build_body(live).messages[0]  # type: ignore[union-attr]
    assert mine.cert_request_der == theirs.cert_request_der  # same key, subject, SANs: same bytes
    assert prepared.spki == live.spki
    public = key.load().public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(mine.popo.signature, mine.cert_request_der, ec.ECDSA(hashes.SHA256()))  # raises if wrong
    assert der.parse(body_der(prepared)).tag == 0xA0  # ir
    assert pool.request(2, BodyType.IR) is None and pool.missed == 1  # handed out once
    assert "PRIVATE" not in repr(key) and key.raw.hex() not in repr(key)


async def _enroll(ca: InProcessCa, devices: DeviceFactory, index: int, op: str = "ir") -> object:
    protector, request, key = devices.request(op, index)
    tx = ClientTransaction(devices.client_config, request, protector=protector)
    async with ca.transport() as transport:
        done = await run_transaction(transport, tx)
    devices.enrolled(index, key, done.certificate, done.chain)  # type: ignore[arg-type]
    return request


def test_the_ca_issues_for_a_prepared_device_and_it_renews_and_revokes(tmp_path: Path) -> None:
    ca = InProcessCa(tmp_path / "ca")
    try:
        pool = PreparedPool.from_records(KeySpec.parse("ec:P-256"), prepare_range(DEVICES, 0, 4))
        devices = _factory(pool, ca)
        assert devices.prepare_macs(range(4)) == 4
        misses = pbm_key.cache_info().misses
        devices.mac(3).protect(b"the first message")
        assert pbm_key.cache_info().misses == misses  # derived before, not now

        async def main() -> None:
            request = await _enroll(ca, devices, 3)
            assert isinstance(request, PreparedCertRequest)
            state = devices.states[3]
            assert isinstance(state.key, PreparedKey)
            cert = load_cert(state.cert)
            assert cert.subject.rfc4514_string() == "CN=nf-3,O=Test"
            assert cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == request.spki
            await _enroll(ca, devices, 3, "kur")  # signs with the prepared key, made a key object now
            assert not isinstance(devices.states[3].key, PreparedKey)
            await _enroll(ca, devices, 3, "rr")
            again = await _enroll(ca, devices, 3)  # the device comes round again: a live key, not the same one
            assert isinstance(again, CertRequest) and again.spki != request.spki

        trio.run(main)
        # a POP that does not match is refused by the CA: the prepared one is really checked
        taken = PreparedPool.from_records(KeySpec.parse("ec:P-256"), prepare_range(DEVICES, 0, 1)).request(0, BodyType.IR)
        assert taken is not None
        bad = PreparedCertRequest(BodyType.IR, taken[0].cert_request, taken[0].algorithm, taken[0].signature[:-1] + b"\0",
                                  taken[0].spki)
        tx = ClientTransaction(devices.client_config, bad, protector=devices.mac(0))

        async def refused() -> None:
            async with ca.transport() as transport:
                await run_transaction(transport, tx)

        with pytest.raises(RequestRejected, match="badPOP"):
            trio.run(refused)
    finally:
        ca.close()


def test_the_store_checks_integrity_and_claims_a_pool_once(tmp_path: Path) -> None:
    store = PreparedStore(tmp_path)
    identity = Identity.of(DEVICES)
    path = store.write(identity, prepare_range(DEVICES, 0, 10))
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    middle = store.load(path, identity, 4, 3)
    assert (len(middle), middle.start) == (3, 4)
    assert middle.request(3, BodyType.IR) is None and middle.request(7, BodyType.IR) is None
    assert middle.request(5, BodyType.IR) is not None
    assert middle.memory_bytes() < 600 * 3
    # claimed once for an ordinary run; "reuse" takes it again
    assert store.claim(identity, 11, reuse=False) is None  # too small for that run
    assert store.claim(identity, 6, reuse=False) is not None
    assert store.list()[0].used == 6
    assert store.claim(identity, 6, reuse=False) is None
    info = store.claim(identity, 10, reuse=True)
    assert info is not None and store.list()[0].used == 10
    other = Identity("ec:P-256", "/CN=other-{index}", ())
    with pytest.raises(PreparedPoolError, match="is for ec:P-256 /O=Test"):
        store.load(path, other)
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(PreparedPoolError, match="SHA-256 mismatch"):
        store.load(path, identity)
    data[-5] ^= 1
    data[8] ^= 1  # the watermark
    path.write_bytes(bytes(data))
    with pytest.raises(PreparedPoolError, match="watermark is damaged"):
        store.load(path, identity)
    assert store.list()[0].problem is not None


@pytest.mark.parametrize(("devices", "fragment"), [
    ('key_types = "rsa:2048"\nprepared = true', "exactly one key_types entry"),
    ('key_types = { "ec:P-256" = 0.5, "ed25519" = 0.5 }\nprepared = true', "exactly one key_types entry"),
    ('prepared = "yes"', 'must be true, false or "reuse"'),
])
def test_profile_prepared_is_checked(devices: str, fragment: str) -> None:
    import tomllib

    with pytest.raises(ProfileError, match=fragment):
        parse_profile(tomllib.loads(f"[devices]\n{devices}\n"), where="p.toml")


def _fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleet.cli.main", *args], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_fleet_run_uses_a_prepared_pool_once_and_keys_manages_them(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text("""
[run]
duration = 2
flow = ["ir", "kur", "rr"]
workers = 2
[arrivals]
shape = "constant"
rate = 15
[devices]
count = 20
key_types = "ec:P-256"
subject = "/CN=prep-{index}"
sans = ["DNS:prep-{index}.example"]
prepared = true
[slo]
max_error_rate = 0.0
""")
    keys = tmp_path / "keys"
    made = _fleet("keys", "prepare", str(profile), "--dir", str(keys), "--workers", "1")
    assert made.returncode == 0 and "prepared 20 devices" in made.stdout, made.stdout + made.stderr
    report = tmp_path / "run.json"
    run = _fleet("run", str(profile), "--keys", str(keys), "--report", str(report), "--quiet")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "unused before this run" in run.stderr
    assert re.search(r"prepared devices: \d+ requests prepared, \d+ keys made live", run.stdout), run.stdout
    ops = json.loads(report.read_text())["results"]["operations"]
    assert all(ops[op]["ok"] == 30 for op in ("ir", "kur", "rr")), ops  # 30 arrivals on 20 devices: 10 came round
    listed = _fleet("keys", "list", "--dir", str(keys))
    assert listed.returncode == 0 and "PREPARED" in listed.stdout and "prep-{index}" in listed.stdout
    removed = _fleet("keys", "remove", "--used", "--dir", str(keys))
    assert removed.returncode == 0 and removed.stdout.count("removed") == 1, removed.stdout + removed.stderr
    missing = _fleet("keys", "remove", "nope", "--dir", str(keys))
    assert missing.returncode == 1 and missing.stderr.startswith("fleet: error: no prepared pool 'nope'")


@pytest.mark.parametrize("kur", [False, True])
def test_a_helper_process_prepares_the_devices_that_come_round_again(kur: bool) -> None:
    from fleet.load.refill import start_helper

    records = prepare_range(DEVICES, 0, 3, kur)
    pool = PreparedPool.from_records(KeySpec.parse("ec:P-256"), records, kur=kur)
    first = {pool.request(i, BodyType.IR)[0].spki for i in range(3)}  # type: ignore[index]
    process, refill = start_helper(DEVICES, range(3), 3, ahead=128, kur=kur)  # arrival 3 is device 0 again
    pool.refill = refill
    try:
        again = None
        for _ in range(400):  # the helper process starts in a second or so
            again = pool.request(0, BodyType.IR)
            if again is not None:
                break
            trio.run(trio.sleep, 0.05)
        assert again is not None and again[0].spki not in first  # a new key for the same device
        kur_key = again[1].kur
        assert (kur_key is not None) == kur
        if kur_key is not None:  # a new kur key too, matching its SPKI
            assert kur_key.spki not in first and kur_key.spki == spki_der(kur_key.load())
        assert der.parse(again[0].cert_request).raw == again[0].cert_request
        second = [pool.request(i, BodyType.IR) for i in (1, 2, 0)]
        assert all(s is not None for s in second) and refill.received >= 4
    finally:
        refill.close()
        process.terminate()
        process.join(5)


def test_eddsa_devices_are_prepared_too() -> None:
    from dataclasses import replace

    from cryptography.hazmat.primitives.asymmetric import ed25519

    devices = replace(DEVICES, key_types=((KeySpec.parse("ed25519"), 1.0),))
    pool = PreparedPool.from_records(KeySpec.parse("ed25519"), prepare_range(devices, 0, 2))
    taken = pool.request(1, BodyType.CR)
    assert taken is not None
    request, key = taken
    loaded = key.load()
    assert isinstance(loaded, ed25519.Ed25519PrivateKey)
    assert loaded.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == request.spki
    loaded.public_key().verify(request.signature, request.cert_request)  # raises if wrong
    assert der.parse(body_der(request)).tag == 0xA2  # cr


def test_a_prepared_device_updates_to_the_kur_key_of_its_record(tmp_path: Path) -> None:
    ca = InProcessCa(tmp_path / "ca")
    try:
        records = prepare_range(DEVICES, 0, 2, kur=True)
        pool = PreparedPool.from_records(KeySpec.parse("ec:P-256"), records, kur=True)
        devices = _factory(pool, ca)
        taken = PreparedPool.from_records(pool.spec, records[1:], 1, kur=True).request(1, BodyType.IR)  # a look at it
        assert taken is not None and taken[1].kur is not None
        kur_spki = taken[1].kur.spki
        assert kur_spki != taken[0].spki and "PRIVATE" not in repr(taken[1].kur)

        async def main() -> None:
            await _enroll(ca, devices, 1)
            request = await _enroll(ca, devices, 1, "kur")  # the CertRequest and POP made now, with oldCertID
            assert isinstance(request, CertRequest) and request.spki == kur_spki
            cert = load_cert(devices.states[1].cert)
            assert cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == kur_spki
            again = await _enroll(ca, devices, 1, "kur")  # its prepared kur key is spent: a live one
            assert isinstance(again, CertRequest) and again.spki not in (kur_spki, request.spki)

        trio.run(main)
        assert (pool.kur_taken, pool.kur_missed) == (1, 1)
    finally:
        ca.close()


def test_pools_of_either_format_load_only_for_their_flow(tmp_path: Path) -> None:
    store = PreparedStore(tmp_path)
    plain, with_kur = Identity.of(DEVICES), Identity.of(DEVICES, kur=True)
    old = store.write(plain, prepare_range(DEVICES, 0, 2))  # format version 1, as before kur keys
    assert old.read_bytes()[:8] == b"FLEETPD\x01"
    assert store.load(old, plain).request(0, BodyType.IR) is not None
    with pytest.raises(PreparedPoolError, match=r"holds no kur keys \(a pool of format version 1\), this run's flow has kur"):
        store.load(old, with_kur)
    assert store.claim(with_kur, 2, reuse=True) is None  # never taken for a flow with kur
    new = store.write(with_kur, prepare_range(DEVICES, 0, 2, kur=True))
    assert new.read_bytes()[:8] == b"FLEETPD\x02" and new.name != old.name
    with pytest.raises(PreparedPoolError, match="holds kur keys, this run's flow has no kur"):
        store.load(new, plain)
    taken = store.load(new, with_kur).request(1, BodyType.IR)
    assert taken is not None and taken[1].kur is not None
    data = bytearray(new.read_bytes())
    data[7] = 9
    new.write_bytes(bytes(data))
    with pytest.raises(PreparedPoolError, match="has format version 9, this fleet reads 1 and 2; remove it"):
        store.load(new, with_kur)


def test_fleet_run_ir_kur_takes_the_prepared_kur_keys(tmp_path: Path) -> None:
    import sqlite3

    from cryptography.x509 import load_der_x509_certificate

    profile = tmp_path / "p.toml"
    profile.write_text("""
[run]
duration = 1
flow = ["ir", "kur"]
[arrivals]
shape = "constant"
rate = 6
[devices]
count = 8
key_types = "ec:P-256"
subject = "/CN=kurprep-{index}"
prepared = true
[slo]
max_error_rate = 0.0
""")
    keys, ca_dir, report = tmp_path / "keys", tmp_path / "ca", tmp_path / "run.json"
    run = _fleet("run", str(profile), "--keys", str(keys), "--ca-dir", str(ca_dir), "--report", str(report), "--quiet")
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"kur: \d+ new keys prepared, 0 made live", run.stdout), run.stdout
    results = json.loads(report.read_text())["results"]
    kurs = results["operations"]["kur"]["ok"]
    assert kurs >= 1 and results["prepared"]["kur_prepared"] == kurs and results["prepared"]["kur_live"] == 0
    [info] = PreparedStore(keys).list()
    assert info.identity is not None and info.identity.kur
    pool = PreparedStore(keys).load(info.path, info.identity)
    prepared = {}  # ir SPKI -> kur SPKI, per device, from the pool itself
    for i in range(len(pool)):
        taken = pool.request(i, BodyType.IR)
        assert taken is not None and taken[1].kur is not None
        prepared[taken[0].spki] = taken[1].kur.spki
    with sqlite3.connect(ca_dir / "certs.sqlite") as db:
        certs = {serial: load_der_x509_certificate(blob) for serial, blob in db.execute("SELECT serial, der FROM certificates")}
        replaced = list(db.execute("SELECT serial, by_serial FROM replaced_certificates"))
    assert len(replaced) == kurs
    spki = {s: c.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) for s, c in certs.items()}
    for old, new in replaced:
        assert spki[new] == prepared[spki[old]] and spki[new] != spki[old]  # the kur certified its record's kur key
