"""``fleet capacity``: run the search's steps against one CA (the embedded one, started once,
unless a server is given), with a cool-down between them, and write the answer and every step's
full results (mergeable histograms) as one JSON document."""

from __future__ import annotations

import signal
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from fleet.errors import FleetError
from fleet.load.capacity import (
    CapacityAnswer,
    CapacitySearch,
    StepAssessment,
    answer,
    assess_step,
    step_profile,
)
from fleet.load.capacity_metrics import CapacityMetrics
from fleet.load.capacity_shards import ShardedSteps
from fleet.load.embedded_ca import EmbeddedCa
from fleet.load.orchestrator import RunOptions, prepare_keys, report_dict, run_profile
from fleet.load.profiles import Profile
from fleet.load.schedule import Closed
from fleet.load.verdict import slo_dict
from fleet.tls import TlsClient

__all__ = ["CapacityError", "CapacityOptions", "run_capacity", "step_profile"]


class CapacityError(FleetError):
    """A capacity search that cannot start as configured."""


@dataclass
class CapacityOptions:
    min_rate: float
    max_rate: float
    step_duration: float = 30.0
    warmup: float | None = None  # None: a quarter of the step, at least 1 s
    cool_down: float = 5.0
    factor: float = 2.0
    tolerance: float = 0.03
    max_steps: int = 24
    require: float | None = None
    server: str | None = None
    trusted: list[Path] = field(default_factory=list)
    master_secret: bytes | None = None
    keys_dir: Path | None = None
    ca_dir: Path | None = None
    metrics_port: int | None = None  # the search's gauges here, the embedded CA's on the next port
    shards: int | None = None  # each step played by this many follower processes, merged exactly
    shard_dir: Path | None = None  # with shards: the directory external followers share (None: local ones)
    lead: float = 2.0  # with shards: seconds from a step's plan to its common start
    profile_path: Path | None = None  # with shards: the profile file the followers load
    proxy: str | None = None  # --proxy; None: from the environment
    tls: TlsClient | None = None  # --tls-*: server verification, client certificate

    @property
    def warmup_seconds(self) -> float:
        return self.warmup if self.warmup is not None else max(1.0, self.step_duration / 4)


def run_capacity(profile: Profile, options: CapacityOptions, out: TextIO = sys.stdout,
                 log: TextIO = sys.stderr) -> tuple[dict[str, Any], CapacityAnswer]:
    """Search, one step after another; each step's line goes to ``out`` as it ends."""
    if isinstance(profile.shape, Closed):
        raise CapacityError("fleet capacity offers rates: a closed-model profile has none (use an open model)")
    warmup = options.warmup_seconds
    if options.step_duration - warmup < 2:
        raise CapacityError(f"a step of {options.step_duration:g} s with {warmup:g} s of warm-up leaves under 2 s to measure")
    search = CapacitySearch(options.min_rate, options.max_rate, options.factor, options.tolerance, options.max_steps)
    steps: list[tuple[StepAssessment, dict[str, Any]]] = []
    started = time.monotonic()
    interrupted = 0
    with ExitStack() as stack:
        metrics = None
        if options.metrics_port is not None:
            metrics = CapacityMetrics()
            metrics.listen(options.metrics_port)
            stack.callback(metrics.close)
            stack.callback(metrics.finish)  # runs first: the last step's outcome is scraped, then close
        trusted = list(options.trusted)
        master = options.master_secret
        url = options.server
        if url is None:
            ca_port = None if options.metrics_port is None else options.metrics_port + 1
            ca = stack.enter_context(EmbeddedCa(options.ca_dir, config=profile.ca, metrics_port=ca_port))
            url, master = ca.url, ca.master_secret
            trusted.append(ca.root_path)
            print(f"fleet: embedded CA at {url} (state {ca.state_dir})", file=log)
        elif profile.devices.auth == "mac" and master is None:
            raise CapacityError("MAC devices need --master-secret (per-device secrets are derived from it)")
        run_options = RunOptions(server=url, trusted=trusted, master_secret=master, keys_dir=options.keys_dir,
                                 progress=False, warmup=warmup, proxy=options.proxy, tls=options.tls)
        sharded = None
        if options.shards:
            if options.profile_path is None:
                raise CapacityError("--shards needs the profile's file (the followers load it)")
            top = (options.max_rate, options.step_duration)
            if options.shard_dir is None:  # local followers share this key cache: filled once, here
                prepare_keys(step_profile(profile, *top), options.keys_dir, log)
            sharded = stack.enter_context(ShardedSteps(
                options.profile_path, options.shards, url, directory=options.shard_dir, master_secret=master,
                trusted=trusted, keys_dir=options.keys_dir, lead=options.lead, proxy=options.proxy, tls=options.tls,
                transaction_timeout=profile.transaction_timeout, top=top, log=log))
        while (rate := search.next_rate()) is not None:
            if steps:
                time.sleep(options.cool_down)  # let the CA settle: queues drain, timers fire
            phase = search.phase
            sp = step_profile(profile, rate, options.step_duration)
            if metrics is not None:
                metrics.step_started(len(steps) + 1, rate)
            if sharded is not None:
                try:
                    results, step_report = sharded.play(len(steps) + 1, rate, sp, warmup)
                except KeyboardInterrupt:  # Ctrl-C (the followers stop their step too): answer so far
                    interrupted = int(signal.SIGINT)
                    search.stop_reason = "interrupted"
                    break
            else:
                results, verdict = run_profile(sp, replace(run_options), log)
                step_report = report_dict(sp, results, verdict, url)
            assessed = assess_step(rate, profile.slo, profile.flow, options.step_duration, warmup, results)
            search.record(rate, assessed.passed, assessed.broken)
            if metrics is not None:
                metrics.step_done(assessed, search.highest_pass)
            steps.append((assessed, step_report))
            print(_step_line(len(steps), phase, assessed), file=out, flush=True)
            if results.interrupted:
                interrupted = results.interrupt_signal or 2
                search.stop_reason = "interrupted"
                break
    found = answer([a for a, _ in steps], search)
    met = None if options.require is None else (found.capacity is not None and found.capacity >= options.require)
    doc = {
        "fleet_capacity": 1,
        "profile": profile.name,
        "server": url,
        "flow": list(profile.flow),
        "slo": slo_dict(profile.slo),
        "search": {"min_rate": options.min_rate, "max_rate": options.max_rate, "factor": options.factor,
                   "tolerance": options.tolerance, "step_seconds": options.step_duration, "warmup_seconds": warmup,
                   "cool_down_seconds": options.cool_down, "shards": options.shards or 1},
        "answer": found.to_dict(),
        "require": options.require,
        "require_met": met,
        "interrupted_by": interrupted,
        "elapsed_seconds": time.monotonic() - started,
        "steps": [{"assessment": a.to_dict(), "report": r} for a, r in steps],
    }
    return doc, found


def _step_line(n: int, phase: str, a: StepAssessment) -> str:
    p99 = next(iter(a.p99.items()), None)
    lat = f"{p99[0]} p99 {p99[1] * 1e3:.0f} ms" if p99 and p99[1] is not None else "no successes"
    state = "held" if a.passed else "FAILED: " + "; ".join(a.reasons)
    if a.client_limit:
        state += f" (client-limited: {a.client_limit})"
    return f"step {n} ({phase}): {a.rate:g}/s offered, {a.achieved_rate:.1f}/s achieved, {lat}: {state}"
