"""CPU per enrollment with central key generation (KGA) vs a local key, client and CA, one run.

fleet's client (``ClientTransaction``) and the embedded CA (``Authority`` + ``CmpServer`` with
its KGA) run in this process without sockets, alternately, so each side's CPU is the
``time.process_time()`` spent in its own calls: the client's ``CertRequest`` (its new key),
``start`` and ``receive``; the CA's ``handle`` (and the store's flushes). Every enrollment is
ir (or cr) + certConf of a new device with EC P-256:

* ``local ir``: MAC-protected (PBM, 500 iterations), the device's own key and POP;
* ``central ir``: MAC-protected, the KGA generates the key and delivers it by PWRI
  (PBKDF2 with the CA's ``kga_pwri_iterations``, 2,048 by default);
* ``central ir, repeat device``: the same devices as ``central ir`` enroll again: the CA kept
  their PWRI salt and key-encryption key, the devices what they derived (``cms.PwriKeyCache``),
  so neither side runs PBKDF2 (``--kek-cache 0`` turns the CA's cache off);
* ``local cr`` / ``central cr``: signed with an EC certificate enrolled before (not measured);
  the central key is delivered by KARI (ECDH);
* ``central cr, RSA signer``: KTRI (RSA-OAEP), ``--ktri`` enrollments (RSA signer keys are slow
  to make).

Usage: python bench/kga_cpu.py [--enrollments N] [--pwri-iterations I] [--kek-cache E] [--ktri N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.ca.authority import Authority
from fleet.ca.kga import build_kga
from fleet.cmp.client import ClientConfig, ClientTransaction, Done, Send
from fleet.cmp.kga import key_algorithm
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import MacProtector, SignatureProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.server import ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets, derive_device_secret
from fleet.cmp.trust import TrustStore
from fleet.runtime import tune_gc

MASTER = b"kga-bench-master"
P256 = key_algorithm("ec:P-256")


def _name(i: int) -> bytes:
    return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"kga-bench-{i:06d}")]).public_bytes()


class Bench:
    def __init__(self, folder: Path, pwri_iterations: int, kek_cache: int) -> None:
        self.authority = Authority.open(folder, base_url="http://127.0.0.1:9")
        kga = build_kga(folder, self.authority.hierarchy, pwri_iterations=pwri_iterations, kek_cache=kek_cache)
        self.server = self.authority.server(config=ServerConfig(grant_implicit_confirm=False),
                                            secrets=SharedSecrets(master=MASTER), kga=kga)
        root = x509.load_der_x509_certificate(self.authority.root)
        self.trust = TrustStore([root])
        self.chain = [x509.load_der_x509_certificate(c) for c in self.authority.issued_chain]
        self.salt = b"\x01" * 16
        self.client_cpu = 0.0
        self.server_cpu = 0.0

    def mac(self, i: int) -> ClientConfig:
        ref = b"dev-%08d" % i
        return ClientConfig(MacProtector(derive_device_secret(MASTER, ref), reference=ref, salt=self.salt), self.trust)

    def run(self, config: ClientConfig, make_request: object) -> Done:
        clock = time.process_time
        t0 = clock()
        request = make_request()  # type: ignore[operator]
        tx = ClientTransaction(config, request)
        step = tx.start()
        self.client_cpu += clock() - t0
        while isinstance(step, Send):
            t0 = clock()
            reply = self.server.handle(step.data, time.time()).data
            t1 = clock()
            step = tx.receive(reply)
            self.client_cpu += clock() - t1
            self.server_cpu += t1 - t0
        assert isinstance(step, Done)
        return step

    def flush(self) -> None:
        t0 = time.process_time()
        self.authority.store.flush()
        self.server_cpu += time.process_time() - t0


def measure(bench: Bench, label: str, n: int, base: int, kind: str) -> tuple[str, float, float]:
    signers: list[SignatureProtector] = []
    if kind in ("cr", "cr-rsa"):  # signer certificates, enrolled before the measurement
        for i in range(n):
            key = ec.generate_private_key(ec.SECP256R1()) if kind == "cr" else rsa.generate_private_key(65537, 2048)
            done = bench.run(bench.mac(base + i), lambda key=key, i=i: CertRequest(BodyType.IR, key, _name(base + i)))
            assert done.certificate is not None
            signers.append(SignatureProtector(key, x509.load_der_x509_certificate(done.certificate), bench.chain))
        bench.flush()
    central = label.startswith("central")
    bench.client_cpu = bench.server_cpu = 0.0
    for i in range(n):
        body = BodyType.IR if kind == "ir" else BodyType.CR
        subject = _name(base + n + i)
        if central:
            def make(body: BodyType = body, subject: bytes = subject) -> CertRequest:
                return CertRequest(body, None, subject, central_key_alg=P256)
        else:
            def make(body: BodyType = body, subject: bytes = subject) -> CertRequest:
                return CertRequest(body, ec.generate_private_key(ec.SECP256R1()), subject)
        config = bench.mac(base + i) if kind == "ir" else ClientConfig(signers[i], bench.trust)
        done = bench.run(config, make)
        assert done.certificate is not None and (done.private_key is not None) == central
    bench.flush()
    return label, bench.client_cpu / n * 1e6, bench.server_cpu / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--enrollments", type=int, default=1000)
    parser.add_argument("--pwri-iterations", type=int, default=2048)
    parser.add_argument("--kek-cache", type=int, default=65_536, help="the CA's kga_kek_cache (0: off)")
    parser.add_argument("--ktri", type=int, default=100, help="KTRI enrollments (0: none)")
    args = parser.parse_args()
    tune_gc()
    with tempfile.TemporaryDirectory() as folder:
        bench = Bench(Path(folder), args.pwri_iterations, args.kek_cache)
        n = args.enrollments
        measure(bench, "warm-up", 50, 9_000_000, "ir")
        rows = [
            measure(bench, "local ir (MAC)", n, 0, "ir"),
            measure(bench, "central ir (MAC, PWRI)", n, 1_000_000, "ir"),
            measure(bench, "central ir, repeat device", n, 1_000_000, "ir"),
            measure(bench, "local cr (EC signer)", n, 2_000_000, "cr"),
            measure(bench, "central cr (EC signer, KARI)", n, 3_000_000, "cr"),
        ]
        if args.ktri:
            rows.append(measure(bench, "central cr (RSA signer, KTRI)", args.ktri, 5_000_000, "cr-rsa"))
        bench.authority.close()
    print(f"{n} enrollments each, EC P-256, PWRI PBKDF2 {args.pwri_iterations} iterations, CA KEK cache "
          f"{args.kek_cache}, one process, client and CA alternately")
    print(f"{'enrollment':<32}{'client µs':>10}{'CA µs':>10}{'CA per core/s':>15}")
    for label, client, server in rows:
        print(f"{label:<32}{client:>10.0f}{server:>10.0f}{1e6 / server:>15,.0f}")


if __name__ == "__main__":
    main()
