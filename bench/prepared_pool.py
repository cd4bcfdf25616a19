"""Prepared-device pools (``fleet/load/prepared.py``): preparation rate, load time, memory.

1. Preparation per core: devices prepared per second of one process's CPU (key pair, SPKI,
   CertRequest, POP signature, record), for a subject-only identity and for one with a
   ``URI:urn:uuid:{uuid}`` SAN (``profiles/smoke.toml``'s devices).
2. A pool of ``--pool`` devices (default 1,000,000; the records of ``--distinct`` prepared devices
   repeated, which is the same work to store and load): write time, file size, then the time a
   worker takes to load it (read, SHA-256 over the whole file, offsets) and the pool's memory
   per device, its own (buffer, offsets, flags) and the process's RSS growth.
   With ``--kur``, the same for a pool whose records carry a kur key and its SPKI too (a
   profile whose flow has kur).
3. kur's new key: what the live path pays to make it and its SPKI, against materialising a
   prepared one (the POP of a kur must be signed live: it covers the oldCertID control); then the
   client CPU of a whole kur request as ``DeviceFactory.request("kur")`` builds it and
   ``ClientTransaction.start`` encodes it (new key, CertRequest with oldCertID, POP, header,
   signature protection by the old key), live against prepared, in one process, best of 5. The
   rest of the kur transaction (kup check, certConf, pkiConf) is the same for both.

Usage: python bench/prepared_pool.py [--devices 20000] [--pool 1000000] [--distinct 10000] [--kur]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import timeit
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.cmp.requests import spki_der
from fleet.keytypes import KeySpec
from fleet.load.prepared import Identity, key_bytes, key_from_bytes
from fleet.load.prepared_store import PreparedStore, prepare_range
from fleet.load.profiles import DevicePopulation


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def preparation_rate(devices: DevicePopulation, n: int, kur: bool = False) -> float:
    prepare_range(devices, 0, 200, kur)  # warm-up
    started = time.process_time()
    prepare_range(devices, 0, n, kur)
    return n / (time.process_time() - started)


def pool_load(pool: int, distinct: int, kur: bool = False) -> None:
    devices = DevicePopulation(count=pool)
    records = prepare_range(devices, 0, distinct, kur)
    with tempfile.TemporaryDirectory() as folder:
        store = PreparedStore(folder)
        identity = Identity.of(devices, kur=kur)
        started = time.perf_counter()
        path = store.write(identity, records * (pool // distinct) + records[: pool % distinct])
        written = time.perf_counter() - started
        size = path.stat().st_size
        gc.collect()
        rss0 = _rss_kib()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        loaded = store.load(path, identity)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        rss = (_rss_kib() - rss0) * 1024
        print(f"pool of {len(loaded):,} devices{' with kur keys' if kur else ''}: written in {written:.2f} s ({size / len(loaded):.0f} B per device on disk)")
        print(f"  load (read, SHA-256 of the file, offsets): {wall:.2f} s wall, {cpu:.2f} s CPU (target <= 10 s)")
        print(f"  memory: {loaded.memory_bytes() / len(loaded):.0f} B per device in the pool, "
              f"RSS +{rss / len(loaded):.0f} B per device (target <= 600 B)")


def kur_key(n: int = 5000) -> None:
    spec = KeySpec.parse("ec:P-256")
    key = spec.generate()
    raw, _ = key_bytes(key)
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    cases = {
        "live: generate + SPKI": lambda: spki_der(ec.generate_private_key(ec.SECP256R1())),
        "prepared SEC 1 DER -> key object": lambda: key_from_bytes(spec, raw),
        "prepared PKCS#8 -> key object": lambda: serialization.load_der_private_key(pkcs8, None),
    }
    for name, call in cases.items():
        best = min(timeit.repeat(call, number=n, repeat=5)) / n * 1e6
        print(f"  {name:36} {best:6.1f} µs")


def kur_request_cpu(n: int = 2000) -> None:
    """Client CPU of a kur's request message, live key against prepared key (see the docstring)."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from fleet.cmp.client import ClientTransaction
    from fleet.cmp.messages import BodyType
    from fleet.cmp.trust import TrustStore
    from fleet.keys import KeyPool
    from fleet.load.device import DeviceFactory
    from fleet.load.prepared import PreparedPool

    spec = KeySpec.parse("ec:P-256")
    devices = DevicePopulation(count=n, subject="/CN=kur-{index}")
    ca_key = spec.generate()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "bench CA")])
    now = datetime.now(UTC)
    old_key = spec.generate()  # every device's current key: the same for both cases
    old_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(old_key.public_key())
                .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
                .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    cert_der = old_cert.public_bytes(serialization.Encoding.DER)

    def factory(prepared: PreparedPool | None, old_key_loaded: bool = True) -> DeviceFactory:
        made = DeviceFactory(devices, {str(spec): KeyPool(spec, (), on_exhausted="generate")}, master_secret=b"bench",
                             trust=TrustStore([old_cert]), prepared=prepared)
        for i in range(n):
            if prepared is not None:  # the ir took device i's record: its kur key goes with the device
                taken = prepared.request(i, BodyType.IR)
                assert taken is not None
                made.enrolled(i, taken[1], cert_der)
            else:
                made.enrolled(i, old_key, cert_der)
            if old_key_loaded:  # else the ir's prepared key is made a key object at the kur, as in a run
                made.states[i].key = old_key
        return made

    def timed(made: DeviceFactory) -> float:
        config = made.client_config
        cpu0 = time.process_time()
        for i in range(n):
            protector, request, _ = made.request("kur", i)
            ClientTransaction(config, request, protector=protector).start()
        return (time.process_time() - cpu0) / n * 1e6

    records = prepare_range(devices, 0, n, True)
    figures: dict[str, list[float]] = {"live": [], "prepared": [], "device": []}
    for _ in range(5):  # alternated, so drift on a shared machine hits all alike
        figures["live"].append(timed(factory(None)))
        for case, loaded in (("prepared", True), ("device", False)):
            pool = PreparedPool.from_records(spec, records, kur=True, reuse=True)
            figures[case].append(timed(factory(pool, loaded)))
            assert pool.kur_missed == 0
    live, prepared, device = (min(figures[c]) for c in ("live", "prepared", "device"))
    print(f"kur request (key, CertRequest + oldCertID, POP, header, signature), client CPU, best of 5 x {n}:")
    print(f"  live new key                         {live:6.1f} µs")
    print(f"  prepared new key + SPKI              {prepared:6.1f} µs ({live - prepared:+.1f} µs saved)")
    print(f"  the same, old key still prepared     {device:6.1f} µs (a prepared ir's key loaded at the kur, as in a run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20_000, help="devices prepared per rate figure")
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--distinct", type=int, default=10_000)
    parser.add_argument("--kur", action="store_true", help="also a pool with kur keys (the memory figure)")
    args = parser.parse_args()
    plain = DevicePopulation(count=args.devices)
    with_uuid = replace(plain, subject="/CN=smoke-{index:06d}", sans=("URI:urn:uuid:{uuid}",))
    cases = [("subject only", plain, False), ("subject + URI:urn:uuid SAN", with_uuid, False)]
    if args.kur:
        cases.append(("subject only, with a kur key", plain, True))
    for name, devices, kur in cases:
        rate = preparation_rate(devices, args.devices, kur)
        print(f"preparation, {name}: {rate:,.0f} EC P-256 devices per second of one core's CPU (target >= 20,000)")
    print("kur's new key (its POP is signed live), best of 5:")
    kur_key()
    kur_request_cpu()
    if args.pool:
        pool_load(args.pool, args.distinct)
        if args.kur:
            pool_load(args.pool, args.distinct, kur=True)


if __name__ == "__main__":
    main()
