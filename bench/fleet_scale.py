"""Scale of one orchestrator process: memory per virtual device, spawn rate, sustainable rate.

1. RSS per device: N devices all in flight at once (a spike of N arrivals at t=0) against a
   loopback server that accepts and never answers, so every device holds its key, its
   transaction and its first request while waiting for one of the pooled connections.
2. Devices spawned per second: how fast the arrival driver starts those N tasks.
3. Highest sustained rate against the embedded CA: `fleet run`'s worker pinned to the first core,
   the embedded CA on the last, stepping the rate up; a step passes when >= 99% of arrivals
   succeed and the p99 start lateness is under 5 ms. The embedded CA is often the limit here.
4. Highest sustained rate when the CA keeps up: the same steps against a minimal responder in its
   own process on the last core (a real certificate from an issuing CA, caPubs and extraCerts
   as the embedded CA sends them, MAC protection; no checks, no storage), so the orchestrator is
   what saturates. Each step prints the responder's CPU per enrollment: where its per-core rate
   is below the step's rate, the responder was the limit after all.
5. The orchestrator's own CPU per enrollment: the worker's process CPU time over each step
   divided by the enrollments (printed per step, for both servers); the summary takes the
   busiest step that still succeeded, as the one-core capacity. It includes the CMP client and
   HTTP; an idle worker pays more per enrollment (wake-ups), so low-rate steps read higher.

6. ``--cpu N``: only the CPU figures, steadier than wall-clock ones on a shared machine: N
   enrollments at ``--cpu-rate`` against the responder that keeps up, ``--cpu-repeat`` times
   alternating (a) ``fleet run``'s worker and (b) the CMP client alone (CertRequest,
   ClientTransaction and CmpHttpClient, fed keys, subjects and MAC protectors made beforehand,
   started by a bare timer loop at the same rate): the medians and their difference, which is
   the orchestrator's own CPU per enrollment (devices, keys, driver, recording, run loop).

7. ``--orchestrator N``: the worker without I/O, the steadiest figure: N arrivals of ``fleet run``'s
   worker at ``--orchestrator-rate`` (default 20,000/s: more than one core starts, so the loop
   is always busy, as in a loaded worker, and the driver rarely sleeps) over an in-process
   transport to fleet's CA (``fleet.transport.InProcessTransport``: no HTTP, no sockets), the
   CA's own CPU (measured around each of its ``handle`` calls) subtracted. Counted: the arrival
   driver and one trio task per arrival, the device (key generation, identity, MAC protector and
   CertRequest construction), the CMP client and the drive loop (``run_transaction``),
   recording. Process CPU per arrival, median of ``--cpu-repeat``.

``--prepared``: the devices' keys, CertRequests and POPs come from a prepared pool made before
the steps (``[devices] prepared = "reuse"``: one pool of 50,000 devices serves every step, whose
arrivals never wrap round within a step); in ``--orchestrator`` the pool is built in memory.

Usage: python bench/fleet_scale.py [--prepared] [--devices 50000] [--rates 250,500,750,1000,1500,2000]
                                   [--fast-rates 1000,1500,2000,2500,3000] [--step 6]
                                   [--cpu 6000 [--cpu-rate 1500] [--cpu-repeat 3]] [--orchestrator 20000]
       (--devices 0 skips the memory test; --rates '' or --fast-rates '' skips a rate test;
       --cpu runs only the CPU comparison)
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.cmp import der, messages
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import compute_mac, parse_mac_params
from fleet.cmp.shared_secrets import derive_device_secret
from fleet.cmp.trust import TrustStore
from fleet.http.server import HttpRequest, HttpResponse, serve_http
from fleet.keys import KeyPool, KeySpec
from fleet.load.device import DeviceFactory
from fleet.load.orchestrator import RunOptions, run_profile
from fleet.load.profiles import parse_profile
from fleet.load.runner import WorkerPlan, WorkerRun
from fleet.load.segments import split


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def _silent_server(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Accept connections, read, never answer."""

    async def hold(stream: trio.SocketStream) -> None:
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(hold, listeners)


def memory_per_device(n: int) -> tuple[float, float]:
    profile = parse_profile(
        {
            "run": {"duration": 1, "max_in_flight": n + 1, "max_connections": 100, "transaction_timeout": 600},
            "arrivals": {"shape": "spike", "base_rate": 0.001, "spike_rate": float(n * 100), "at": 0, "length": 0.01},
            "devices": {"count": n, "key_types": "ec:P-256", "sans": ["URI:urn:uuid:{uuid}"]},
        },
        where="bench",
    )
    pools = {"ec:P-256": KeyPool(KeySpec.parse("ec:P-256"), (), on_exhausted="generate")}
    records = None
    if PREPARED is not None:  # made before the baseline is read: the pool's memory counts
        from fleet.load.prepared_store import prepare_records

        records = prepare_records(profile.devices, n)
    result: dict[str, float] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_silent_server)
            gc.collect()
            before = _rss_kib()
            prepared = None
            if records is not None:
                from fleet.load.prepared import PreparedPool

                prepared = PreparedPool.from_records(KeySpec.parse("ec:P-256"), records)
                records.clear()
            devices = DeviceFactory(profile.devices, pools, master_secret=b"m", trust=TrustStore(), prepared=prepared)
            run = WorkerRun(WorkerPlan(profile, f"http://127.0.0.1:{port}/", split(1)[0]), devices)
            nursery.start_soon(run.run)
            t0 = time.perf_counter()
            while run.live.in_flight < n:
                await trio.sleep(0.05)
                if time.perf_counter() - t0 > 600:
                    raise RuntimeError("devices did not all start")
            result["spawn_seconds"] = time.perf_counter() - t0
            await trio.sleep(1.0)
            gc.collect()
            result["kib"] = _rss_kib() - before
            nursery.cancel_scope.cancel()

    trio.run(main)
    return result["kib"] * 1024 / n, n / result["spawn_seconds"]


def _pin(cpu: int) -> None:
    """Keep this process on one core (best effort): the figures are per core."""
    cores = os.cpu_count() or 1
    if cores > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu % cores})


def _keeping_up_responder(master: bytes, port_queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """A minimal CMP responder on the last core that keeps up: decode, issue a real certificate
    for the requested key, MAC-protect with the request's PBM parameters and the device's secret
    derived from ``master`` (as fleet's CA does), answer certConf with pkiConf. Its ip has the
    embedded CA's shape (certificate from an issuing CA under a root, the root in caPubs, the
    issuing CA in extraCerts, messageTime), so the devices do the same work as against that CA.
    It checks nothing and stores nothing: it measures the orchestrator, not a CA."""
    _pin((os.cpu_count() or 1) - 1)
    now = datetime.now(UTC)

    def ca(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None, signer: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
        return (
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )

    root_key, issuing_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = ca("fleet_scale root", root_key, None, root_key)
    issuing = ca("fleet_scale issuing", issuing_key, root.subject, root_key)
    root_der, issuing_der = root.public_bytes(Encoding.DER), issuing.public_bytes(Encoding.DER)
    # Certificates are spliced from a template's TBSCertificate (serial and key replaced) and
    # signed with the issuing key: 35 µs instead of CertificateBuilder's 117 µs, which would
    # make the responder, not the orchestrator, the limit near 2,000/s.
    template_key = ec.generate_private_key(ec.SECP256R1())
    template = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "fleet_scale device")]))
        .issuer_name(issuing.subject)
        .public_key(template_key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuing_key.public_key()), critical=False)
        .sign(issuing_key, hashes.SHA256())
    )
    version, _serial, signature_alg, issuer, validity, subject, _spki, extensions = (
        part.raw for part in der.parse(template.tbs_certificate_bytes).children()
    )
    ecdsa_sha256 = ec.ECDSA(hashes.SHA256())

    def issue(spki: bytes) -> bytes:
        serial = int.from_bytes(os.urandom(8), "big") >> 1 | 1
        tbs = der.sequence(version, der.integer(serial), signature_alg, issuer, validity, subject, spki, extensions)
        return der.sequence(tbs, signature_alg, der.bit_string(issuing_key.sign(tbs, ecdsa_sha256)))

    def respond(req: messages.PKIMessage, body_type: BodyType, body: messages.Body, extra: tuple[bytes, ...] = ()) -> bytes:
        assert req.header.protection_alg is not None and req.header.sender_kid is not None
        params = parse_mac_params(req.header.protection_alg)
        header = messages.PKIHeader(
            sender=messages.directory_name(issuing.subject.public_bytes()),
            recipient=req.header.sender,
            transaction_id=req.header.transaction_id,
            sender_nonce=os.urandom(16),
            recip_nonce=req.header.sender_nonce,
            protection_alg=req.header.protection_alg,
            sender_kid=req.header.sender_kid,
            message_time=datetime.now(UTC).replace(microsecond=0),
        )
        h = messages.encode_header(header)
        b = messages.encode_body(body_type, body)
        secret = derive_device_secret(master, req.header.sender_kid)
        return messages.assemble(h, b, compute_mac(params, secret, messages.protected_part(h, b)), extra)

    async def handler(request: HttpRequest) -> HttpResponse:
        req = messages.decode(request.body)
        if req.body_type is BodyType.IR:
            spki = req.body.messages[0].template.public_key  # type: ignore[union-attr]
            body = messages.CertRepMessage(
                (messages.CertResponse(0, messages.ACCEPTED, issue(spki)),), (root_der,)
            )
            return HttpResponse(200, respond(req, BodyType.IP, body, (issuing_der,)))
        if req.body_type is BodyType.CERTCONF:
            return HttpResponse(200, respond(req, BodyType.PKICONF, messages.PKIConfirmContent()))
        return HttpResponse(400, b"")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, handler, "127.0.0.1", 0)
            port_queue.put(port)

    trio.run(main)


class KeepingUpResponder:
    """``with KeepingUpResponder(master) as url:`` runs ``_keeping_up_responder`` in a process."""

    def __init__(self, master: bytes) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._queue = ctx.Queue()
        self._proc = ctx.Process(target=_keeping_up_responder, args=(master, self._queue), daemon=True)

    def __enter__(self) -> str:
        self._proc.start()
        return f"http://127.0.0.1:{self._queue.get(timeout=30)}/"

    def __exit__(self, *exc: object) -> None:
        self._proc.terminate()
        self._proc.join(5)

    def cpu_seconds(self) -> float:
        """The responder's CPU time so far (user + system), from /proc; NaN where unavailable."""
        try:
            with open(f"/proc/{self._proc.pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return float("nan")


Row = tuple[float, float, float, float, float]
"""(target rate, share of arrivals that succeeded, p99 start lateness, ir p99, worker CPU µs per ir)"""


PREPARED: Path | None = None
"""With ``--prepared``: the key directory holding the prepared pool every step uses."""


def _prepare_once() -> Path:
    """A prepared pool of the steps' 50,000 devices in a temporary key directory (made once)."""
    import atexit
    import shutil
    import tempfile

    from fleet.load.prepared_store import PreparedStore

    folder = Path(tempfile.mkdtemp(prefix="fleet-scale-keys-"))
    atexit.register(shutil.rmtree, folder, True)
    started = time.perf_counter()
    PreparedStore(folder).prepare(parse_profile(_profile_data(1.0, 1.0), where="bench").devices, 50_000)
    print(f"  (50,000 devices prepared in {time.perf_counter() - started:.1f} s on every core)", flush=True)
    return folder


def _profile_data(rate: float, step: float) -> dict[str, object]:
    devices: dict[str, object] = {"count": 50_000, "key_types": "ec:P-256"}
    if PREPARED is not None:
        devices["prepared"] = "reuse"
    return {
        "run": {"duration": step, "max_in_flight": 5000, "max_connections": 200, "transaction_timeout": 10},
        "arrivals": {"shape": "constant", "rate": rate},
        "devices": devices,
    }


def sustained_rate(
    rates: list[float], step: float, server: str | None = None, master: bytes | None = None,
    responder: KeepingUpResponder | None = None,
) -> list[Row]:
    """Step the rate with ``fleet run``'s single in-process worker pinned to the first core; the
    server (the embedded CA when ``server`` is None) takes the last core."""
    rows: list[Row] = []
    _pin(0)
    for rate in rates:
        profile = parse_profile(_profile_data(rate, step), where="bench")
        server_cpu0 = responder.cpu_seconds() if responder else 0.0
        options = RunOptions(progress=False, server=server, master_secret=master, keys_dir=PREPARED)
        with open(os.devnull, "w") as quiet:
            results, _ = run_profile(profile, options, out=quiet)
        ir = results.ops.get("ir")
        ok = ir.ok if ir else 0
        lateness = results.lateness.percentile(99) if results.lateness.count else float("nan")
        p99 = ir.latency.percentile(99) if ir and ir.latency.count else float("nan")
        cpu_us = results.cpu_seconds / ir.total * 1e6 if ir and ir.total else float("nan")
        rows.append((rate, ok / results.scheduled if results.scheduled else 0.0, lateness, p99, cpu_us))
        busy = f"worker CPU {cpu_us:4.0f} µs per enrollment ({1e6 / cpu_us:,.0f}/s per core)"
        if responder is not None and ir and ir.total:
            server_us = (responder.cpu_seconds() - server_cpu0) / ir.total * 1e6
            busy += f"; responder {server_us:.0f} µs ({1e6 / server_us:,.0f}/s per core)"
        print(f"  rate {rate:6.0f}/s: {ok / step:7.1f}/s ok ({rows[-1][1]:.1%}), start lateness p99 "
              f"{lateness * 1e3:6.1f} ms, ir p99 {p99 * 1e3:7.1f} ms | {busy}", flush=True)
    return rows


def client_only_cpu(url: str, master: bytes, n: int, rate: float) -> float:
    """Worker CPU µs per enrollment of the CMP client alone: ``n`` new devices at ``rate``, their
    keys, subjects and protectors made beforehand (not counted); counted: CertRequest,
    ClientTransaction (with the shared ClientConfig, as fleet's workers), run_transaction over
    CmpHttpClient, one trio task each."""
    from fleet.cmp.client import ClientTransaction
    from fleet.cmp.requests import CertRequest
    from fleet.exchange import run_transaction
    from fleet.http.client import CmpHttpClient
    from fleet.runtime import tune_gc

    _pin(0)
    profile = parse_profile(
        {"run": {"duration": 1}, "arrivals": {"shape": "constant", "rate": rate},
         "devices": {"count": 50_000, "key_types": "ec:P-256"}},
        where="bench",
    )
    pools = {"ec:P-256": KeyPool(KeySpec.parse("ec:P-256"), (), on_exhausted="generate")}
    devices = DeviceFactory(profile.devices, pools, master_secret=master, trust=TrustStore())
    inputs = [(devices.new_key(), devices.subject_der(i), devices.mac(i)) for i in range(n)]
    config = devices.client_config
    failed = 0

    async def one(i: int, client: CmpHttpClient) -> None:
        nonlocal failed
        key, subject, protector = inputs[i]
        tx = ClientTransaction(config, CertRequest(BodyType.IR, key, subject), protector=protector)
        try:
            await run_transaction(client, tx, timeout=10)
        except Exception:  # noqa: BLE001 - counted; the figure is not used when any failed
            failed += 1

    async def main() -> float:
        async with CmpHttpClient(url, max_connections=200, request_timeout=10) as client:
            cpu0 = time.process_time()
            t0 = trio.current_time()
            async with trio.open_nursery() as nursery:
                i = 0
                while i < n:
                    due = t0 + i / rate
                    if due > trio.current_time():
                        await trio.sleep_until(due)
                    now = trio.current_time()
                    while i < n and t0 + i / rate <= now:
                        nursery.start_soon(one, i, client)
                        i += 1
            return time.process_time() - cpu0

    tune_gc()
    cpu = trio.run(main)
    if failed:
        print(f"  (client-only: {failed} of {n} enrollments failed)")
    return cpu / n * 1e6


def cpu_comparison(n: int, rate: float, repeat: int) -> None:
    """Median worker CPU per enrollment: fleet run's worker vs the CMP client alone."""
    master = os.urandom(32)
    responder = KeepingUpResponder(master)
    full: list[float] = []
    bare: list[float] = []
    with responder as url:
        for _ in range(repeat):
            rows = sustained_rate([rate], n / rate, url, master, responder)
            full.append(rows[-1][4])
            bare.append(client_only_cpu(url, master, n, rate))
            print(f"  client alone: {bare[-1]:4.0f} µs per enrollment", flush=True)
    f, b = sorted(full)[len(full) // 2], sorted(bare)[len(bare) // 2]
    print(f"worker CPU per enrollment at {rate:.0f}/s, median of {repeat}: fleet run {f:.0f} µs, CMP client alone "
          f"{b:.0f} µs, orchestrator {f - b:.0f} µs (one core at 100%: {1e6 / f:,.0f}/s)")


class _TimedServer:
    """A CmpServer whose ``handle`` and ``tick`` CPU time is summed, to be subtracted."""

    def __init__(self, server: object) -> None:
        self.server = server
        self.cpu = 0.0

    def handle(self, data: bytes, now: float) -> object:
        started = time.process_time()
        reply = self.server.handle(data, now)  # type: ignore[attr-defined]
        self.cpu += time.process_time() - started
        return reply

    def tick(self, now: float) -> list[object]:
        started = time.process_time()
        outcomes = self.server.tick(now)  # type: ignore[attr-defined]
        self.cpu += time.process_time() - started
        return outcomes


def orchestrator_only_cpu(n: int, rate: float) -> float:
    """Worker CPU µs per arrival without I/O, the in-process CA's CPU subtracted (see the module
    docstring)."""
    import tempfile

    from fleet.ca.authority import Authority
    from fleet.cmp.shared_secrets import SharedSecrets
    from fleet.runtime import tune_gc
    from fleet.transport import InProcessTransport

    master = os.urandom(32)
    profile = parse_profile(
        {"run": {"duration": n / rate, "max_in_flight": n + 1, "transaction_timeout": 3600},
         "arrivals": {"shape": "constant", "rate": rate},
         "devices": {"count": 50_000, "key_types": "ec:P-256"}},
        where="bench",
    )
    with tempfile.TemporaryDirectory() as folder:
        authority = Authority.open(Path(folder), base_url="http://127.0.0.1:9")
        try:
            server = _TimedServer(authority.server(secrets=SharedSecrets(master=master)))
            pools = {"ec:P-256": KeyPool(KeySpec.parse("ec:P-256"), (), on_exhausted="generate")}
            prepared = None
            if PREPARED is not None:
                from fleet.load.prepared import PreparedPool
                from fleet.load.prepared_store import prepare_records

                prepared = PreparedPool.from_records(KeySpec.parse("ec:P-256"), prepare_records(profile.devices, n))
            devices = DeviceFactory(profile.devices, pools, master_secret=master, trust=TrustStore(), prepared=prepared)
            if prepared is not None:
                devices.prepare_macs(range(n))
            plan = WorkerPlan(profile, "http://127.0.0.1:9/", split(1)[0])
            run = WorkerRun(plan, devices, transport=lambda: InProcessTransport(server))
            tune_gc()
            results = trio.run(run.run)
        finally:
            authority.close()
    ok = results.ops["ir"].ok if "ir" in results.ops else 0
    return (results.cpu_seconds - server.cpu) / ok * 1e6 if ok == n else float("nan")


def _passing(rows: list[Row]) -> float:
    good = [r for r, share, late, _, _ in rows if share >= 0.99 and late < 0.005]
    return max(good) if good else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50_000, help="0 skips the memory and spawn test")
    parser.add_argument("--rates", default="250,500,750,1000,1500,2000", help="against the embedded CA ('' skips)")
    parser.add_argument("--fast-rates", default="1000,1500,2000,2500,3000",
                        help="against the responder that keeps up ('' skips)")
    parser.add_argument("--step", type=float, default=6.0)
    parser.add_argument("--cpu", type=int, default=0, metavar="N",
                        help="only compare worker CPU per enrollment over N enrollments (fleet run vs the client alone)")
    parser.add_argument("--orchestrator", type=int, default=0, metavar="N",
                        help="only the worker's CPU per arrival over N arrivals, without I/O (in-process CA, its CPU subtracted)")
    parser.add_argument("--orchestrator-rate", type=float, default=20_000.0)
    parser.add_argument("--cpu-rate", type=float, default=1500.0)
    parser.add_argument("--cpu-repeat", type=int, default=3)
    parser.add_argument("--prepared", action="store_true", help="devices from a prepared pool (see above)")
    args = parser.parse_args()
    global PREPARED
    if args.prepared:
        PREPARED = Path()  # in memory (memory, --orchestrator); the rate steps' pool is made on disk below
    if args.orchestrator:
        _pin(0)
        runs = [orchestrator_only_cpu(args.orchestrator, args.orchestrator_rate) for _ in range(args.cpu_repeat)]
        print(f"worker without I/O (in-process CA, its CPU subtracted), {args.orchestrator:,} arrivals at "
              f"{args.orchestrator_rate:,.0f}/s: "
              f"{sorted(runs)[len(runs) // 2]:.1f} µs CPU per arrival (median of {', '.join(f'{r:.1f}' for r in runs)})")
        return
    if args.prepared and (args.rates or args.fast_rates or args.cpu):
        PREPARED = _prepare_once()
    if args.cpu:
        cpu_comparison(args.cpu, args.cpu_rate, args.cpu_repeat)
        return
    if args.devices:
        per_device, spawn_rate = memory_per_device(args.devices)
        print(f"memory: {per_device / 1024:.1f} KiB RSS per in-flight device at {args.devices:,} devices (target <= 10 KB)")
        print(f"spawn:  {spawn_rate:,.0f} devices started per second")
    if args.rates:
        print("sustained rate against the EMBEDDED CA (orchestrator on one core, CA on the other; the CA is often the limit):")
        rows = sustained_rate([float(r) for r in args.rates.split(",")], args.step)
        print(f"highest rate with >= 99% ok and p99 start lateness < 5 ms, embedded CA: {_passing(rows):.0f}/s (target >= 2,000/s)")
    if args.fast_rates:
        print("sustained rate when the CA KEEPS UP (a minimal CMP responder on the other core: real certificate, "
              "caPubs and extraCerts like the embedded CA's, MAC protection, no checks, no storage):")
        master = os.urandom(32)
        responder = KeepingUpResponder(master)
        with responder as url:
            fast = sustained_rate([float(r) for r in args.fast_rates.split(",")], args.step, url, master, responder)
        print(f"highest rate with >= 99% ok and p99 start lateness < 5 ms when the CA keeps up: {_passing(fast):.0f}/s "
              "(target >= 2,000/s)")
        # CPU per enrollment falls as the load rises (a busy worker handles several events per
        # wake-up; an idle one pays ~50 µs per wake-up here): take the highest step where (nearly)
        # every arrival succeeded, the closest to saturation that no timeouts skew.
        clean = [r for r in fast if r[1] >= 0.99] or fast
        rate, cpu = max(clean)[0], max(clean)[4]
        print(f"orchestrator CPU per enrollment (worker process CPU time / enrollments, step {rate:.0f}/s): "
              f"{cpu:.0f} µs, i.e. one core's capacity is {1e6 / cpu:,.0f} enrollments/s at 100% CPU "
              "(no lateness bound; target 2,000/s = 500 µs)")


if __name__ == "__main__":
    main()
