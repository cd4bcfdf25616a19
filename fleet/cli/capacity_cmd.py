"""``fleet capacity PROFILE``: the highest rate the CA sustains under the profile's SLO."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleet.bounds import COUNT, NON_NEGATIVE, PORT, POSITIVE
from fleet.capacity_report import render_capacity_html
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
from fleet.files import check_output_path, write_output
from fleet.load.capacity import SearchError
from fleet.load.capacity_run import CapacityOptions, run_capacity
from fleet.load.capacity_shards import PROXY_ENV
from fleet.load.capacity_shards import follow as follow_search
from fleet.load.orchestrator import RunOptions
from fleet.load.profiles import Profile, load_profile
from fleet.load.shards import Shard, ShardError, parse_shard, shard_from_env
from fleet.secrets import read_secret
from fleet.tls import TlsClient

EPILOG = examples(
    "fleet capacity profiles/ramp-to-break.toml --report capacity.json",
    "fleet capacity profiles/steady.toml --min-rate 100 --max-rate 4000 \\\n"
    "    --require 1500 --server http://ca.example:8080/.well-known/cmp \\\n"
    "    --master-secret env:FLEET_MASTER --html capacity.html",
    "fleet capacity profiles/steady.toml --shards 3 --max-rate 3000",
    "fleet capacity profiles/steady.toml --max-rate 2000 \\\n"
    "    --server https://ca.example/.well-known/cmp \\\n"
    "    --tls-trusted ca-tls-root.pem --tls-cert client.pem \\\n"
    "    --tls-key client.key --master-secret env:FLEET_MASTER",
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
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", callback=bounded(PORT), help="Serve the search's progress (fleet_capacity_*) on /metrics here, the embedded CA's on the next port (--follow: this shard's load metrics during each step).")] = None,
    shards: Annotated[int | None, typer.Option("--shards", metavar="N", callback=bounded(COUNT), help="Play each step in N shards (each its exact share of arrivals and devices; their reports merged exactly): N local processes, or with --shard-dir the followers sharing that directory. --follow: the shard count, the index from JOB_COMPLETION_INDEX.")] = None,
    shard_dir: Annotated[Path | None, typer.Option("--shard-dir", metavar="DIR", help="Directory the leader and its followers share (a Kubernetes volume): steps' plans and shard reports.")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Be a follower: play this shard of every step the leader in --shard-dir plans, until the search ends.")] = False,
    shard: Annotated[str | None, typer.Option("--shard", metavar="I/N", help="--follow: play shard I of N.")] = None,
    lead: Annotated[float, typer.Option("--lead", callback=bounded(POSITIVE), help="With --shards: seconds from writing a step's plan to its common start (raise it on a slow shared volume).")] = 2.0,
    proxy: ProxyOpt = None,
    tls_trusted: TlsTrusted = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_key_pass: TlsKeyPass = None,
) -> None:
    """Find the highest arrival rate the CA sustains under the profile's SLO: coarse steps up,
    then bisection; each step measured after a warm-up and checked for a steady state. Prints
    each step, then the capacity with its interval, the knee and the first SLO to break."""
    loaded = load_profile(profile)
    tls = tls_client(tls_trusted, tls_cert, tls_key, tls_key_pass)
    if follow or shard is not None:
        _follow(ctx, follow, profile, loaded, shard_dir, shard, shards, server, trusted, master_secret, keys, metrics_port,
                proxy, tls)
        return
    if shard_dir is not None and shards is None:
        raise typer.BadParameter("--shard-dir needs --shards N (or --follow)", ctx=ctx, param_hint="'--shard-dir'")
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
        metrics_port=metrics_port, shards=shards, shard_dir=shard_dir, lead=lead, profile_path=profile, proxy=proxy,
        tls=tls,
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


def _follow(ctx: typer.Context, follow: bool, path: Path, loaded: Profile, shard_dir: Path | None, shard: str | None,
            shards: int | None, server: str | None, trusted: list[Path] | None, master_secret: str | None,
            keys: Path | None, metrics_port: int | None, proxy: str | None, tls: TlsClient | None) -> None:
    """``--follow``: play this shard of each step the leader plans in ``shard_dir``."""
    if not follow:
        raise typer.BadParameter("--shard is for followers: add --follow", ctx=ctx, param_hint="'--shard'")
    if shard_dir is None:
        raise typer.BadParameter("--follow needs --shard-dir DIR (shared with the leader)", ctx=ctx, param_hint="'--shard-dir'")
    if server is None:
        raise typer.BadParameter("--follow needs --server URL (the CA the leader searches)", ctx=ctx, param_hint="'--server'")
    found: Shard | None
    try:
        if shard is not None:
            found = parse_shard(shard)
            if shards is not None and shards != found.count:
                raise ShardError(f"--shard {shard} and --shards {shards} disagree on the shard count")
        else:
            found = shard_from_env(shards)
    except ShardError as exc:
        raise typer.BadParameter(str(exc), ctx=ctx, param_hint="'--shard'" if shard else "'--shards'") from None
    if found is None:
        raise typer.BadParameter("--follow needs --shard I/N, or --shards N with JOB_COMPLETION_INDEX", ctx=ctx,
                                 param_hint="'--shard'")
    master = read_secret(master_secret) if master_secret else None
    if loaded.devices.auth == "mac" and master is None:
        raise typer.BadParameter("MAC devices need --master-secret (per-device secrets are derived from it)", ctx=ctx,
                                 param_hint="'--master-secret'")
    if proxy is None:  # a local follower is handed its leader's --proxy here (a URL may hold a password)
        proxy = os.environ.get(PROXY_ENV)
    options = RunOptions(server=server, trusted=list(trusted or []), master_secret=master, keys_dir=keys,
                         progress=False, metrics_port=metrics_port, proxy=proxy, tls=tls)
    follow_search(path, loaded, shard_dir, found, options)


__all__ = ["capacity"]
