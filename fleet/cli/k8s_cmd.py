"""``fleet k8s manifest PROFILE --shards N --image IMAGE --server URL``: the Kubernetes objects
of a sharded run (an Indexed Job and what it needs), or with ``--capacity`` of a capacity search
in shards (a leader Job and its followers), as YAML for ``kubectl apply -f``."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from fleet.bounds import COUNT, PORT, POSITIVE
from fleet.cli.usage import bounded, examples
from fleet.files import check_output_path, write_output
from fleet.load.k8s import (
    K8sManifestError,
    ManifestOptions,
    capacity_objects,
    manifest_objects,
    to_yaml,
)
from fleet.load.profiles import load_profile
from fleet.load.shards import ShardError, parse_start_at

EPILOG = examples(
    "kubectl create secret generic fleet-master \\\n    --from-literal=master-secret=\"$FLEET_MASTER\"",
    "fleet k8s manifest profiles/steady.toml --shards 4 \\\n"
    "    --image registry.example/fleet:0.1 \\\n"
    "    --server http://ca.example:8080/.well-known/cmp --out run.yaml",
    "kubectl apply -f run.yaml",
    "fleet k8s manifest profiles/steady.toml --capacity --shards 4 \\\n"
    "    --image registry.example/fleet:0.1 --max-rate 4000 \\\n"
    "    --server http://ca.example:8080/.well-known/cmp --out capacity.yaml",
)

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="Kubernetes manifests for runs in shards.", epilog=EPILOG)


@app.command(epilog=EPILOG, short_help="Write the Kubernetes YAML of a run in N shards.")
def manifest(
    ctx: typer.Context,
    profile: Annotated[Path, typer.Argument(metavar="PROFILE", help="Profile file; it goes into a ConfigMap as it is.")],
    shards: Annotated[int, typer.Option("--shards", callback=bounded(COUNT), help="Pods of the Indexed Job, each playing one shard.")],
    image: Annotated[str, typer.Option("--image", metavar="IMAGE", help="Image built from deploy/kubernetes/Containerfile.")],
    server: Annotated[str, typer.Option("--server", metavar="URL", help="The CA every shard loads.")],
    name: Annotated[str | None, typer.Option("--name", help="Name of the Job and its objects (default: fleet-<profile name>).")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", help="Namespace of every object (default: kubectl's).")] = None,
    start_at: Annotated[str | None, typer.Option("--start-at", metavar="TIME", help="Common start, UTC (default: now + --lead).")] = None,
    lead: Annotated[float, typer.Option("--lead", callback=bounded(POSITIVE), help="Seconds from now to the default start: time to apply the manifest, pull the image and start the pods.")] = 180.0,
    secret_name: Annotated[str, typer.Option("--secret-name", help="Existing Secret with the master secret under key master-secret.")] = "fleet-master",
    metrics_port: Annotated[int, typer.Option("--metrics-port", callback=bounded(PORT), help="Port of each shard's /metrics (scraped through the PodMonitor).")] = 9100,
    storage: Annotated[str, typer.Option("--storage", help="Size of the ReadWriteMany volume the reports go to.")] = "1Gi",
    storage_class: Annotated[str | None, typer.Option("--storage-class", help="Storage class of that volume (a ReadWriteMany one).")] = None,
    out: Annotated[Path | None, typer.Option("--out", metavar="FILE", help="Write the YAML here (default: standard output).")] = None,
    capacity: Annotated[bool, typer.Option("--capacity", help="A capacity search instead of one run: a leader Job runs fleet capacity, the Indexed Job's N pods follow it and play every step.")] = False,
    min_rate: Annotated[float | None, typer.Option("--min-rate", callback=bounded(POSITIVE), help="--capacity: the first rate tried.")] = None,
    max_rate: Annotated[float | None, typer.Option("--max-rate", callback=bounded(POSITIVE), help="--capacity: the highest rate tried.")] = None,
    step_duration: Annotated[float | None, typer.Option("--step-duration", callback=bounded(POSITIVE), help="--capacity: seconds each step offers its rate.")] = None,
    require: Annotated[float | None, typer.Option("--require", metavar="RATE", callback=bounded(POSITIVE), help="--capacity: the leader fails unless the capacity found is at least RATE.")] = None,
) -> None:
    """Write the Kubernetes objects of a run in N shards: the profile's ConfigMap, a volume for
    the reports, a headless Service, the Indexed Job, a merge Job and a PodMonitor. With
    --capacity: a capacity search, its leader Job in place of the merge Job."""
    loaded = load_profile(profile)
    now = time.time()
    try:
        start = parse_start_at(start_at, now) if start_at else now + lead
    except ShardError as exc:
        raise typer.BadParameter(str(exc), ctx=ctx, param_hint="'--start-at'") from None
    stamp = datetime.fromtimestamp(round(start), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    default_name = "fleet-" + re.sub(r"[^a-z0-9]+", "-", loaded.name.lower()).strip("-")
    if out is not None:
        check_output_path(out, "--out")
    try:
        options = ManifestOptions(
            name=name or default_name[:52].rstrip("-"), profile_text=profile.read_text(), shards=shards, image=image,
            server=server, start_at=stamp, namespace=namespace, secret_name=secret_name, metrics_port=metrics_port,
            storage=storage, storage_class=storage_class,
        )
    except K8sManifestError as exc:
        raise typer.BadParameter(str(exc), ctx=ctx) from None
    search = [flag for flag, value in (("--min-rate", min_rate), ("--max-rate", max_rate),
                                       ("--step-duration", step_duration), ("--require", require)) if value is not None]
    if search and not capacity:
        raise typer.BadParameter(f"{search[0]} is for --capacity", ctx=ctx, param_hint=f"'{search[0]}'")
    needs = f"needs: kubectl create secret generic {secret_name} --from-literal=master-secret=..."
    if capacity:
        args = [part for flag, value in (("--min-rate", min_rate), ("--max-rate", max_rate),
                                         ("--step-duration", step_duration), ("--require", require))
                if value is not None for part in (flag, f"{value:g}")]
        header = [f"fleet k8s manifest --capacity: a capacity search of {loaded.name} in {shards} shards", needs,
                  f"the answer: kubectl logs -f job/{options.name}-leader; reports: /shared/capacity.{{json,html}}"]
        text = to_yaml(capacity_objects(options, args), header)
        what = f"capacity search in {shards} shards"
    else:
        header = [f"fleet k8s manifest: {shards} shards of {loaded.name}, starting {stamp}", needs,
                  "reports: /reports/shard-N.json, merged into /reports/run.json and report.html by the merge Job"]
        text = to_yaml(manifest_objects(options), header)
        what = f"{shards} shards, start {stamp}"
    if out is None:
        print(text, end="")
    else:
        write_output(out, text.encode(), "--out")
        print(f"manifest: {out} ({what})")


__all__ = ["app", "manifest"]
