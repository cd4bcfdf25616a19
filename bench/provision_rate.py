"""Devices provisioned per second by ``fleet provision``'s runner, with and without its journal.

Starts ``fleet ca serve`` (explicit confirmation, per-device MAC secrets) on a free loopback port,
then provisions ``--devices`` MAC devices (ir, EC P-256 keys made on the fly) into a temporary
folder, once with the durable SQLite journal and once with an in-memory one. Both runs write the
same device files (key, certificate, chain, CA; each fsynced), so the difference is the journal's
cost: four durable steps per device (key, sent, received, confirmed), group-committed.

Runs alternate (no journal, journal, journal, no journal, ...) with ``--repeat`` > 1 so that the
CA's growing database does not favour one side. The CA runs on the same machine and takes its
share of the cores: the figures are for the whole loopback system, not the client alone.

With ``--key-ahead N`` the runs compare keys made on the spot with keys made ahead (``fleet
provision --key-ahead N``: worker processes, fleet.provision.keyahead), both with the journal;
``--key-type`` picks the devices' key type (rsa:2048 is where making keys ahead pays).

    python bench/provision_rate.py [--devices 2000] [--concurrency 32] [--repeat 1]
    python bench/provision_rate.py --key-type rsa:2048 --key-ahead 64 --devices 400 --repeat 2
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


def manifest(count: int, prefix: str, key_type: str = "ec:P-256") -> str:
    rows = ["id,subject,secret,key_type"]
    for i in range(count):
        device_id = f"{prefix}{i:05d}"
        secret = derive_device_secret(MASTER.encode(), device_id.encode()).decode()
        rows.append(f"{device_id},/CN={device_id}/O=Bench,pass:{secret},{key_type}")
    return "\n".join(rows) + "\n"


def one_run(url: str, out: Path, count: int, concurrency: int, durable: bool, tag: str,
            key_type: str = "ec:P-256", key_ahead: int = 0) -> tuple[float, int, float, str]:
    devices = parse_manifest(manifest(count, tag, key_type))
    options = ProvisionOptions(server=url, out=out, concurrency=concurrency, timeout=60.0, key_ahead=key_ahead)
    journal = Journal.open(out / "journal.sqlite") if durable else Journal.in_memory()
    try:
        started = time.perf_counter()
        cpu = time.process_time()
        runner = Provisioner(devices, journal, options)
        stats = trio.run(runner.run)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        journal.close()
    if stats.provisioned != count:
        raise SystemExit(f"only {stats.provisioned} of {count} devices provisioned ({stats.failed} failed)")
    ahead = runner.key_ahead.statistics() if runner.key_ahead is not None else None
    keys = f" ({ahead.prepared} keys made ahead, {ahead.made_on_the_spot} on the spot)" if ahead else ""
    return stats.provisioned / elapsed, stats.commits, 1e3 * cpu / count, keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs (alternating order)")
    parser.add_argument("--key-type", default="ec:P-256", help="the devices' key type")
    parser.add_argument("--key-ahead", type=int, default=0,
                        help="compare keys made on the spot with keys made N ahead (both with the journal)")
    args = parser.parse_args()
    if args.key_ahead:
        key_ahead(args)
        return
    folder = Path(tempfile.mkdtemp(prefix="fleet-provision-bench-"))
    proc, url = start_ca(folder)
    rates: dict[bool, list[float]] = {True: [], False: []}
    try:
        order = []
        for r in range(args.repeat):
            order += [False, True] if r % 2 == 0 else [True, False]
        for n, durable in enumerate(order):
            out = folder / f"run{n}"
            rate, commits, cpu_ms, _ = one_run(url, out, args.devices, args.concurrency, durable, f"r{n}-")
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


def key_ahead(args: argparse.Namespace) -> None:
    """On the spot against ``--key-ahead``, alternating, both with the journal."""
    folder = Path(tempfile.mkdtemp(prefix="fleet-provision-bench-"))
    proc, url = start_ca(folder)
    rates: dict[int, list[float]] = {0: [], args.key_ahead: []}
    try:
        order: list[int] = []
        for r in range(args.repeat):
            order += [0, args.key_ahead] if r % 2 == 0 else [args.key_ahead, 0]
        for n, ahead in enumerate(order):
            out = folder / f"run{n}"
            rate, _, cpu_ms, keys = one_run(url, out, args.devices, args.concurrency, True, f"r{n}-", args.key_type, ahead)
            rates[ahead].append(rate)
            what = f"keys made {ahead} ahead" if ahead else "keys made on the spot"
            print(f"run {n + 1}: {args.devices} {args.key_type} devices, {what}: {rate:.1f} devices/s, "
                  f"provisioner CPU {cpu_ms:.2f} ms per device (main process){keys}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"best of {args.repeat}: on the spot {max(rates[0]):.1f} devices/s, {args.key_ahead} ahead "
          f"{max(rates[args.key_ahead]):.1f} devices/s")


if __name__ == "__main__":
    main()
