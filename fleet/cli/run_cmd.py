"""``fleet run PROFILE``: a capacity test, against the embedded CA unless ``--server`` is given."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleet.load.orchestrator import RunOptions, run_profile, summary_table
from fleet.profiles import load_profile
from fleet.secrets import read_secret


def run(
    profile: Annotated[Path, typer.Argument(help="Profile file, e.g. profiles/smoke.toml.")],
    server: Annotated[str | None, typer.Option("--server", help="CA URL; without it fleet starts its embedded CA on loopback.")] = None,
    trusted: Annotated[list[Path] | None, typer.Option("--trusted", help="Trust anchors for signed CA responses (repeatable).")] = None,
    master_secret: Annotated[str | None, typer.Option("--master-secret", help="Master secret the CA derives per-device MAC secrets from: pass:, env:, file:.")] = None,
    rate: Annotated[float | None, typer.Option("--rate", help="Override a constant/Poisson profile's arrival rate (per second).")] = None,
    duration: Annotated[float | None, typer.Option("--duration", help="Override the run's duration in seconds.")] = None,
    devices: Annotated[int | None, typer.Option("--devices", help="Override the number of virtual devices.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes, each with an exact share of devices and rate.")] = None,
    max_in_flight: Annotated[int | None, typer.Option("--max-in-flight", help="Arrivals beyond this many in flight are dropped (counted).")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the JSON report here.")] = None,
    abort_on_fail: Annotated[bool, typer.Option("--abort-on-fail", help="Stop as soon as the error-rate SLO is broken.")] = False,
    keys: Annotated[Path | None, typer.Option("--keys", help="Key pool folder (default: the user cache folder).")] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="Serve Prometheus /metrics on this port (worker N on port+N, the embedded CA after the workers).")] = None,
    metrics_host: Annotated[str | None, typer.Option("--metrics-host", help="Address /metrics binds to (default $FLEET_METRICS_HOST, else all interfaces).")] = None,
    ca_dir: Annotated[Path | None, typer.Option("--ca-dir", help="State folder for the embedded CA (default: a temporary one).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No live progress line.")] = False,
) -> None:
    """Run a load profile and print the summary and the SLO verdict (exit 1 when it fails)."""
    import dataclasses

    from fleet.load.schedule import Constant, Poisson

    if metrics_host:
        os.environ["FLEET_METRICS_HOST"] = metrics_host  # worker processes inherit it
    loaded = load_profile(profile)
    shape = loaded.shape
    if rate is not None:
        if not isinstance(shape, (Constant, Poisson)):
            raise typer.BadParameter("--rate applies to constant and poisson profiles only")
        shape = dataclasses.replace(shape, rate=rate)
    device_spec = dataclasses.replace(loaded.devices, count=devices) if devices else loaded.devices
    loaded = loaded.with_overrides(
        shape=shape, duration=duration, workers=workers, max_in_flight=max_in_flight, devices=device_spec
    )
    options = RunOptions(
        server=server,
        trusted=list(trusted or []),
        master_secret=read_secret(master_secret) if master_secret else None,
        keys_dir=keys,
        report=report,
        abort_on_fail=abort_on_fail,
        progress=not quiet,
        metrics_port=metrics_port,
        ca_dir=ca_dir,
    )
    results, verdict = run_profile(loaded, options)
    print(summary_table(loaded, results))
    if report is not None:
        print(f"report: {report}")
    print(verdict.line())
    if results.interrupted and not results.aborted:
        print("fleet: interrupted: the figures above cover the run until then", file=sys.stderr)
    if verdict.exit_code:
        sys.exit(verdict.exit_code)  # 1 failed or aborted, 128 + signal when interrupted
