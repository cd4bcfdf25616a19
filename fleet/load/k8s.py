"""``fleet k8s manifest``: the Kubernetes objects of a sharded load run.

An Indexed Job runs N pods, pod I playing shard I of N (``fleet run --shards N``, the index from
``JOB_COMPLETION_INDEX``), all starting at one UTC instant; the profile comes from a ConfigMap,
the master secret from an existing Secret (never written into the manifest); each shard writes
its report to a shared volume, where a merge Job waits for all N and writes the merged report
and page. A headless Service names the pods and a PodMonitor has Prometheus scrape every shard.

Pure functions from options to a list of objects, and a small YAML writer for them (block style,
every string quoted as a JSON string, which YAML reads as the same string).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleet.errors import FleetError

__all__ = ["CAPACITY_LEAD", "K8sManifestError", "ManifestOptions", "capacity_objects", "manifest_objects", "to_yaml"]

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")


class K8sManifestError(FleetError):
    """Options that cannot make a valid manifest."""


@dataclass(frozen=True)
class ManifestOptions:
    name: str
    profile_text: str
    shards: int
    image: str
    server: str
    start_at: str  # ISO 8601 UTC, shared by every shard
    namespace: str | None = None
    secret_name: str = "fleet-master"
    secret_key: str = "master-secret"
    metrics_port: int = 9100
    storage: str = "1Gi"
    storage_class: str | None = None
    cpu: str = "1"
    memory: str = "512Mi"

    def __post_init__(self) -> None:
        for what, value in (("name", self.name), ("secret name", self.secret_name)):
            if not _NAME.match(value):
                raise K8sManifestError(f"{what} {value!r} is not a Kubernetes name (lower case letters, digits and -, up to 52)")
        if self.shards < 1:
            raise K8sManifestError(f"shards must be at least 1, not {self.shards}")
        if not self.image.strip():
            raise K8sManifestError("--image names the container image built from deploy/kubernetes/Containerfile")


def _meta(options: ManifestOptions, name: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": _labels(options)}
    if options.namespace:
        meta["namespace"] = options.namespace
    return meta | extra


def _labels(options: ManifestOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": "fleet", "app.kubernetes.io/instance": options.name}


def _shard_labels(options: ManifestOptions) -> dict[str, str]:
    return _labels(options) | {"app.kubernetes.io/component": "shard"}


_SECURITY = {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001}
_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _claim(options: ManifestOptions, name: str) -> dict[str, Any]:
    claim: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": options.storage}}}
    if options.storage_class:
        claim["storageClassName"] = options.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(options, name), "spec": claim}


def _env(options: ManifestOptions, *extra: tuple[str, str]) -> list[dict[str, Any]]:
    return [
        {"name": "FLEET_SHARDS", "value": str(options.shards)},
        *({"name": k, "value": v} for k, v in extra),
        {"name": "FLEET_MASTER", "valueFrom": {"secretKeyRef": {"name": options.secret_name, "key": options.secret_key}}},
    ]


def _job(options: ManifestOptions, name: str, labels: dict[str, str], container: dict[str, Any],
         volumes: list[dict[str, Any]], *, shards: int | None = None) -> dict[str, Any]:
    """A Job of one pod, or (``shards``) an Indexed Job of that many, never retried: a pod
    restarted after the common start would play out of step."""
    spec: dict[str, Any] = {"backoffLimit": 0}
    pod: dict[str, Any] = {"restartPolicy": "Never", "securityContext": _SECURITY,
                           "containers": [{**container, "securityContext": _CONTAINER_SECURITY}], "volumes": volumes}
    if shards is not None:
        spec = {"completionMode": "Indexed", "completions": shards, "parallelism": shards, **spec}
        pod = {"subdomain": options.name, **pod}
    spec["template"] = {"metadata": {"labels": labels}, "spec": pod}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(options, name), "spec": spec}


def _profile_map(options: ManifestOptions) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(options, f"{options.name}-profile"),
            "data": {"profile.toml": options.profile_text}}


def _service(options: ManifestOptions) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(options, options.name),
            "spec": {"clusterIP": "None", "selector": _shard_labels(options),
                     "ports": [{"name": "metrics", "port": options.metrics_port, "targetPort": "metrics"}]}}


def _pod_monitor(options: ManifestOptions, selector: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": _meta(options, options.name),
            "spec": {"selector": selector, "podMetricsEndpoints": [{"port": "metrics", "interval": "5s"}]}}


def manifest_objects(options: ManifestOptions) -> list[dict[str, Any]]:
    """ConfigMap, PersistentVolumeClaim, headless Service, Indexed Job, merge Job, PodMonitor."""
    name, n = options.name, options.shards
    volumes = [
        {"name": "profile", "configMap": {"name": f"{name}-profile"}},
        {"name": "reports", "persistentVolumeClaim": {"claimName": f"{name}-reports"}},
    ]
    mounts = [{"name": "profile", "mountPath": "/profile", "readOnly": True},
              {"name": "reports", "mountPath": "/reports"}]
    resources = {"requests": {"cpu": options.cpu, "memory": options.memory}}
    shard_args = [
        "run", "/profile/profile.toml", "--shards", str(n), "--start-at", options.start_at,
        "--server", options.server, "--master-secret", "env:FLEET_MASTER",
        "--report", "/reports/shard-$(JOB_COMPLETION_INDEX).json",
        "--metrics-port", str(options.metrics_port), "--metrics-host", "0.0.0.0", "--quiet",
    ]
    shard_job = _job(options, name, _shard_labels(options), {
        "name": "fleet", "image": options.image, "args": shard_args, "env": _env(options),
        "ports": [{"name": "metrics", "containerPort": options.metrics_port}],
        "resources": resources, "volumeMounts": mounts,
    }, volumes, shards=n)
    wait = (f"until [ \"$(ls /reports/shard-*.json 2>/dev/null | wc -l)\" -ge {n} ]; do sleep 5; done; "
            "exec fleet report merge /reports/shard-*.json --out /reports/run.json --html /reports/report.html")
    merge_job = _job(options, f"{name}-merge", _labels(options) | {"app.kubernetes.io/component": "merge"}, {
        "name": "merge", "image": options.image, "command": ["/bin/sh", "-c", wait],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        "volumeMounts": [{"name": "reports", "mountPath": "/reports"}],
    }, [volumes[1]])
    return [_profile_map(options), _claim(options, f"{name}-reports"), _service(options), shard_job, merge_job,
            _pod_monitor(options, {"matchLabels": _shard_labels(options)})]


CAPACITY_LEAD = 10.0  # seconds from a step's plan to its start: a shared volume may show files late


def capacity_objects(options: ManifestOptions, search_args: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``fleet capacity --shards N`` on Kubernetes: a leader Job searches, an Indexed Job of N
    followers plays every step (each its shard), both on one shared volume (the steps' plans,
    the shards' reports, and the search's report and page at the end); the PodMonitor scrapes
    the leader's fleet_capacity_* and every follower's load metrics. ``search_args``: the
    leader's other ``fleet capacity`` options (--min-rate, --max-rate, ...)."""
    name, n = options.name, options.shards
    volumes = [
        {"name": "profile", "configMap": {"name": f"{name}-profile"}},
        {"name": "shared", "persistentVolumeClaim": {"claimName": f"{name}-shared"}},
    ]
    mounts = [{"name": "profile", "mountPath": "/profile", "readOnly": True},
              {"name": "shared", "mountPath": "/shared"}]
    resources = {"requests": {"cpu": options.cpu, "memory": options.memory}}
    common = ["capacity", "/profile/profile.toml", "--shards", str(n), "--shard-dir", "/shared/search",
              "--server", options.server, "--master-secret", "env:FLEET_MASTER",
              "--metrics-port", str(options.metrics_port)]
    ports = [{"name": "metrics", "containerPort": options.metrics_port}]
    host = ("FLEET_METRICS_HOST", "0.0.0.0")
    followers = _job(options, name, _shard_labels(options), {
        "name": "fleet", "image": options.image, "args": [*common, "--follow"], "env": _env(options, host),
        "ports": ports, "resources": resources, "volumeMounts": mounts,
    }, volumes, shards=n)
    leader_labels = _labels(options) | {"app.kubernetes.io/component": "leader"}
    leader_args = [*common, "--lead", f"{CAPACITY_LEAD:g}", "--report", "/shared/capacity.json",
                   "--html", "/shared/capacity.html", *search_args]
    leader = _job(options, f"{name}-leader", leader_labels, {
        "name": "leader", "image": options.image, "args": leader_args, "env": _env(options, host),
        "ports": ports, "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}, "volumeMounts": mounts,
    }, volumes)
    monitor = _pod_monitor(options, {"matchLabels": _labels(options), "matchExpressions": [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["shard", "leader"]}]})
    return [_profile_map(options), _claim(options, f"{name}-shared"), _service(options), followers, leader, monitor]


# -- YAML -------------------------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)


def _lines(value: Any, indent: int) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            k = key if re.fullmatch(r"[A-Za-z0-9_./-]+", key) else json.dumps(key)
            if isinstance(item, str) and "\n" in item:
                out.append(f"{pad}{k}: |")
                out.extend(f"{pad}  {line}" if line else "" for line in item.rstrip("\n").split("\n"))
            elif isinstance(item, (Mapping, list)) and item:
                out.append(f"{pad}{k}:")
                out.extend(_lines(item, indent + 1))
            else:
                out.append(f"{pad}{k}: {_scalar(item) if not isinstance(item, (Mapping, list)) else '{}' if isinstance(item, Mapping) else '[]'}")
    else:
        for item in value:
            if isinstance(item, (Mapping, list)) and item:
                inner = _lines(item, indent + 1)
                out.append(f"{pad}- {inner[0].lstrip()}")
                out.extend(inner[1:])
            else:
                out.append(f"{pad}- {_scalar(item)}")
    return out


def to_yaml(objects: Sequence[Mapping[str, Any]], header: Sequence[str] = ()) -> str:
    """A multi-document YAML stream; ``header`` lines become comments at the top."""
    parts = [f"# {line}" for line in header]
    for obj in objects:
        parts.append("---")
        parts.extend(_lines(obj, 0))
    return "\n".join(parts) + "\n"
