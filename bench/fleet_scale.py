"""Scale of one orchestrator process: memory per virtual device, spawn rate, sustainable rate.

1. RSS per device: N devices all in flight at once (a spike of N arrivals at t=0) against a
   loopback server that accepts and never answers, so every device holds its key, its
   transaction and its first request while waiting for one of the pooled connections.
2. Devices spawned per second: how fast the arrival driver starts those N tasks.
3. Highest sustained rate: `fleet run`'s worker on this core against the embedded CA on the other,
   stepping the rate up; a step passes when >= 99% of arrivals succeed and the p99 start lateness
   is under 5 ms. Reports the CA-side limit separately when the CA is what saturates.

Usage: python bench/fleet_scale.py [--devices 50000] [--rates 250,500,1000,1500,2000] [--step 6]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.cmp.trust import TrustStore  # noqa: E402
from fleet.keys import KeyPool, KeySpec  # noqa: E402
from fleet.load.device import DeviceFactory  # noqa: E402
from fleet.load.orchestrator import RunOptions, run_profile  # noqa: E402
from fleet.load.runner import WorkerPlan, WorkerRun  # noqa: E402
from fleet.load.segments import split  # noqa: E402
from fleet.profiles import parse_profile  # noqa: E402


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def _silent_server(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Accept connections, read, never answer."""

    async def hold(stream: trio.SocketStream) -> None:
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(hold, listeners)


def memory_per_device(n: int) -> tuple[float, float]:
    profile = parse_profile(
        {
            "run": {"duration": 1, "max_in_flight": n + 1, "max_connections": 100, "transaction_timeout": 600},
            "arrivals": {"shape": "spike", "base_rate": 0.001, "spike_rate": float(n * 100), "at": 0, "length": 0.01},
            "devices": {"count": n, "key_types": "ec:P-256", "sans": ["URI:urn:uuid:{uuid}"]},
        },
        where="bench",
    )
    pools = {"ec:P-256": KeyPool(KeySpec.parse("ec:P-256"), (), on_exhausted="generate")}
    devices = DeviceFactory(profile.devices, pools, master_secret=b"m", trust=TrustStore())
    result: dict[str, float] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_silent_server)
            run = WorkerRun(WorkerPlan(profile, f"http://127.0.0.1:{port}/", split(1)[0]), devices)
            gc.collect()
            before = _rss_kib()
            nursery.start_soon(run.run)
            t0 = time.perf_counter()
            while run.live.in_flight < n:
                await trio.sleep(0.05)
                if time.perf_counter() - t0 > 600:
                    raise RuntimeError("devices did not all start")
            result["spawn_seconds"] = time.perf_counter() - t0
            await trio.sleep(1.0)
            gc.collect()
            result["kib"] = _rss_kib() - before
            nursery.cancel_scope.cancel()

    trio.run(main)
    return result["kib"] * 1024 / n, n / result["spawn_seconds"]


def sustained_rate(rates: list[float], step: float) -> list[tuple[float, float, float, float]]:
    rows = []
    for rate in rates:
        profile = parse_profile(
            {
                "run": {"duration": step, "max_in_flight": 5000, "max_connections": 200, "transaction_timeout": 10},
                "arrivals": {"shape": "constant", "rate": rate},
                "devices": {"count": 50_000, "key_types": "ec:P-256"},
            },
            where="bench",
        )
        with open(os.devnull, "w") as quiet:
            results, _ = run_profile(profile, RunOptions(progress=False), out=quiet)
        ir = results.ops.get("ir")
        ok = ir.ok if ir else 0
        lateness = results.lateness.percentile(99) if results.lateness.count else float("nan")
        p99 = ir.latency.percentile(99) if ir and ir.latency.count else float("nan")
        rows.append((rate, ok / results.scheduled if results.scheduled else 0.0, lateness, p99))
        print(f"  rate {rate:6.0f}/s: {ok / step:7.1f}/s ok ({rows[-1][1]:.1%}), start lateness p99 "
              f"{lateness * 1e3:6.1f} ms, ir p99 {p99 * 1e3:7.1f} ms", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50_000)
    parser.add_argument("--rates", default="250,500,750,1000,1500,2000")
    parser.add_argument("--step", type=float, default=6.0)
    args = parser.parse_args()
    per_device, spawn_rate = memory_per_device(args.devices)
    print(f"memory: {per_device / 1024:.1f} KiB RSS per in-flight device at {args.devices:,} devices (target <= 10 KB)")
    print(f"spawn:  {spawn_rate:,.0f} devices started per second")
    print("sustained rate (orchestrator on one core, embedded CA on the other):")
    rows = sustained_rate([float(r) for r in args.rates.split(",")], args.step)
    good = [r for r, share, late, _ in rows if share >= 0.99 and late < 0.005]
    print(f"highest rate with >= 99% ok and p99 start lateness < 5 ms: {max(good) if good else 0:.0f}/s (target >= 2,000/s)")


if __name__ == "__main__":
    main()
