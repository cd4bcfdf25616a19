"""CPU per certificate of the embedded CA's issuance (fleet.ca.issuance), path by path.

Issues EC P-256 certificates from an EC P-256 hierarchy (with CRL and OCSP pointers) the way the
CMP server asks for them, and prints the CPU µs per certificate (median of rounds) of:

- the plain path: a simple subject as DER, no extensions asked for (what most devices send);
- the general path with the direct encoder (a SAN asked for);
- the general path through cryptography's builder (the reference the direct encoder replaces);

and of the work the fast paths leave out: parsing the certificate back (the plain path's
``IssuedCert.cert`` is lazy) and printing its subject through ``x509.Name`` objects (what
``simple_rfc4514`` replaces). These are the figures that say whether each fast path still pays.

Usage: python bench/ca_issue.py [--count 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.ca.hierarchy import CaHierarchy
from fleet.ca.issuance import CertificateIssuer
from fleet.ca.rfc4514 import simple_rfc4514


def _median_us(fn: Callable[[int], object], count: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        for i in range(count):
            fn(i)
        samples.append((time.process_time() - started) / count * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="certificates per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-ca-issue-") as tmp:
        hierarchy = CaHierarchy.load_or_create(Path(tmp) / "state")
    issuer = CertificateIssuer(hierarchy, base_url="http://127.0.0.1:8080")
    keys = [ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(100)]
    der, spki_format = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    spkis = [k.public_bytes(der, spki_format) for k in keys]
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "bench-device-1")])
    name_der = name.public_bytes()
    san = [x509.DNSName("bench-device-1.example")]
    now = time.time()

    def plain(i: int) -> object:
        return issuer.issue(keys[i % 100], name_der, serial=i + 1, spki=spkis[i % 100], now=now)

    def general(i: int) -> object:
        return issuer.issue(keys[i % 100], name, sans=san, serial=i + 1, now=now)

    count, rounds = args.count, args.rounds
    results = {"plain path (direct encoder)": _median_us(plain, count, rounds)}
    results["general path, direct encoder"] = _median_us(general, count, rounds)
    encoder, issuer._encoder = issuer._encoder, None
    results["general path, cryptography's builder"] = _median_us(general, count, rounds)
    issuer._encoder = encoder
    cert_der = issuer.issue(keys[0], name_der, now=now).der
    results["parse the certificate back"] = _median_us(
        lambda _: x509.load_der_x509_certificate(cert_der), count, rounds
    )
    results["parse it and print its subject"] = _median_us(
        lambda _: x509.load_der_x509_certificate(cert_der).subject.rfc4514_string(), count, rounds
    )
    results["subject text via simple_rfc4514"] = _median_us(
        lambda _: simple_rfc4514(name_der), count, rounds
    )
    print(f"CA issuance, EC P-256 issuer and subject keys, median of {rounds} rounds of {count}:")
    for what, us in results.items():
        print(f"  {what + ':':40s} {us:7.1f} µs")


if __name__ == "__main__":
    main()
