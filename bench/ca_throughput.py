"""Enrollments per second the embedded CA completes on one core, and its CPU µs per enrollment.

The CA is the real thing (`fleet ca serve`, EC P-256 hierarchy, SQLite store) in a subprocess
pinned to core 0; fleet's own client (ClientTransaction over CmpHttpClient, one task per device,
``--concurrency`` transactions in flight) runs in this process pinned to core 1. Each enrollment
is ir + ip + certConf + pkiConf with a fresh EC P-256 key and a signature POP, PBM-protected
(SHA-256, 500 iterations, one salt per device so both sides' derived-key caches hit, as in a
real fleet). Server CPU is read from /proc/<pid>/stat over the measurement window, so the figure
includes HTTP parsing, CMP checks, issuance and the store.

The client would saturate its core before the CA if it built every ir in the window (a new
key, the POP signature, the MAC: over half of its work), so by default ``--prepare`` irs are
built before the run and sent first; the window then costs the client the HTTP exchanges, the
ip's checks, the certConf and the pkiConf, and the CA's core is the limit. The CA's work is the
same either way (its messageTime check allows minutes). The output says how many irs had to be
built live in the window; ``--prepare 0`` builds all of them live. "server capacity" (1e6 /
server µs per enrollment) is what one CA core would do whichever side is the limit.

``--cmp-only`` leaves HTTP and the second process out: it drives the real ``Authority`` and
``CmpServer.handle`` in this process with requests pre-built by fleet's client (one device per
concurrent transaction, its PBM key cached as above) and prints the CMP layer's CPU µs per ir and
per certConf (median of rounds). On a shared machine this figure is far steadier than the
two-process one; profile it with py-spy or cProfile to see where the CA's time goes.

``--http-only`` measures the other half: fleet's HTTP server (``serve_http``) in a subprocess
pinned to core 0 with a handler that answers every POST with a fixed 1,115-byte body (an ip's
size), driven by raw keep-alive connections from this process; it prints the server's CPU µs
per request (two requests make an enrollment).

Usage: python bench/ca_throughput.py [--concurrency 1000] [--seconds 10] [--warmup 3]
       python bench/ca_throughput.py --cmp-only [--concurrency 1000] [--rounds 7]
       python bench/ca_throughput.py --http-only [--concurrency 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.cmp.client import ClientConfig, ClientTransaction, Send
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import MacProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.trust import TrustStore
from fleet.http.client import CmpHttpClient

SECRET = "bench-secret"
REF = b"bench"
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def _pin(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})
    except (AttributeError, OSError):
        pass


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, so the server shuts down as it would in use; SIGKILL if it has not after 15 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_ca(state: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, *os.environ.get("FLEET_BENCH_PYFLAGS", "").split(), "-m", "fleet.cli.main", "ca", "serve", "--dir", str(state), "--port", "0",
         "--secret", f"pass:{SECRET}", "--ref", REF.decode(), "--max-transactions", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
        preexec_fn=lambda: _pin(0),  # noqa: PLW1509 - one sched_setaffinity call before exec
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            line = proc.stdout.readline()
            if "listening on" in line:
                return proc, int(line.rsplit("(port ", 1)[1].split(")")[0])
            if not line:
                break
    proc.kill()
    raise SystemExit("fleet ca serve did not start")


async def load(
    port: int, pid: int, root: x509.Certificate, concurrency: int, warmup: float, seconds: float, prepare: int
) -> dict[str, object]:
    """``concurrency`` devices enrolling in a loop for ``warmup`` + ``seconds``; counts and CPU
    of the window. With ``prepare`` > 0, that many irs are built (new key, POP, MAC) before the
    run starts and the devices send those first, building more only when they run out."""
    trust = TrustStore([root])
    counts = {"done": 0, "failed": 0, "live": 0}
    certificates: list[bytes] = []
    errors: dict[str, int] = {}
    measuring = False
    configs = [
        ClientConfig(protector=MacProtector(SECRET.encode(), reference=REF, salt=os.urandom(16)), trust=trust)
        for _ in range(concurrency)
    ]
    subjects = [x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"bench-{i}")]) for i in range(concurrency)]

    def new_transaction(i: int) -> tuple[ClientTransaction, Send]:
        tx = ClientTransaction(configs[i], CertRequest(BodyType.IR, ec.generate_private_key(ec.SECP256R1()), subject=subjects[i]))
        return tx, tx.start()

    prepared: list[list[tuple[ClientTransaction, Send]]] = [[] for _ in range(concurrency)]
    for n in range(prepare):
        prepared[n % concurrency].append(new_transaction(n % concurrency))
    for queue in prepared:
        queue.reverse()  # popped from the end, in the order made
    async with CmpHttpClient(f"http://127.0.0.1:{port}/.well-known/cmp", max_connections=concurrency,
                             request_timeout=60) as client:

        async def device(i: int, stop_at: float) -> None:
            queue = prepared[i]
            while trio.current_time() < stop_at:
                if queue:
                    tx, event = queue.pop()
                else:
                    tx, event = new_transaction(i)
                    if measuring:
                        counts["live"] += 1
                try:  # run_transaction's loop, from an already started transaction (no polling here)
                    while isinstance(event, Send):
                        event = tx.receive((await client.post(event.data)).body)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    if measuring:
                        counts["failed"] += 1
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                if measuring:
                    counts["done"] += 1
                    certificates.append(event.certificate)  # type: ignore[arg-type]

        start = trio.current_time()
        stop_at = start + warmup + seconds
        async with trio.open_nursery() as nursery:
            for i in range(concurrency):
                nursery.start_soon(device, i, stop_at)
            await trio.sleep(warmup)
            measuring = True
            cpu_client0, cpu_server0 = time.process_time(), _cpu_seconds(pid)
            t0 = time.monotonic()
            await trio.sleep(seconds)
            measuring = False
            elapsed = time.monotonic() - t0
            cpu_client = time.process_time() - cpu_client0
            cpu_server = _cpu_seconds(pid) - cpu_server0
    serials = {x509.load_der_x509_certificate(c).serial_number for c in certificates}
    return {"elapsed": elapsed, "client_cpu": cpu_client, "server_cpu": cpu_server, "serials": len(serials),
            "errors": errors, **counts}


def cmp_only(devices: int, rounds: int) -> None:
    """CPU µs per ir and per certConf in ``CmpServer.handle`` (in-process, no HTTP)."""
    from fleet.ca.authority import Authority
    from fleet.cmp.server import ServerConfig
    from fleet.cmp.shared_secrets import SharedSecrets

    with tempfile.TemporaryDirectory(prefix="fleet-ca-bench-") as tmp:
        authority = Authority.open(Path(tmp) / "state", base_url="http://127.0.0.1:8080")
        server = authority.server(config=ServerConfig(), secrets=SharedSecrets(default=SECRET.encode()))
        trust = TrustStore([authority.hierarchy.root])
        configs = [
            ClientConfig(protector=MacProtector(SECRET.encode(), reference=REF, salt=os.urandom(16)), trust=trust)
            for _ in range(devices)
        ]
        subjects = [x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"bench-{i}")]) for i in range(devices)]
        ir_us: list[float] = []
        conf_us: list[float] = []
        for round_no in range(rounds + 1):  # round 0 warms the PBM key caches
            txs = [
                ClientTransaction(c, CertRequest(BodyType.IR, ec.generate_private_key(ec.SECP256R1()), subject=s))
                for c, s in zip(configs, subjects, strict=True)
            ]
            irs = [tx.start().data for tx in txs]
            now = time.time()
            t0 = time.process_time()
            ips = [server.handle(data, now).data for data in irs]
            t1 = time.process_time()
            confs = [tx.receive(ip).data for tx, ip in zip(txs, ips, strict=True)]  # type: ignore[union-attr]
            t2 = time.process_time()
            replies = [server.handle(data, now) for data in confs]
            t3 = time.process_time()
            failed = [r.outcome for r in replies if r.outcome.status != "accepted"]
            if failed:
                raise SystemExit(f"certConf not accepted: {failed[0]}")
            if round_no:
                ir_us.append((t1 - t0) / devices * 1e6)
                conf_us.append((t3 - t2) / devices * 1e6)
        authority.close()
    ir, conf = statistics.median(ir_us), statistics.median(conf_us)
    print(f"CMP layer in-process, {devices} devices, median of {rounds} rounds (min):")
    print(f"  ir -> ip:            {ir:.0f} µs ({min(ir_us):.0f})")
    print(f"  certConf -> pkiConf: {conf:.0f} µs ({min(conf_us):.0f})")
    print(f"  per enrollment:      {ir + conf:.0f} µs -> {1e6 / (ir + conf):.0f} enrollments/s per core without HTTP")


_HTTP_BODY = bytes(1115)


def _http_server(port_file: str) -> None:
    """The --http-only server process: serve_http with a constant answer until SIGTERM."""
    from fleet.http.server import HttpResponse, serve_http
    from fleet.runtime import tune_gc

    _pin(0)
    tune_gc()
    response = HttpResponse(200, _HTTP_BODY, "application/pkixcmp")

    async def handler(request: object) -> HttpResponse:
        return response

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_http, handler, "127.0.0.1", 0, max_connections=100_000))
            Path(port_file).write_text(str(port))
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

    trio.run(run)


async def _http_load(port: int, connections: int, seconds: float) -> int:
    body = bytes(510)  # an ir's size
    request = (
        b"POST /.well-known/cmp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/pkixcmp\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    answered = 0
    stop = trio.current_time() + seconds

    async def connection() -> None:
        nonlocal answered
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            buf = b""
            while trio.current_time() < stop:
                await stream.send_all(request)
                while True:
                    end = buf.find(b"\r\n\r\n")
                    if end >= 0:
                        length = int(buf[:end].lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                        if len(buf) >= end + 4 + length:
                            buf = buf[end + 4 + length :]
                            break
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                answered += 1

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(connection)
    return answered


def http_only(connections: int, warmup: float, seconds: float) -> None:
    """Server CPU µs per request of fleet's HTTP server with a constant handler (no CMP)."""
    with tempfile.TemporaryDirectory(prefix="fleet-http-bench-") as tmp:
        port_file = Path(tmp) / "port"
        proc = subprocess.Popen(
            [sys.executable, __file__, "--http-server", str(port_file)], stdin=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text()):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("HTTP bench server did not start")
                time.sleep(0.05)
            port = int(port_file.read_text())
            _pin(1)
            trio.run(_http_load, port, connections, warmup)
            cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
            answered = trio.run(_http_load, port, connections, seconds)
            cpu, elapsed = _cpu_seconds(proc.pid) - cpu0, time.monotonic() - t0
        finally:
            _stop(proc)
    print(f"HTTP server alone, {connections} keep-alive connections, {elapsed:.1f} s:")
    print(f"  {answered} requests ({answered / elapsed:.0f}/s), server CPU {cpu / answered * 1e6:.1f} µs per request"
          f" (core busy {cpu / elapsed:.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--prepare", type=int, default=40_000,
                        help="irs built before the run (new key, POP, MAC), so the client can outpace one CA core (0: all live)")
    parser.add_argument("--cmp-only", action="store_true", help="CMP layer in-process, no HTTP (see module doc)")
    parser.add_argument("--rounds", type=int, default=7, help="with --cmp-only: measured rounds")
    parser.add_argument("--http-only", action="store_true", help="HTTP server alone, constant handler (see module doc)")
    parser.add_argument("--http-server", help=argparse.SUPPRESS)  # the --http-only server process
    args = parser.parse_args()
    if args.http_server:
        _http_server(args.http_server)
        return
    if args.http_only:
        http_only(args.concurrency, args.warmup, args.seconds)
        return
    if args.cmp_only:
        _pin(0)
        cmp_only(args.concurrency, args.rounds)
        return
    _pin(1)
    with tempfile.TemporaryDirectory(prefix="fleet-ca-bench-") as tmp:
        state = Path(tmp) / "state"
        proc, port = start_ca(state)
        try:
            root = x509.load_pem_x509_certificate((state / "root-ca.pem").read_bytes())
            box = trio.run(load, port, proc.pid, root, args.concurrency, args.warmup, args.seconds, args.prepare)
        finally:
            _stop(proc)
    done = int(box["done"])  # type: ignore[call-overload]
    elapsed = float(box["elapsed"])  # type: ignore[arg-type]
    server_us = float(box["server_cpu"]) / done * 1e6 if done else float("nan")  # type: ignore[arg-type]
    client_us = float(box["client_cpu"]) / done * 1e6 if done else float("nan")  # type: ignore[arg-type]
    print(f"concurrency {args.concurrency}, window {elapsed:.1f} s after {args.warmup:g} s warm-up")
    print(f"enrollments completed: {done} ({done / elapsed:.0f}/s), failures: {box['failed']} {box['errors'] or ''}")
    print(f"distinct serials: {box['serials']}")
    print(f"server CPU: {server_us:.0f} µs per enrollment -> {1e6 / server_us:.0f} enrollments/s per CA core")
    live = int(box["live"])  # type: ignore[call-overload]
    print(f"client CPU: {client_us:.0f} µs per enrollment (fleet client, one core; "
          + (f"irs built beforehand, {live} built live in the window)" if args.prepare else "every ir built live)"))
    server_busy = float(box["server_cpu"]) / elapsed  # type: ignore[arg-type]
    print(f"server core busy: {server_busy:.0%}, client core busy: {float(box['client_cpu']) / elapsed:.0%}")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
