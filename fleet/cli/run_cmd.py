"""``fleet run PROFILE``: a capacity test, against the embedded CA unless ``--server`` is given."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from fleet.bounds import COUNT, PORT, POSITIVE
from fleet.cli.usage import (
    ProxyOpt,
    TlsCert,
    TlsKey,
    TlsKeyPass,
    TlsTrusted,
    bounded,
    examples,
    tls_client,
)
from fleet.files import OutputPathError, check_output_path, write_output
from fleet.load.orchestrator import RunOptions, run_profile, summary_table
from fleet.load.profiles import OverrideError, load_profile
from fleet.load.shards import Shard, ShardError, parse_shard, parse_start_at, shard_from_env
from fleet.secrets import read_secret

EPILOG = examples(
    "fleet run profiles/smoke.toml",
    "fleet run profiles/ramp-to-break.toml --duration 30 --report run.json",
    "fleet run profiles/nf-rotation.toml --rate 300 --duration 60 \\\n    --metrics-port 9400",
    "fleet run profiles/steady.toml --workers 2 \\\n"
    "    --server http://ca.example:8080/.well-known/cmp \\\n"
    "    --master-secret env:FLEET_MASTER --trusted operator-root.pem",
    "fleet run profiles/steady.toml --shard 0/3 \\\n"
    "    --start-at 2026-12-05T13:00:00Z --report shard-0.json \\\n"
    "    --server http://ca.example:8080/.well-known/cmp \\\n"
    "    --master-secret env:FLEET_MASTER",
)

_FLAGS = {"rate": "--rate", "duration": "--duration", "devices": "--devices", "workers": "--workers",
          "max_in_flight": "--max-in-flight"}


def run(
    ctx: typer.Context,
    profile: Annotated[Path, typer.Argument(metavar="PROFILE", help="Profile file, e.g. profiles/smoke.toml.")],
    server: Annotated[str | None, typer.Option("--server", metavar="URL", help="CA URL; without it fleet starts its embedded CA on loopback.")] = None,
    trusted: Annotated[list[Path] | None, typer.Option("--trusted", metavar="PEM", help="Trust anchors for signed CA responses (repeatable).")] = None,
    master_secret: Annotated[str | None, typer.Option("--master-secret", metavar="SECRET", help="Master secret the CA derives per-device MAC secrets from: pass:, env:, file:.")] = None,
    rate: Annotated[float | None, typer.Option("--rate", callback=bounded(POSITIVE), help="Peak arrival rate per second: scales every rate of the profile's shape (constant/poisson: the rate; ramp, steps, spike, sine: in proportion, so the highest becomes this).")] = None,
    duration: Annotated[float | None, typer.Option("--duration", callback=bounded(POSITIVE), help="Run length in seconds; a ramp, steps or spike plays whole in it (its timeline is stretched), constant, poisson and sine just run longer or shorter.")] = None,
    devices: Annotated[int | None, typer.Option("--devices", callback=bounded(COUNT), help="Number of virtual devices (closed model: of looping devices).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", callback=bounded(COUNT), help="Worker processes, each with an exact share of devices and rate.")] = None,
    max_in_flight: Annotated[int | None, typer.Option("--max-in-flight", callback=bounded(COUNT), help="Arrivals beyond this many in flight are dropped (counted).")] = None,
    report: Annotated[Path | None, typer.Option("--report", metavar="FILE", help="Write the JSON report here (checked before the run starts).")] = None,
    abort_on_fail: Annotated[bool, typer.Option("--abort-on-fail", help="Stop as soon as the error-rate SLO is broken.")] = False,
    keys: Annotated[Path | None, typer.Option("--keys", metavar="DIR", help="Key pool folder (default: the user cache folder).")] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", callback=bounded(PORT), help="Serve Prometheus /metrics on this port (worker N on port+N, the embedded CA after the workers).")] = None,
    metrics_host: Annotated[str | None, typer.Option("--metrics-host", metavar="ADDR", help="Address /metrics binds to (default: $FLEET_METRICS_HOST, else 127.0.0.1; 0.0.0.0 exposes it to the network).")] = None,
    ca_dir: Annotated[Path | None, typer.Option("--ca-dir", metavar="DIR", help="State folder for the embedded CA (default: a temporary one).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No live progress line.")] = False,
    proxy: ProxyOpt = None,
    tls_trusted: TlsTrusted = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_key_pass: TlsKeyPass = None,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="Run even when --server cannot be connected to at the start (by default the run stops at once, in one line).")] = False,
    shard: Annotated[str | None, typer.Option("--shard", metavar="I/N", help="Play shard I of N of the run (its exact share of arrivals and device identities); merge the shards' reports with fleet report merge.")] = None,
    shards: Annotated[int | None, typer.Option("--shards", metavar="N", callback=bounded(COUNT), help="Shard count of a Kubernetes Indexed Job: the shard index comes from JOB_COMPLETION_INDEX (default: $FLEET_SHARDS).")] = None,
    start_at: Annotated[str | None, typer.Option("--start-at", metavar="TIME", help="Start at this UTC time (2026-12-05T13:00:00Z or epoch seconds) so shards run in step.")] = None,
) -> None:
    """Run a load profile and print the summary and the SLO verdict (exit 1 when it fails).

    --rate, --duration, --devices, --workers and --max-in-flight override the profile's values;
    the other options are not profile values.
    """
    loaded = load_profile(profile)
    try:
        loaded = loaded.with_flags(
            rate=rate, duration=duration, devices=devices, workers=workers, max_in_flight=max_in_flight
        )
    except OverrideError as exc:
        raise typer.BadParameter(exc.problem, ctx=ctx, param_hint=f"'{_FLAGS.get(exc.key, exc.key)}'") from None
    if metrics_port is not None and metrics_port + loaded.workers > 65535:
        raise typer.BadParameter(
            f"{metrics_port} + {loaded.workers} workers (and the embedded CA after them) passes port 65535",
            ctx=ctx, param_hint="'--metrics-port'",
        )
    if report is not None:
        check_output_path(report, "--report")
    the_shard, start = _shard_options(ctx, shard, shards, start_at)
    if metrics_host:
        # Worker processes are spawned from the orchestrator and read it from their environment.
        os.environ["FLEET_METRICS_HOST"] = metrics_host
    # The orchestrator writes the report into a private folder; it is moved to --report only
    # after the table and the verdict are shown, so a failing write cannot lose them (nor the run).
    staging = Path(tempfile.mkdtemp(prefix="fleet-report-"))
    keep_staging = False
    try:
        options = RunOptions(
            server=server,
            trusted=list(trusted or []),
            master_secret=read_secret(master_secret) if master_secret else None,
            keys_dir=keys,
            report=staging / "run.json" if report is not None else None,
            abort_on_fail=abort_on_fail,
            progress=not quiet,
            metrics_port=metrics_port,
            ca_dir=ca_dir,
            keep_going=keep_going,
            proxy=proxy,
            tls=tls_client(tls_trusted, tls_cert, tls_key, tls_key_pass),
            shard=the_shard,
            start_at=start,
        )
        results, verdict = run_profile(loaded, options)
        print(summary_table(loaded, results))
        failed_write = None
        if report is not None and options.report is not None:
            try:
                _move(options.report, report)
                print(f"report: {report}")
            except OutputPathError as exc:
                keep_staging = True
                failed_write = f"{exc}; the report is kept in {options.report}"
        print(verdict.line(), flush=True)
    finally:
        if not keep_staging:
            shutil.rmtree(staging, ignore_errors=True)
    if failed_write is not None:
        print(f"fleet: error: {failed_write}", file=sys.stderr)
    if results.interrupted and not results.aborted:
        print("fleet: interrupted: the figures above cover the run until then", file=sys.stderr)
    if verdict.exit_code:
        sys.exit(verdict.exit_code)  # 1 failed or aborted, 128 + signal when interrupted
    if failed_write is not None:
        sys.exit(1)


def _shard_options(ctx: typer.Context, shard: str | None, shards: int | None,
                   start_at: str | None) -> tuple[Shard | None, float | None]:
    """--shard, --shards (+ JOB_COMPLETION_INDEX) and --start-at, each refused as a usage error."""
    hint = "'--shard'"
    found: Shard | None
    try:
        if shard is not None:
            found = parse_shard(shard)
            if shards is not None and shards != found.count:
                raise ShardError(f"--shard {shard} and --shards {shards} disagree on the shard count")
        else:
            hint = "'--shards'"
            found = shard_from_env(shards)
        hint = "'--start-at'"
        start = None if start_at is None else parse_start_at(start_at, time.time())
    except ShardError as exc:
        raise typer.BadParameter(str(exc), ctx=ctx, param_hint=hint) from None
    return found, start


def _move(staged: Path, target: Path) -> None:
    """Copy the staged report to ``target`` atomically (never a torn file at ``target``)."""
    write_output(target, staged.read_bytes(), "--report")
