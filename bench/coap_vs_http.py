"""CMP over CoAP next to CMP over HTTP in one run: CPU per enrollment on the client and on the CA.

One fleet CA (``CaService``: real issuance, records in sqlite) serves HTTP and CoAP at once in a
process pinned to one core; the client runs in this process, pinned to the other. Each round
enrolls N new devices (EC P-256, MAC/PBM, ir + certConf) over one transport with C in flight;
rounds alternate (HTTP CoAP CoAP HTTP ...) and medians are reported, since a shared machine
moves timed figures by a fifth from run to run. Client CPU is this process's; CA CPU is the CA
process's, read before and after each round.

``--aiocoap`` adds two rows that decide between aiocoap and fleet's own CoAP layer:
aiocoap's client (asyncio) against the same CA, and an aiocoap server hosting the same CMP
engine (fleet's ``CmpServer`` over the same kind of Authority) against fleet's client.

Usage: python bench/coap_vs_http.py [--enrollments N] [--concurrency C] [--rounds R] [--aiocoap]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.ca.authority import Authority
from fleet.ca.coap_service import serve_coap
from fleet.ca.service import CaService
from fleet.cmp.client import ClientConfig, ClientTransaction, Done, Send
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import MacProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.server import ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets, derive_device_secret
from fleet.cmp.trust import TrustStore
from fleet.connect import open_client
from fleet.exchange import run_transaction
from fleet.runtime import tune_gc

MASTER = b"bench-master"


def _pin(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})
    except (AttributeError, OSError):
        pass


def _ca(folder: str, conn: Connection) -> None:
    """The CA process: HTTP and CoAP on free ports; answers "cpu" with its CPU seconds."""
    _pin(1)
    tune_gc()
    authority = Authority.open(Path(folder), base_url="http://127.0.0.1:9")
    service = CaService(authority, config=ServerConfig(), secrets=SharedSecrets(master=MASTER))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            http = await nursery.start(service.serve, "127.0.0.1", 0)
            coap = await nursery.start(serve_coap, service, "127.0.0.1", 0)
            conn.send((http, coap.port, authority.root))
            while True:
                command = await trio.to_thread.run_sync(conn.recv)
                if command == "stop":
                    nursery.cancel_scope.cancel()
                    return
                conn.send(time.process_time())

    trio.run(main)
    authority.close()


def _aiocoap_ca(folder: str, conn: Connection) -> None:
    """An aiocoap server hosting fleet's CmpServer (same engine, aiocoap's CoAP)."""
    import aiocoap
    from aiocoap import resource

    _pin(1)
    tune_gc()
    authority = Authority.open(Path(folder), base_url="http://127.0.0.1:9")
    server = authority.server(config=ServerConfig(), secrets=SharedSecrets(master=MASTER))

    class Cmp(resource.Resource):
        async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
            reply = server.handle(request.payload, time.time())
            authority.store.flush_if_due()
            return aiocoap.Message(code=aiocoap.CHANGED, payload=reply.data, content_format=259)

    async def main() -> None:
        site = resource.Site()
        site.add_resource([".well-known", "cmp"], Cmp())
        port = _free_udp_port()
        context = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
        conn.send((0, port, authority.root))
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, conn.recv) != "stop":
            conn.send(time.process_time())
        await context.shutdown()

    asyncio.run(main())
    authority.close()


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _device(i: int, trust: TrustStore) -> ClientTransaction:
    reference = b"dev-%08d" % i
    config = ClientConfig(MacProtector(derive_device_secret(MASTER, reference), reference=reference), trust)
    return ClientTransaction(config, CertRequest(BodyType.IR, ec.generate_private_key(ec.SECP256R1()),
                                                 subject=b"0\x0f1\r0\x0b\x06\x03U\x04\x03\x0c\x04test"))


async def _fleet_round(url: str, first: int, n: int, concurrency: int, trust: TrustStore) -> float:
    async with open_client(url, max_connections=concurrency) as client:
        devices = iter(range(first, first + n))
        cpu0 = time.process_time()

        async def worker() -> None:
            for i in devices:
                await run_transaction(client, _device(i, trust), timeout=60)

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        return time.process_time() - cpu0


def _aiocoap_round(url: str, first: int, n: int, concurrency: int, trust: TrustStore) -> float:
    import aiocoap

    async def main() -> float:
        # A context (socket) per in-flight device: aiocoap tags no request (RFC 9175), so
        # concurrent block-wise POSTs to one resource from one socket cannot be told apart by
        # the server, and aiocoap's client then refuses the mixed-up Block2 (ETag changed).
        contexts = [await aiocoap.Context.create_client_context() for _ in range(concurrency)]
        devices = iter(range(first, first + n))
        cpu0 = time.process_time()

        async def worker(context: aiocoap.Context) -> None:
            for i in devices:
                tx = _device(i, trust)
                event: Send | Done = tx.start()
                while isinstance(event, Send):
                    request = aiocoap.Message(code=aiocoap.POST, payload=event.data, content_format=259, uri=url)
                    response = await context.request(request).response
                    event = tx.receive(response.payload)

        await asyncio.gather(*(worker(context) for context in contexts))
        cpu = time.process_time() - cpu0
        for context in contexts:
            await context.shutdown()
        return cpu

    return asyncio.run(main())


class Ca:
    def __init__(self, target: object) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-ca-")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(self.tmp.name, child), daemon=True)
        self.proc.start()
        http, coap, root = self.conn.recv()
        self.http = f"http://127.0.0.1:{http}/.well-known/cmp"
        self.coap = f"coap://127.0.0.1:{coap}/.well-known/cmp"
        self.trust = TrustStore([x509.load_der_x509_certificate(root)])

    def cpu(self) -> float:
        self.conn.send("cpu")
        return float(self.conn.recv())

    def close(self) -> None:
        self.conn.send("stop")
        self.proc.join(10)
        self.tmp.cleanup()


def measure(ca: Ca, url: str, first: int, n: int, concurrency: int, client: str = "fleet") -> tuple[float, float, float]:
    """(client µs, CA µs per enrollment, enrollments/s) of one round."""
    before = ca.cpu()
    wall0 = time.perf_counter()
    if client == "fleet":
        cpu = trio.run(_fleet_round, url, first, n, concurrency, ca.trust)
    else:
        cpu = _aiocoap_round(url, first, n, concurrency, ca.trust)
    wall = time.perf_counter() - wall0
    return cpu / n * 1e6, (ca.cpu() - before) / n * 1e6, n / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enrollments", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--aiocoap", action="store_true", help="also measure aiocoap's client and server")
    args = parser.parse_args()
    _pin(0)
    tune_gc()
    n, c = args.enrollments, args.concurrency
    rows: dict[str, list[tuple[float, float, float]]] = {}
    ca = Ca(_ca)
    try:
        measure(ca, ca.http, 10**7, 50, c)  # warm-up: imports, caches, the CA's first pages
        measure(ca, ca.coap, 2 * 10**7, 50, c)
        first = 0
        order = ["http", "coap"]
        for r in range(args.rounds):
            for kind in order if r % 2 == 0 else order[::-1]:
                rows.setdefault(f"fleet client -> fleet CA over {kind}", []).append(
                    measure(ca, ca.http if kind == "http" else ca.coap, first, n, c))
                first += n
            if args.aiocoap:
                rows.setdefault("aiocoap client -> fleet CA over coap", []).append(
                    measure(ca, ca.coap, first, n, c, client="aiocoap"))
                first += n
    finally:
        ca.close()
    if args.aiocoap:
        other = Ca(_aiocoap_ca)
        try:
            measure(other, other.coap, 3 * 10**7, 50, c)
            for r in range(args.rounds):
                rows.setdefault("fleet client -> aiocoap server + fleet CmpServer", []).append(
                    measure(other, other.coap, 4 * 10**7 + r * n, n, c))
        finally:
            other.close()
    print(f"{n} enrollments per round, {c} in flight, {args.rounds} rounds, medians "
          f"(client and CA each pinned to one core)")
    print(f"{'':52} {'client µs':>10} {'CA µs':>10} {'enroll/s':>9}")
    for label, values in rows.items():
        client, server, rate = (statistics.median(v[i] for v in values) for i in range(3))
        print(f"{label:52} {client:10.0f} {server:10.0f} {rate:9.0f}")
    http = rows["fleet client -> fleet CA over http"]
    coap = rows["fleet client -> fleet CA over coap"]
    for i, side in ((0, "client"), (1, "CA")):
        ratio = statistics.median(v[i] for v in coap) / statistics.median(v[i] for v in http)
        print(f"CoAP/HTTP CPU per enrollment, {side}: {ratio:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
