"""Wall time of ``fleet capacity`` to an answer within 5 % for a CA saturating near 1,000/s.

The embedded CA's knobs fix its capacity: every response is held ``--latency`` seconds and at
most ``--max-transactions`` transactions live at once, so it sustains about
max_transactions / latency enrollments per second (a transaction lives from its ir until its
certConf, so a little less: the client's turnaround adds to each). The search runs as a user
would run it (``fleet capacity`` in a subprocess) and the script prints the wall time, the
answer, its distance from the nominal rate and the steps.

``--issue-rate R`` caps the CA with its token bucket instead (nominal rate R, whatever the
client's turnaround); ``--shards N`` has ``fleet capacity`` play each step in N processes.

    python bench/capacity_search.py [--latency 0.2] [--max-transactions 200] [--step 10] [--shards 2]
    python bench/capacity_search.py --issue-rate 1000 --shards 2
    python bench/capacity_search.py --max-connections 1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROFILE = """
name = "bench-capacity"
[run]
duration = 10
flow = ["ir"]
max_in_flight = 5000
transaction_timeout = 10{connections}
[arrivals]
shape = "constant"
rate = 1000
[devices]
count = 50000
key_types = "ec:P-256"
[slo]
p99_seconds = {{ ir = {p99} }}
max_error_rate = 0.01
min_rate_ratio = 0.95
[ca]
{knobs}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--max-transactions", type=int, default=200)
    parser.add_argument("--step", type=float, default=10.0, help="seconds per step")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--cool-down", type=float, default=2.0)
    parser.add_argument("--min-rate", type=float, default=250.0)
    parser.add_argument("--max-rate", type=float, default=2000.0)
    parser.add_argument("--issue-rate", type=float, default=None, help="cap the CA by its issue rate instead")
    parser.add_argument("--shards", type=int, default=1, help="processes playing each step")
    parser.add_argument("--max-connections", type=int, default=None,
                        help="[run] max_connections, each worker's HTTP connections (default: the profile's default)")
    args = parser.parse_args()
    if args.issue_rate:
        nominal = args.issue_rate
        knobs = f"issue_rate = {args.issue_rate:g}"
        how = f"issue_rate {args.issue_rate:g}/s"
    else:
        nominal = args.max_transactions / args.latency
        knobs = f'latency = "fixed:{args.latency}"\nmax_transactions = {args.max_transactions}'
        how = f"max_transactions {args.max_transactions} / latency {args.latency:g} s"
    with tempfile.TemporaryDirectory(prefix="fleet-bench-capacity-") as tmp:
        profile = Path(tmp) / "profile.toml"
        connections = f"\nmax_connections = {args.max_connections}" if args.max_connections else ""
        profile.write_text(PROFILE.format(knobs=knobs, p99=max(1.0, 10 * args.latency), connections=connections))
        report = Path(tmp) / "capacity.json"
        began = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "fleet.cli.main", "capacity", str(profile), "--min-rate", f"{args.min_rate:g}",
             "--max-rate", f"{args.max_rate:g}", "--step-duration", f"{args.step:g}", "--warmup", f"{args.warmup:g}",
             "--cool-down", f"{args.cool_down:g}", "--report", str(report),
             *(["--shards", str(args.shards)] if args.shards > 1 else [])],
            capture_output=True, text=True, check=False,
        )
        wall = time.monotonic() - began
        print(proc.stdout, end="")
        if proc.returncode not in (0, 1) or not report.exists():
            print(proc.stderr, file=sys.stderr)
            sys.exit(1)
        doc = json.loads(report.read_text())
    found = doc["answer"]["capacity"]
    off = (found - nominal) / nominal if found else float("nan")
    print(f"nominal {nominal:g}/s ({how}); {args.shards} shard(s); found {found}/s ({off:+.1%}); "
          f"{len(doc['steps'])} steps of {args.step:g} s; wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
