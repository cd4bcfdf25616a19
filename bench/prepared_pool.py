"""Prepared-device pools (``fleet/load/prepared.py``): preparation rate, load time, memory.

1. Preparation per core: devices prepared per second of one process's CPU (key pair, SPKI,
   CertRequest, POP signature, record), for a subject-only identity and for one with a
   ``URI:urn:uuid:{uuid}`` SAN (``profiles/smoke.toml``'s devices).
2. A pool of ``--pool`` devices (default 1,000,000; the records of ``--distinct`` prepared devices
   repeated, which is the same work to store and load): write time, file size, then the time a
   worker takes to load it (read, SHA-256 over the whole file, offsets) and the pool's memory
   per device, its own (buffer, offsets, flags) and the process's RSS growth.
3. kur's new key: what the live path pays to make it and its SPKI, against materialising a
   prepared one (the POP of a kur must be signed live: it covers the oldCertID control).

Usage: python bench/prepared_pool.py [--devices 20000] [--pool 1000000] [--distinct 10000]
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


def preparation_rate(devices: DevicePopulation, n: int) -> float:
    prepare_range(devices, 0, 200)  # warm-up
    started = time.process_time()
    prepare_range(devices, 0, n)
    return n / (time.process_time() - started)


def pool_load(pool: int, distinct: int) -> None:
    devices = DevicePopulation(count=pool)
    records = prepare_range(devices, 0, distinct)
    with tempfile.TemporaryDirectory() as folder:
        store = PreparedStore(folder)
        identity = Identity.of(devices)
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
        print(f"pool of {len(loaded):,} devices: written in {written:.2f} s ({size / len(loaded):.0f} B per device on disk)")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20_000, help="devices prepared per rate figure")
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--distinct", type=int, default=10_000)
    args = parser.parse_args()
    plain = DevicePopulation(count=args.devices)
    with_uuid = replace(plain, subject="/CN=smoke-{index:06d}", sans=("URI:urn:uuid:{uuid}",))
    for name, devices in (("subject only", plain), ("subject + URI:urn:uuid SAN", with_uuid)):
        rate = preparation_rate(devices, args.devices)
        print(f"preparation, {name}: {rate:,.0f} EC P-256 devices per second of one core's CPU (target >= 20,000)")
    print("kur's new key (its POP is signed live), best of 5:")
    kur_key()
    if args.pool:
        pool_load(args.pool, args.distinct)


if __name__ == "__main__":
    main()
