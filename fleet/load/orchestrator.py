"""``fleet run``: key pools, the embedded CA when no server is given, worker processes, live
progress, the merged report and the SLO verdict."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import queue
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import trio

from fleet.cmp.habits import WARNINGS
from fleet.cmp.protection import SignatureProtector
from fleet.cmp.trust import TrustStore
from fleet.connect import is_coap, probe
from fleet.errors import FleetError
from fleet.files import atomic_write, certs_pem, load_certificates, private_key_pem
from fleet.http.client import CmpHttpClient
from fleet.keys import KeyPool, KeyPoolStore, KeySpec
from fleet.load.announcements import DeviceAnnouncements, announcement_setup
from fleet.load.device import DeviceFactory, VendorCa
from fleet.load.embedded_ca import EmbeddedCa
from fleet.load.embedded_ra import EmbeddedRa
from fleet.load.histogram import LatencyHistogram
from fleet.load.metrics import FleetMetrics
from fleet.load.prepared import Identity, flow_has_kur
from fleet.load.prepared_store import PreparedStore, ensure_prepared
from fleet.load.profiles import Profile
from fleet.load.refill import Refill, start_helper
from fleet.load.results import RunResults, client_limit
from fleet.load.runner import WorkerPlan, WorkerRun
from fleet.load.schedule import Closed
from fleet.load.segments import Segment, split
from fleet.load.shards import Shard
from fleet.load.verdict import Verdict, report_document, slo_verdict
from fleet.ra.batching import nesting
from fleet.ra.credentials import make_ra_credential
from fleet.runtime import tune_gc
from fleet.tls import TlsClient
from fleet.transport import TransportError, TransportFactory

KEY_OPS = ("ir", "cr", "p10cr", "kur")
EXTRA_OPS = ("revoke", "reenroll")  # [announcements]: the run's revocations, the re-enrollments they trigger


class RunError(FleetError):
    """A run that cannot start as configured."""


@dataclass
class RunOptions:
    server: str | None = None
    trusted: list[Path] = field(default_factory=list)
    master_secret: bytes | None = None
    keys_dir: Path | None = None
    report: Path | None = None
    abort_on_fail: bool = False
    progress: bool = True
    metrics_port: int | None = None
    ca_dir: Path | None = None
    path: str | None = None
    keep_going: bool = False  # run even when the CA cannot be reached at the start
    proxy: str | None = None  # --proxy; None: from the environment
    tls: TlsClient | None = None  # --tls-*: server verification, client certificate
    shard: Shard | None = None  # this process plays shard I of N of the run
    start_at: float | None = None  # common wall-clock start (epoch seconds)
    warmup: float = 0.0  # seconds of arrivals kept out of the results' steady window (fleet capacity)


# -- planning -------------------------------------------------------------------------------------


def expected_arrivals(profile: Profile) -> int:
    if isinstance(profile.shape, Closed):
        return profile.devices.count * 4
    return math.ceil(profile.shape.expected_count(profile.duration))


def keys_needed(profile: Profile) -> dict[str, int]:
    """How many keys of each type the run will consume (bounded: pools are reused beyond it)."""
    per_arrival = sum(1 for op in profile.flow if op in KEY_OPS)
    total = min(expected_arrivals(profile) * per_arrival, 200_000)
    return {str(spec): max(16, int(total * weight * 1.1) + 16) for spec, weight in profile.devices.key_types}


def prepare_keys(profile: Profile, keys_dir: Path | None, out: TextIO) -> dict[str, int]:
    """Generate what the on-disk pools lack, before the run starts (RSA keygen is slow)."""
    store = KeyPoolStore(keys_dir)
    needs = keys_needed(profile)
    for spec_text, count in needs.items():
        spec = KeySpec.parse(spec_text)
        have = store.count(spec)
        if have < count and not spec.is_cheap:
            missing = count - have
            print(f"fleet: generating {missing} {spec} keys into {store.path_for(spec)} (cached for later runs)", file=out)
            store.generate(spec, missing)
    return needs


def load_pools(profile: Profile, keys_dir: Path | None, needs: dict[str, int], segment: Segment) -> dict[str, KeyPool]:
    """This worker's slice of each expensive pool; cheap key types are generated on the spot."""
    store = KeyPoolStore(keys_dir)
    pools: dict[str, KeyPool] = {}
    for spec_text, count in needs.items():
        spec = KeySpec.parse(spec_text)
        if spec.is_cheap:
            pools[spec_text] = KeyPool(spec, (), on_exhausted="generate")
            continue
        available = min(store.count(spec), count)
        shard = segment.range(available)
        pools[spec_text] = store.load(spec, len(shard), start=shard.start, on_exhausted="reuse")
    return pools


def prepare_devices(profile: Profile, options: RunOptions, out: TextIO) -> tuple[Path | None, int]:
    """[devices].prepared: claim a matching pool (or prepare one now) before the run; its path
    and how many devices it holds."""
    spec = profile.devices
    if not spec.prepared:
        return None, 0
    one_process = profile.workers == 1 and options.shard is None
    # one process takes devices 0, 1, 2 ... in turn; workers and shards take slices of all of them
    needed = min(spec.count, expected_arrivals(profile)) if one_process else spec.count
    store = PreparedStore(options.keys_dir)
    info = ensure_prepared(store, spec, needed, reuse=spec.prepared == "reuse", out=out,
                           kur=flow_has_kur(profile.flow))
    print(f"fleet: prepared devices from {info.path} ({info.count} devices, "
          f"{'used' if info.used else 'unused'} before this run)", file=out)
    return info.path, info.count


# -- one worker ----------------------------------------------------------------------------------


@dataclass
class WorkerSetup:
    profile: Profile
    url: str
    worker: int
    workers: int
    trusted_pem: list[bytes]
    master_secret: bytes | None
    keys_dir: Path | None
    needs: dict[str, int]
    vendor_key_pem: bytes | None
    mode: str
    path: str | None = None
    metrics_port: int | None = None
    proxy: str | None = None
    shard: Shard | None = None
    start_at: float | None = None
    warmup: float = 0.0
    ra_pem: tuple[bytes, bytes] | None = None  # [ra]: the RA certificate file and key (PEM)
    tls: TlsClient | None = None  # each worker process builds its own context from it
    announce_port: int | None = None  # [announcements]: this worker's listener (0: any free port)
    revoker_pem: tuple[bytes, bytes] | None = None  # [announcements]: the revoking PKI entity (PEM)
    prepared: Path | None = None  # [devices].prepared: the pool file this run claimed
    refill: Refill | None = None  # its helper process's end, when devices come round again

    @property
    def segment_index(self) -> int:
        """This worker's segment of the whole run (all shards' workers)."""
        return (self.shard.segment_indices(self.workers).start if self.shard else 0) + self.worker

    @property
    def segments(self) -> int:
        return self.workers * (self.shard.count if self.shard else 1)


def _build_run(setup: WorkerSetup) -> WorkerRun:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    segment = split(setup.segments)[setup.segment_index]
    anchors = [c for pem in setup.trusted_pem for c in x509.load_pem_x509_certificates(pem)]
    vendor = None
    if setup.vendor_key_pem is not None:
        vendor = VendorCa(load_pem_private_key(setup.vendor_key_pem, None))  # type: ignore[arg-type]
    pools = load_pools(setup.profile, setup.keys_dir, setup.needs, segment)
    trust = TrustStore(anchors)  # the devices' own: a believed ckuann adds to it
    prepared = None
    if setup.prepared is not None:  # this worker's devices only
        spec = setup.profile.devices
        shard = segment.range(spec.count)
        identity = Identity.of(spec, kur=flow_has_kur(setup.profile.flow))
        prepared = PreparedStore(setup.keys_dir).load(setup.prepared, identity, shard.start, len(shard),
                                                      reuse=spec.prepared == "reuse")
    devices = DeviceFactory(
        setup.profile.devices, pools, master_secret=setup.master_secret, trust=trust,
        mode=setup.mode, vendor=vendor, genm=setup.profile.genm, seed=setup.profile.seed + setup.segment_index,
        prepared=prepared,
    )
    if prepared is not None:  # the MAC keys of the prepared devices, too: derived before the run
        devices.prepare_macs(range(prepared.start, prepared.start + len(prepared)))
        prepared.refill = setup.refill
    metrics = None
    if setup.metrics_port is not None:
        metrics = FleetMetrics.serve(setup.metrics_port + setup.worker, worker=str(setup.segment_index))
    plan = WorkerPlan(setup.profile, setup.url, segment, setup.segment_index, setup.path, setup.proxy,
                      setup.start_at, setup.warmup, setup.tls)
    transport = _ra_transport(setup, TrustStore(anchors)) if setup.ra_pem is not None else None
    announcements = None
    if setup.profile.announcements is not None:
        revoker = None
        if setup.revoker_pem is not None:
            certs = x509.load_pem_x509_certificates(setup.revoker_pem[0])
            revoker = SignatureProtector(load_pem_private_key(setup.revoker_pem[1], None), certs[0], certs[1:])  # type: ignore[arg-type]
        announcements = DeviceAnnouncements(setup.profile.announcements, trust, revoker=revoker,
                                            port=setup.announce_port or 0, seed=setup.profile.seed + setup.segment_index)
    run = WorkerRun(plan, devices, observer=metrics, transport=transport, announcements=announcements)
    if metrics is not None:
        metrics.attach(run)  # scrape-time gauges read the run
    return run


def _refills(profile: Profile, setups: list[WorkerSetup], pool_count: int, stack: ExitStack) -> None:
    """``prepared = true``: a helper process per worker whose arrivals are expected to outnumber
    its prepared devices, preparing the devices that come round again; started here, in the
    parent, because worker processes (daemons) cannot have children of their own."""
    spec = profile.devices
    if spec.prepared is not True or not {"ir", "cr"} & set(profile.flow):  # "reuse" needs none
        return
    arrivals = expected_arrivals(profile)
    for setup in setups:
        segment = split(setup.segments)[setup.segment_index]
        shard = segment.range(spec.count)
        in_pool = max(0, min(shard.stop, pool_count) - shard.start)
        if not shard or arrivals * float(segment.end - segment.start) <= in_pool:
            continue
        process, setup.refill = start_helper(spec, shard, in_pool, kur=flow_has_kur(profile.flow))
        stack.callback(process.join, 5)
        stack.callback(process.terminate)


def _ra_transport(setup: WorkerSetup, trust: TrustStore) -> TransportFactory:
    """[ra]: HTTP to the CA under a ``NestingTransport`` signing with the RA credential and
    verifying the CA's answers against the run's trust anchors."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    profile, ra = setup.profile, setup.profile.ra
    assert ra is not None and setup.ra_pem is not None
    certs = x509.load_pem_x509_certificates(setup.ra_pem[0])
    signer = SignatureProtector(load_pem_private_key(setup.ra_pem[1], None), certs[0], certs[1:])  # type: ignore[arg-type]

    def http() -> CmpHttpClient:
        return CmpHttpClient(setup.url, max_connections=profile.connections,
                             request_timeout=profile.transaction_timeout, proxy=setup.proxy,
                             ssl_context=setup.tls.context() if setup.tls is not None else None)

    return nesting(http, signer, batch_size=ra.batch_size, batch_wait=ra.batch_wait, trust=trust,
                   timeout=profile.transaction_timeout)


def _finish_metrics(run: WorkerRun) -> None:
    """Keep /metrics up until Prometheus has scraped the final counts (bounded; no wait when
    nobody scraped)."""
    finish = getattr(run.observer, "finish", None)
    if finish is not None:
        finish()


def _drive(run: WorkerRun, every_second: Callable[[], None], abort_on_fail: bool) -> RunResults:
    """Run one worker to the end under trio, calling ``every_second`` while it goes (progress,
    snapshots) and stopping early when ``abort_on_fail`` and the error-rate SLO is broken.
    Ctrl-C or SIGTERM stops the run cleanly: the results so far are returned, marked interrupted."""

    async def main() -> RunResults:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        run.results.interrupted = True
                        run.results.interrupt_signal = run.results.interrupt_signal or int(signum)
                        run.stop()

            async def tick() -> None:
                while True:
                    await trio.sleep(1.0)
                    every_second()
                    broken = _early_failure(run.profile, run.results) if abort_on_fail else None
                    if broken and not run.results.aborted:
                        run.results.aborted = broken
                        run.results.aborted_at = trio.current_time() - run.t0
                        run.stop()

            nursery.start_soon(tick)
            nursery.start_soon(on_signal)
            results = await run.run()
            nursery.cancel_scope.cancel()
        return results

    tune_gc()
    results = trio.run(main)
    _finish_metrics(run)
    return results


def _worker_main(setup: WorkerSetup, outbox: Any, abort_on_fail: bool) -> None:
    """Entry point of a worker process: run, stream snapshots, send the final results."""
    # Ctrl-C is handled inside the run (a clean stop); outside it, a second one must not turn
    # the worker's exit into a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run = _build_run(setup)
        results = _drive(run, lambda: outbox.put(("snapshot", setup.worker, _snapshot(run))), abort_on_fail)
        outbox.put(("done", setup.worker, results.to_dict()))
    except FleetError as exc:
        outbox.put(("error", setup.worker, str(exc)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        outbox.put(("error", setup.worker, f"worker crashed: {type(exc).__name__}: {exc}"))


def _snapshot(run: WorkerRun) -> dict[str, Any]:
    driver = run.driver.statistics() if run.driver is not None else None
    return {
        "elapsed": trio.current_time() - run.t0 if run.t0 else 0.0,
        "ok": run.live.ok,
        "failed": run.live.failed,
        "in_flight": run.live.in_flight,
        "due": driver.due if driver else run.results.started,
        "dropped": driver.dropped if driver else 0,
        "errors": dict(run.live.errors),
        "ops": {name: s.latency.to_dict() for name, s in run.results.ops.items()},
    }


# -- the whole run -------------------------------------------------------------------------------


class ProgressPrinter:
    """A live line: elapsed; arrivals per second against the target arrival rate and, apart,
    operations per second (a flow of ir + kur is two operations per arrival); in flight; p50/p99
    of the first operation; the commonest errors. Rates are over the time since the last line."""

    def __init__(self, profile: Profile, out: TextIO, enabled: bool) -> None:
        self.profile = profile
        self.out = out
        self.enabled = enabled
        self.tty = out.isatty()
        self.last_print = -math.inf
        self._last = (0.0, 0, 0)  # elapsed, arrivals started, operations finished at the last line

    def line(self, snapshots: dict[int, dict[str, Any]]) -> str | None:
        """The progress line for these worker snapshots (None until every worker has sent one,
        and when no time has passed)."""
        values = list(snapshots.values())
        if len(values) < self.profile.workers:
            return None
        elapsed = max(s["elapsed"] for s in values)
        ok = sum(s["ok"] for s in values)
        failed = sum(s["failed"] for s in values)
        in_flight = sum(s["in_flight"] for s in values)
        dropped = sum(s["dropped"] for s in values)
        started = sum(s["due"] for s in values) - dropped
        last_elapsed, last_started, last_done = self._last
        window = elapsed - last_elapsed
        if window <= 0:
            return None
        self._last = (elapsed, started, ok + failed)
        arrivals = (started - last_started) / window
        operations = (ok + failed - last_done) / window
        shape = self.profile.shape
        if isinstance(shape, Closed):
            target = f"closed model, {shape.devices} loops"
        else:  # the schedule's mean rate over the same window
            duration = self.profile.duration
            points = [min(last_elapsed + window * k / 8, duration) for k in range(9)]
            target = f"target {sum(shape.rate_at(t, duration) for t in points) / len(points):.0f}/s"
        first = self.profile.flow[0]
        hist = LatencyHistogram()
        errors: dict[str, int] = {}
        for s in values:
            if first in s["ops"]:
                hist.merge(LatencyHistogram.from_dict(s["ops"][first]))
            for k, v in s["errors"].items():
                errors[k] = errors.get(k, 0) + v
        lat = f"{first} p50 {hist.percentile(50) * 1e3:.1f} ms p99 {hist.percentile(99) * 1e3:.1f} ms" if hist.count else f"{first} -"
        err = " ".join(f"{k}={v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1])[:3])
        return (
            f"t={elapsed:5.1f}s arrivals {arrivals:.0f}/s ({target}) | operations {operations:.0f}/s "
            f"ok {ok} failed {failed} | in-flight {in_flight} dropped {dropped} | {lat}" + (f" | {err}" if err else "")
        )

    def show(self, snapshots: dict[int, dict[str, Any]]) -> None:
        if not self.enabled or not snapshots:
            return
        now = time.monotonic()
        if not self.tty and now - self.last_print < 5.0:
            return
        line = self.line(snapshots)
        if line is None:
            return
        self.last_print = now
        if self.tty:
            print("\r" + line[:160].ljust(160), end="", file=self.out, flush=True)
        else:
            print(line, file=self.out, flush=True)

    def done(self) -> None:
        if self.enabled and self.tty:
            print(file=self.out)


def verdict(profile: Profile, results: RunResults) -> Verdict:
    """The profile's SLO checks over ``results`` (see ``fleet.load.verdict.slo_verdict``)."""
    return slo_verdict(profile.slo, profile.flow, isinstance(profile.shape, Closed), profile.duration, results)


_NONE = "-"  # a cell with nothing to show (no successful operation): never "nan"


def summary_table(profile: Profile, results: RunResults) -> str:
    rows: list[tuple[str, ...]] = [("operation", "ok", "failed", "ok/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors")]
    elapsed = max(results.elapsed, 1e-9)
    for op in [o for o in dict.fromkeys((*profile.flow, *EXTRA_OPS)) if o in results.ops]:
        s = results.ops[op]
        q: Iterable[float] = s.latency.percentiles((50, 90, 99)) if s.latency.count else []
        errors = ", ".join(f"{k} {v}" for k, v in s.errors.most_common(3))
        if s.fail_info:
            errors += " [" + ", ".join(f"{k} {v}" for k, v in s.fail_info.most_common(3)) + "]"
        ms = [f"{v * 1e3:.1f}" for v in (*q, s.latency.max)] if s.latency.count else [_NONE] * 4
        rows.append((op, str(s.ok), str(s.failed), f"{s.ok / elapsed:.1f}", *ms, errors or _NONE))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    arrivals = (
        f"arrivals: {results.scheduled} scheduled, {results.started} started, {results.dropped} dropped "
        f"(max in flight), start lateness p99 {results.lateness.percentile(99) * 1e3:.1f} ms"
        if results.lateness.count else f"arrivals: {results.started} started"
    )
    warned = Counter[str]()
    for stats in results.ops.values():
        warned.update(stats.warnings)
    notes = [
        f"warnings (accepted, see docs/strictness.md): {code} {n}: {WARNINGS.get(code, code)}"
        for code, n in warned.most_common()
    ]
    prepared = results.prepared
    if prepared:  # what [devices].prepared spared the workers, and where a key was made live after all
        notes.insert(0, f"prepared devices: {prepared.get('prepared', 0)} requests prepared, "
                        f"{prepared.get('live', 0)} keys made live (no prepared record left for the device)"
                        + (f"; kur: {prepared.get('kur_prepared', 0)} new keys prepared, "
                           f"{prepared.get('kur_live', 0)} made live" if "kur_prepared" in prepared else ""))
    return "\n".join([*lines, arrivals, *_transport_line(results.transport), *_announcement_line(results), *notes])


def _announcement_line(results: RunResults) -> list[str]:
    """[announcements]: what the devices were pushed, and what it triggered."""
    a = results.announcements
    if a is None:
        return []
    believed = ", ".join(f"{n} {body}" for body, n in a.received.most_common()) or "none"
    refused = ", ".join(f"{name} {n}" for name, n in a.refused.most_common()) or "none"
    delivery = (f"delivery (rr to receipt) p50 {a.delivery.percentile(50) * 1e3:.1f} ms p99 "
                f"{a.delivery.percentile(99) * 1e3:.1f} ms" if a.delivery.count else "delivery -")
    return [(f"announcements: believed {believed}; refused {refused}; {delivery}; {a.reenrollments} re-enrollments "
            f"triggered ({a.not_current} rann of certificates already replaced), {a.trust_updates} trust anchor "
             f"updates, {a.unannounced} revocations not announced by the end")]


def _transport_line(counters: dict[str, int]) -> list[str]:
    """The transport's counters under the table: HTTP's when requests queued for a connection
    (the client, not the CA, was then a limit), CoAP's for what a lossy link cost."""
    if "pool_waits" in counters:
        note = client_limit(counters)
        return [f"http: {note}; raise [run] max_connections (or workers)"] if note else []
    if not counters:
        return []
    line = (
        f"coap: {counters.get('sent', 0)} requests, {counters.get('retransmissions', 0)} retransmissions, "
        f"{counters.get('lost_out', 0)}/{counters.get('lost_in', 0)} datagrams lost out/in (link knob), "
        f"{counters.get('separate', 0)} separate responses, {counters.get('gave_up', 0)} given up"
    )
    return [line]


def report_dict(profile: Profile, results: RunResults, verdict_: Verdict, target_url: str,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return report_document(
        name=profile.name, server=target_url, duration=profile.duration, flow=profile.flow, slo=profile.slo,
        closed=isinstance(profile.shape, Closed), results=results, verdict=verdict_, extra=extra,
    )


def cap_connections(profile: Profile, out: TextIO) -> Profile:
    """Keep the connection pool inside the process's open-file limit (20,000 here, not raisable),
    and say so when it binds rather than failing with EMFILE mid-run."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    allowed = max(1, soft - 256) if soft != resource.RLIM_INFINITY else profile.connections
    if profile.connections > allowed:
        if profile.max_connections is not None:  # asked for: say it is not granted
            print(
                f"fleet: max_connections {profile.max_connections} capped at {allowed} by the open-file "
                f"limit ({soft}); devices beyond that share pooled connections",
                file=out,
            )
        return profile.with_overrides(max_connections=allowed)
    return profile


def reachable(url: str, timeout: float, proxy: str | None = None, tls: TlsClient | None = None) -> None:
    """Refuse to start a run against a CA that cannot be connected to (one line, nothing sent):
    otherwise every arrival of the whole duration would fail with the same connect error."""
    try:
        probe(url, timeout, proxy=proxy, ssl_context=tls.context() if tls is not None else None)
    except TransportError as exc:
        raise RunError(f"CA unreachable, nothing sent: {exc} (--keep-going runs anyway)") from None


def run_profile(profile: Profile, options: RunOptions, out: TextIO = sys.stderr) -> tuple[RunResults, Verdict]:
    """Run a profile to the end (or to the first SLO failure with abort_on_fail)."""
    profile = cap_connections(profile, out)
    if options.server is not None and profile.transport == "coap" and not is_coap(options.server):
        raise RunError(f"the profile's transport is coap but --server is {options.server} (give a coap:// URL)")
    ra_pem, ra_root = _ra_files(profile, external=options.server is not None)  # profile errors first
    if options.tls is not None:
        options.tls.context()  # unusable --tls-* files: one line before anything starts
    pushed = announcement_setup(profile, options.shard, external=options.server is not None)
    # UDP has no connection to try: a CoAP CA that does not answer shows in the first exchanges.
    if options.server is not None and not options.keep_going and not is_coap(options.server):
        reachable(options.server, min(10.0, profile.transaction_timeout), options.proxy, options.tls)  # before RSA keygen
    needs = prepare_keys(profile, options.keys_dir, out)
    prepared, pool_count = prepare_devices(profile, options, out)
    with ExitStack() as stack:
        trusted_pem = [p.read_bytes() for p in options.trusted]
        for p in options.trusted:
            load_certificates(p)  # a clear error now rather than in every worker
        vendor_key_pem = None
        vendor_root = None
        mode = profile.ca.mode
        if profile.devices.auth == "vendor":
            vendor = VendorCa()
            vendor_key_pem = private_key_pem(vendor.key)
            vendor_root = vendor.cert
        master = options.master_secret
        if options.server is None:
            vendor_path = None
            # The CA serves fleet_ca_* right after the workers' ports (workers on P..P+W-1).
            ca_metrics = None if options.metrics_port is None else options.metrics_port + profile.workers
            ca = EmbeddedCa(options.ca_dir, config=profile.ca, metrics_port=ca_metrics,
                            coap=profile.transport == "coap")
            if ra_root is not None:  # the RA credential made for this run: the CA trusts its root
                ra_path = ca.state_dir / "ra-root.pem"
                ca.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                atomic_write(ra_path, ra_root)
                ca.config = replace(ca.config, ra_trusted=(*ca.config.ra_trusted, ra_path))
            if pushed is not None:  # the CA pushes to the workers' listeners, revocations by the run's entity
                ca.config = pushed.configure_ca(ca.config, ca.state_dir)
            if vendor_root is not None:
                vendor_path = ca.state_dir / "vendor-root.pem"
                ca.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                atomic_write(vendor_path, certs_pem([vendor_root]))
                ca.vendor_trust = vendor_path
            stack.enter_context(ca)
            url = ca.coap_url if ca.coap else ca.url
            master = ca.master_secret
            trusted_pem.append(ca.root_path.read_bytes())
            print(f"fleet: embedded CA at {url} (state {ca.state_dir}, root {ca.root_path})", file=out)
            if profile.ra is not None and not profile.ra.start:
                print(f"fleet: requests go in RA-signed nested messages of up to {profile.ra.batch_size}", file=out)
        else:
            url = options.server
            if profile.devices.auth == "mac" and master is None:
                raise RunError("MAC devices need --master-secret (per-device secrets are derived from it)")
        if profile.ra is not None and profile.ra.start:  # fleet ra serve between the devices and the CA
            assert ra_pem is not None
            # its fleet_ra_* after the workers' and the embedded CA's ports
            ra_metrics = (None if options.metrics_port is None
                          else options.metrics_port + profile.workers + (options.server is None))
            ra = EmbeddedRa(url, cert_pem=ra_pem[0], key_pem=ra_pem[1], master_secret=master,
                            trusted_pem=b"".join(trusted_pem) + ((pushed.revoker_root or b"") if pushed else b""),
                            vendor_pem=None if vendor_root is None else certs_pem([vendor_root]),
                            mode=profile.ra.mode, batch_size=profile.ra.batch_size, batch_wait=profile.ra.batch_wait,
                            timeout=profile.transaction_timeout, metrics_port=ra_metrics)
            stack.enter_context(ra)
            print(f"fleet: embedded RA at {ra.url} (mode {ra.mode}, forwarding to {url})", file=out)
            url, ra_pem = ra.url, None  # the devices talk to the RA, which nests if its mode says so
        if pushed is not None:
            print(pushed.describe(), file=out)
        workers = profile.workers
        setups = [
            WorkerSetup(
                profile, url, w, workers, trusted_pem, master, options.keys_dir, needs, vendor_key_pem, mode,
                options.path, options.metrics_port, options.proxy, options.shard, options.start_at,
                options.warmup, ra_pem, options.tls,
                announce_port=None if pushed is None else pushed.ports[w],
                revoker_pem=None if pushed is None else pushed.revoker_pem,
                prepared=prepared,
            )
            for w in range(workers)
        ]
        if prepared is not None:
            _refills(profile, setups, pool_count, stack)
        progress = ProgressPrinter(profile, out, options.progress)
        if workers == 1:
            results = _run_in_process(setups[0], progress, profile, options)
        else:
            results = _run_workers(setups, progress, profile, options)
        progress.done()
        results.workers = workers
    v = verdict(profile, results)
    if options.report is not None:
        extra = None
        if options.shard is not None:
            extra = {"shard": {"index": options.shard.index, "count": options.shard.count, "start_at": options.start_at},
                     "start_at": options.start_at}
        atomic_write(options.report, json.dumps(report_dict(profile, results, v, url, extra), indent=1).encode())
    return results, v


def _ra_files(profile: Profile, *, external: bool) -> tuple[tuple[bytes, bytes] | None, bytes | None]:
    """[ra]: (RA certificate and key PEM, the root the embedded CA must trust or None)."""
    ra = profile.ra
    if ra is None:
        return None, None
    if ra.cert is not None and ra.key is not None:
        load_certificates(ra.cert)  # a clear error now rather than in every worker
        try:
            return (ra.cert.read_bytes(), ra.key.read_bytes()), None
        except OSError as exc:
            raise RunError(f"[ra] cannot read {exc.filename}: {exc.strerror}") from None
    if external and not (ra.start and ra.mode == "pass"):  # a pass-through RA signs nothing the CA sees
        raise RunError("[ra] needs cert and key against --server (the RA credential that CA trusts)")
    made = make_ra_credential()
    return (made.cert_pem, made.key_pem), made.root_pem


def _run_in_process(setup: WorkerSetup, progress: ProgressPrinter, profile: Profile, options: RunOptions) -> RunResults:
    run = _build_run(setup)
    show = (lambda: progress.show({0: _snapshot(run)})) if progress.enabled else (lambda: None)
    return _drive(run, show, options.abort_on_fail)


def _early_failure(profile: Profile, results: RunResults) -> str | None:
    """With --abort-on-fail: the broken check, once the error-rate SLO is clearly broken (after
    50 operations), else None."""
    limit = profile.slo.max_error_rate
    total = sum(s.total for s in results.ops.values())
    failed = sum(s.failed for s in results.ops.values())
    if limit is None or total < 50 or failed / total <= limit:
        return None
    return f"errors {failed / total:.2%} > {limit:.2%}"


def _run_workers(setups: list[WorkerSetup], progress: ProgressPrinter, profile: Profile, options: RunOptions) -> RunResults:
    ctx = multiprocessing.get_context("spawn")
    outbox = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(s, outbox, options.abort_on_fail), daemon=True) for s in setups]
    for p in procs:
        p.start()
    snapshots: dict[int, dict[str, Any]] = {}
    merged = RunResults()
    pending = set(range(len(setups)))
    errors: list[str] = []
    wait = max(0.0, (options.start_at or 0.0) - time.time())
    deadline = time.monotonic() + wait + profile.duration + profile.transaction_timeout * 2 + 120

    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        """Ctrl-C/SIGTERM: ask every worker to stop and report what it measured."""
        received.append(signum)
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGINT)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while pending and time.monotonic() < deadline:
            try:
                kind, worker, payload = outbox.get(timeout=1.0)
            except queue.Empty:
                dead = [w for w in pending if not procs[w].is_alive()]
                for w in dead:
                    errors.append(f"worker {w} died (exit code {procs[w].exitcode})")
                    pending.discard(w)
                continue
            if kind == "snapshot":
                snapshots[worker] = payload
                progress.show(snapshots)
            elif kind == "done":
                merged.merge(RunResults.from_dict(payload))
                pending.discard(worker)
            else:
                errors.append(f"worker {worker}: {payload}")
                pending.discard(worker)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    if errors:
        raise RunError("; ".join(errors))
    if pending:
        raise RunError(f"workers {sorted(pending)} did not finish in time")
    if received:  # the workers were all sent SIGINT: say which signal the run itself got
        merged.interrupted = True
        merged.interrupt_signal = received[0]
    return merged


__all__ = ["RunOptions", "Verdict", "report_dict", "run_profile", "summary_table", "verdict"]

