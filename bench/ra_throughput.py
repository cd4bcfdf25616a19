"""Enrollments per second through `fleet ra serve`, with the RA's and the CA's CPU per enrollment:
straight to the CA, through the RA in pass-through, and through the RA in nested mode with
batches, side by side in one run.

`fleet ca serve` (trusting the RA with --ra-trusted) and `fleet ra serve` run as subprocesses;
fleet's own client runs in this process: ``--concurrency`` devices enrolling in a loop (ir +
certConf, new EC P-256 key, PBM with a per-device derived secret), for ``--seconds`` after a
warm-up. CPU of each server process is read from /proc/<pid>/stat over the window, so it
includes HTTP, verification, (un)wrapping and, for the CA, issuance and the store.

On a 2-core machine the three processes share the cores, so enrollments/s is bounded by the
sum of their CPU; the per-enrollment CPU figures are the ones to compare.

``--cmp-only`` leaves HTTP and the processes out, and is far steadier on a shared machine: it
drives the real ``Relay`` and the CA's ``NestedServer`` (real ``Authority``) in this process with
irs and certConfs pre-built by fleet's client, and prints the CPU µs per enrollment of the RA
(verify and forward; verify, wrap and split for nested) and of the CA (single messages vs
nested batches), median of ``--rounds``.

Usage: python bench/ra_throughput.py [--concurrency 64] [--seconds 8] [--warmup 2] [--batch-size 16]
       python bench/ra_throughput.py --cmp-only [--devices 512] [--batch-size 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.cmp.client import ClientConfig, ClientTransaction
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import MacProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.shared_secrets import derive_device_secret
from fleet.exchange import run_transaction
from fleet.http.client import CmpHttpClient

MASTER = b"bench-master"
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _start(args: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-m", "fleet.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            line = proc.stdout.readline()
            if "listening on" in line:
                return proc, int(line.rsplit("(port ", 1)[1].split(")")[0])
            if not line:
                break
    proc.kill()
    raise SystemExit(f"fleet {args[0]} serve did not start")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def _ra_files(folder: Path) -> tuple[Path, Path, Path]:
    now = datetime.now(UTC)
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench RA root")])
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name).public_key(root_key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench RA")]))
            .issuer_name(root_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=2))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    paths = folder / "ra-root.pem", folder / "ra.pem", folder / "ra.key"
    paths[0].write_bytes(root.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


async def _load(url: str, pids: dict[str, int], concurrency: int, warmup: float, seconds: float) -> dict[str, float]:
    configs = [ClientConfig(MacProtector(derive_device_secret(MASTER, f"dev-{i:08d}".encode()),
                                         reference=f"dev-{i:08d}".encode(), salt=os.urandom(16)))
               for i in range(concurrency)]
    counts = {"done": 0, "failed": 0}
    measuring = False
    async with CmpHttpClient(url, max_connections=concurrency, request_timeout=60) as client:

        async def device(i: int, stop_at: float) -> None:
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-{i}")])
            while trio.current_time() < stop_at:
                tx = ClientTransaction(configs[i], CertRequest(BodyType.IR, ec.generate_private_key(ec.SECP256R1()),
                                                               subject=subject))
                try:
                    await run_transaction(client, tx, timeout=60)
                    ok = True
                except Exception:  # noqa: BLE001  # counted, the bench goes on
                    ok = False
                if measuring:
                    counts["done" if ok else "failed"] += 1

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(concurrency):
                nursery.start_soon(device, i, start + warmup + seconds)
            await trio.sleep(warmup)
            measuring = True
            cpu0 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            t0 = time.monotonic()
            await trio.sleep(seconds)
            elapsed = time.monotonic() - t0
            cpu1 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            done = counts["done"]
            measuring = False
    out = {"rate": done / elapsed, "done": float(done), "failed": float(counts["failed"])}
    for name in pids:
        out[f"{name}_us"] = (cpu1[name] - cpu0[name]) / done * 1e6 if done else float("nan")
    return out


def cmp_only(devices: int, batch_size: int, rounds: int) -> None:
    """CPU µs per enrollment of the RA and the CA's CMP layers, in process (module doc)."""
    import statistics

    from fleet.ca.authority import Authority
    from fleet.cmp.nested_server import NestedServer
    from fleet.cmp.protection import SignatureProtector
    from fleet.cmp.server import ServerConfig
    from fleet.cmp.shared_secrets import SharedSecrets
    from fleet.cmp.trust import TrustStore
    from fleet.files import load_certificates, load_private_key
    from fleet.ra.relay import RaMode, Relay, RelayPolicy

    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="fleet-ra-cmp-") as tmp:
        folder = Path(tmp)
        ra_root, ra_cert, ra_key = _ra_files(folder)
        signer = SignatureProtector(load_private_key(ra_key), load_certificates(ra_cert)[0])  # type: ignore[arg-type]
        for round_no in range(rounds):
            authority = Authority.open(folder / f"ca{round_no}", base_url="http://127.0.0.1:9")
            try:
                server = NestedServer(authority.server(
                    config=ServerConfig(grant_implicit_confirm=False), secrets=SharedSecrets(master=MASTER),
                    ra_trusted=load_certificates(ra_root)))
                root = TrustStore([x509.load_der_x509_certificate(authority.root)])
                relays = {mode: Relay(signer, policy=RelayPolicy(mode=mode), secrets=SharedSecrets(master=MASTER),
                                      upstream_trust=root) for mode in (RaMode.PASS, RaMode.NESTED)}
                for label, mode in (("single", RaMode.PASS), ("nested", RaMode.NESTED)):
                    relay = relays[mode]
                    txs = []
                    for i in range(devices):
                        ref = f"dev-{round_no}-{label}-{i:06d}".encode()
                        config = ClientConfig(MacProtector(derive_device_secret(MASTER, ref), reference=ref))
                        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"b{i}")])
                        tx = ClientTransaction(config, CertRequest(BodyType.IR, ec.generate_private_key(ec.SECP256R1()),
                                                                   subject=subject))
                        txs.append((tx, tx.start().data))
                    ra_cpu = ca_cpu = 0.0
                    for phase in ("ir", "certConf"):
                        answers: list[bytes] = []
                        for start in range(0, devices, batch_size if mode is RaMode.NESTED else 1):
                            chunk = txs[start:start + (batch_size if mode is RaMode.NESTED else 1)]
                            now = time.time()
                            t0 = time.process_time()
                            inbound = [relay.accept(data, now) for _, data in chunk]
                            if mode is RaMode.NESTED:
                                data, tid, nonce = relay.envelope(inbound, now)
                            else:
                                data = relay.upstream(inbound[0], now)
                            t1 = time.process_time()
                            reply = server.handle(data, now).data
                            t2 = time.process_time()
                            if mode is RaMode.NESTED:
                                split = relay.open_envelope(reply, tid, nonce, now)
                                out = [split[i.transaction_id] for i in inbound]
                            else:
                                out = [relay.downstream(inbound[0], reply, now)]
                            t3 = time.process_time()
                            ra_cpu += (t1 - t0) + (t3 - t2)
                            ca_cpu += t2 - t1
                            answers.extend(out)
                        if phase == "ir":
                            txs = [(tx, tx.receive(answer).data) for (tx, _), answer in zip(txs, answers, strict=True)]
                    results.setdefault(f"ra_{label}", []).append(ra_cpu / devices * 1e6)
                    results.setdefault(f"ca_{label}", []).append(ca_cpu / devices * 1e6)
                assert authority.store.counts_by_status().get("issued") == 2 * devices
            finally:
                authority.close()
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"CMP layers only, {devices} enrollments (ir + certConf) per setup, median of {rounds} rounds:")
    print(f"{'setup':<28} {'RA µs/enr':>10} {'CA µs/enr':>10}")
    print(f"{'single messages (pass)':<28} {med['ra_single']:10.0f} {med['ca_single']:10.0f}")
    print(f"{f'nested, batches of {batch_size}':<28} {med['ra_nested']:10.0f} {med['ca_nested']:10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-wait", type=float, default=0.005)
    parser.add_argument("--cmp-only", action="store_true")
    parser.add_argument("--devices", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.cmp_only:
        cmp_only(args.devices, args.batch_size, args.rounds)
        return
    with tempfile.TemporaryDirectory(prefix="fleet-ra-bench-") as tmp:
        folder = Path(tmp)
        ra_root, ra_cert, ra_key = _ra_files(folder)
        ca, ca_port = _start(["ca", "serve", "--dir", str(folder / "ca"), "--port", "0", "--master-secret",
                              f"pass:{MASTER.decode()}", "--ra-trusted", str(ra_root)])
        upstream = f"http://127.0.0.1:{ca_port}/.well-known/cmp"
        rows = []
        try:
            setups = [
                ("direct to the CA", None),
                ("RA, pass-through", ["--mode", "pass"]),
                (f"RA, nested, batches of {args.batch_size}",
                 ["--mode", "nested", "--batch-size", str(args.batch_size), "--batch-wait", str(args.batch_wait),
                  "--upstream-trusted", str(folder / "ca" / "root-ca.pem")]),
            ]
            for label, mode in setups:
                if mode is None:
                    result = trio.run(_load, upstream, {"ca": ca.pid}, args.concurrency, args.warmup, args.seconds)
                else:
                    ra, ra_port = _start(["ra", "serve", "--upstream", upstream, "--port", "0", "--cert", str(ra_cert),
                                          "--key", str(ra_key), "--master-secret", f"pass:{MASTER.decode()}", *mode])
                    try:
                        result = trio.run(_load, f"http://127.0.0.1:{ra_port}/.well-known/cmp",
                                          {"ca": ca.pid, "ra": ra.pid}, args.concurrency, args.warmup, args.seconds)
                    finally:
                        _stop(ra)
                rows.append((label, result))
        finally:
            _stop(ca)
    print(f"{args.concurrency} devices enrolling in a loop (ir + certConf), {args.seconds:g} s measured; "
          f"{os.cpu_count()} cores shared by client, RA and CA")
    print(f"{'setup':<28} {'enroll/s':>9} {'failed':>7} {'RA µs/enr':>10} {'CA µs/enr':>10}")
    for label, r in rows:
        ra_us = f"{r['ra_us']:10.0f}" if "ra_us" in r else f"{'-':>10}"
        print(f"{label:<28} {r['rate']:9.0f} {r['failed']:7.0f} {ra_us} {r['ca_us']:10.0f}")


if __name__ == "__main__":
    main()
