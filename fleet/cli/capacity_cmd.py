"""``fleet capacity PROFILE``: the highest rate the CA sustains under the profile's SLO."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleet.bounds import COUNT, NON_NEGATIVE, PORT, POSITIVE
from fleet.capacity_report import render_capacity_html
from fleet.cli.usage import bounded, examples
from fleet.files import check_output_path, write_output
from fleet.load.capacity import SearchError
from fleet.load.capacity_run import CapacityOptions, run_capacity
from fleet.load.profiles import load_profile
from fleet.secrets import read_secret

EPILOG = examples(
    "fleet capacity profiles/ramp-to-break.toml --report capacity.json",
    "fleet capacity profiles/steady.toml --min-rate 100 --max-rate 4000 \\\n"
    "    --require 1500 --server http://ca.example:8080/.well-known/cmp \\\n"
    "    --master-secret env:FLEET_MASTER --html capacity.html",
)


def capacity(
    ctx: typer.Context,
    profile: Annotated[Path, typer.Argument(metavar="PROFILE", help="Profile file: its flow, devices, SLO and [ca] settings.")],
    server: Annotated[str | None, typer.Option("--server", metavar="URL", help="CA URL; without it fleet starts its embedded CA on loopback (once for all steps).")] = None,
    trusted: Annotated[list[Path] | None, typer.Option("--trusted", metavar="PEM", help="Trust anchors for signed CA responses (repeatable).")] = None,
    master_secret: Annotated[str | None, typer.Option("--master-secret", metavar="SECRET", help="Master secret the CA derives per-device MAC secrets from: pass:, env:, file:.")] = None,
    min_rate: Annotated[float, typer.Option("--min-rate", callback=bounded(POSITIVE), help="First rate tried (arrivals per second).")] = 10.0,
    max_rate: Annotated[float | None, typer.Option("--max-rate", callback=bounded(POSITIVE), help="Highest rate tried (default: the profile's peak rate).")] = None,
    require: Annotated[float | None, typer.Option("--require", metavar="RATE", callback=bounded(POSITIVE), help="Exit 0 only when the capacity found is at least RATE per second.")] = None,
    step_duration: Annotated[float, typer.Option("--step-duration", callback=bounded(POSITIVE), help="Seconds each step offers its rate.")] = 30.0,
    warmup: Annotated[float | None, typer.Option("--warmup", callback=bounded(NON_NEGATIVE), help="Seconds of each step left out of its measures (default: a quarter of the step, at least 1).")] = None,
    cool_down: Annotated[float, typer.Option("--cool-down", callback=bounded(NON_NEGATIVE), help="Seconds of rest between steps.")] = 5.0,
    tolerance: Annotated[float, typer.Option("--tolerance", callback=bounded(POSITIVE), help="Stop bisecting when the highest rate held and the lowest failed are this close (0.03: 3%).")] = 0.03,
    max_steps: Annotated[int, typer.Option("--max-steps", callback=bounded(COUNT), help="Most steps the search takes.")] = 24,
    report: Annotated[Path | None, typer.Option("--report", metavar="FILE", help="Write the JSON report (the answer and every step's full results) here.")] = None,
    html: Annotated[Path | None, typer.Option("--html", metavar="FILE", help="Write the HTML report (knee chart, steps) here.")] = None,
    keys: Annotated[Path | None, typer.Option("--keys", metavar="DIR", help="Key pool folder (default: the user cache folder).")] = None,
    ca_dir: Annotated[Path | None, typer.Option("--ca-dir", metavar="DIR", help="State folder for the embedded CA (default: a temporary one).")] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", callback=bounded(PORT), help="Serve the search's progress (fleet_capacity_*) on /metrics here, the embedded CA's on the next port.")] = None,
) -> None:
    """Find the highest arrival rate the CA sustains under the profile's SLO: coarse steps up,
    then bisection; each step measured after a warm-up and checked for a steady state. Prints
    each step, then the capacity with its interval, the knee and the first SLO to break."""
    loaded = load_profile(profile)
    top = max_rate
    if top is None:
        peak = getattr(loaded.shape, "peak_rate", None)
        top = float(peak) if peak else min_rate
    for path, flag in ((report, "--report"), (html, "--html")):
        if path is not None:
            check_output_path(path, flag)
    options = CapacityOptions(
        min_rate=min_rate, max_rate=top, step_duration=step_duration, warmup=warmup, cool_down=cool_down,
        tolerance=tolerance, max_steps=max_steps, require=require, server=server, trusted=list(trusted or []),
        master_secret=read_secret(master_secret) if master_secret else None, keys_dir=keys, ca_dir=ca_dir,
        metrics_port=metrics_port,
    )
    try:
        doc, found = run_capacity(loaded, options)
    except SearchError as exc:
        raise typer.BadParameter(str(exc), ctx=ctx, param_hint="'--min-rate'/'--max-rate'") from None
    if report is not None:
        write_output(report, json.dumps(doc, indent=1).encode(), "--report")
        print(f"report: {report}")
    if html is not None:
        write_output(html, render_capacity_html(doc).encode(), "--html")
        print(f"report: {html}")
    print(found.line(), flush=True)
    if doc["interrupted_by"]:
        print("fleet: interrupted: the answer covers the steps until then", file=sys.stderr)
        sys.exit(128 + int(doc["interrupted_by"]))
    if require is not None:
        met = bool(doc["require_met"])
        print(f"required {require:g}/s: {'MET' if met else 'NOT MET'}")
        if not met:
            sys.exit(1)


__all__ = ["capacity"]
