"""Devices provisioned per second by ``fleet provision``'s runner, with and without its journal.

Starts ``fleet ca serve`` (explicit confirmation, per-device MAC secrets) on a free loopback port,
then provisions ``--devices`` MAC devices (ir, EC P-256 keys made on the fly) into a temporary
folder, once with the durable SQLite journal and once with an in-memory one. Both runs write the
same device files (key, certificate, chain, CA; each fsynced), so the difference is the journal's
cost: four durable steps per device (key, sent, received, confirmed), group-committed.

Runs alternate (no journal, journal, journal, no journal, ...) with ``--repeat`` > 1 so that the
CA's growing database does not favour one side. The CA runs on the same machine and takes its
share of the cores: the figures are for the whole loopback system, not the client alone.

    python bench/provision_rate.py [--devices 2000] [--concurrency 32] [--repeat 1]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from fleet.cmp.shared_secrets import derive_device_secret
from fleet.provision.journal import Journal
from fleet.provision.manifest import parse_manifest
from fleet.provision.runner import Provisioner, ProvisionOptions

MASTER = "bench-master"


def start_ca(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = folder / "ca.log"
    with open(log, "wb") as sink:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.cli.main", "ca", "serve", "--dir", str(folder / "ca"), "--port", "0",
             "--master-secret", f"pass:{MASTER}", "--no-implicit-confirm"],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 30
    while not (match := re.search(r"\(port (\d+)\)", log.read_text(errors="replace"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"fleet ca serve did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{match.group(1)}/.well-known/cmp"


def manifest(count: int, prefix: str) -> str:
    rows = ["id,subject,secret"]
    for i in range(count):
        device_id = f"{prefix}{i:05d}"
        secret = derive_device_secret(MASTER.encode(), device_id.encode()).decode()
        rows.append(f"{device_id},/CN={device_id}/O=Bench,pass:{secret}")
    return "\n".join(rows) + "\n"


def one_run(url: str, out: Path, count: int, concurrency: int, durable: bool, tag: str) -> tuple[float, int, float]:
    devices = parse_manifest(manifest(count, tag))
    options = ProvisionOptions(server=url, out=out, concurrency=concurrency, timeout=60.0)
    journal = Journal.open(out / "journal.sqlite") if durable else Journal.in_memory()
    try:
        started = time.perf_counter()
        cpu = time.process_time()
        stats = trio.run(Provisioner(devices, journal, options).run)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        journal.close()
    if stats.provisioned != count:
        raise SystemExit(f"only {stats.provisioned} of {count} devices provisioned ({stats.failed} failed)")
    return stats.provisioned / elapsed, stats.commits, 1e3 * cpu / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs (alternating order)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="fleet-provision-bench-"))
    proc, url = start_ca(folder)
    rates: dict[bool, list[float]] = {True: [], False: []}
    try:
        order = []
        for r in range(args.repeat):
            order += [False, True] if r % 2 == 0 else [True, False]
        for n, durable in enumerate(order):
            out = folder / f"run{n}"
            rate, commits, cpu_ms = one_run(url, out, args.devices, args.concurrency, durable, f"r{n}-")
            rates[durable].append(rate)
            what = f"journal ({commits} group commits)" if durable else "no journal"
            print(f"run {n + 1}: {args.devices} devices, {what}: {rate:.1f} devices/s, "
                  f"provisioner CPU {cpu_ms:.2f} ms per device", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)
    with_journal = max(rates[True])
    without = max(rates[False])
    cost = 100 * (1 - with_journal / without)
    print(f"best of {args.repeat}: without journal {without:.1f} devices/s, with journal {with_journal:.1f} "
          f"devices/s: journal cost {cost:.1f}% (target < 20%)")


if __name__ == "__main__":
    main()
