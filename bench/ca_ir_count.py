"""The CA's CMP layer answering N pre-built irs in process: a fixed workload for instruction counts.

``make`` builds irs with fleet's client (MAC-protected, one PBM salt so the CA's derived-key
cache hits, fresh EC P-256 keys) and pickles them with their time; ``serve N`` has fleet's CA
(``Authority``, ``CmpServer.handle``) answer the first N. The same pickle fed to two trees gives
the same input bytes, and the difference of two N under ``valgrind --tool=callgrind`` is the
instructions per ir, which the machine's load does not move (bench/README.md).

The other modes build N enrollments live with fleet's client (fresh EC P-256 keys, one PBM
salt) and count the whole enrollment, so that differences of modes isolate the CA's parts:

- ``client N``: the irs answered by ``CmpServer.handle``, the ips read and certConfs built by
  the client, the certConfs not sent;
- ``cmp N``: the same, and the certConfs answered by ``CmpServer.handle``;
- ``svc N``: the same through the CA's service (``CaService.handle`` with ``HttpRequest``s, no
  sockets), 50 requests at a time in trio tasks so that answers share the store's group
  commit as under load.

So ``cmp - client`` is the CA's certConf, ``svc - cmp`` the service layer above the CMP server
(routing, counting, the store's durability wait and flushes), and ``serve`` + ``svc - client``
the CA's whole work per enrollment without HTTP. Pass the same N to each; the per-enrollment
figure is the difference of two N divided by their difference, as for ``serve``.

``drive N PORT ROOT`` counts the whole CA process, HTTP included: it builds N enrollments as
above and sends them, 50 at a time, to a ``fleet ca serve --secret pass:bench-secret --ref
bench`` on PORT (its root certificate in ROOT) that runs under callgrind; SIGTERM to the server
after it, then its count (bench/README.md has the steps). The server's timers (tick, flusher)
run on its wall clock, so these counts move by a few percent from run to run: repeat them.

Usage: python bench/ca_ir_count.py make 1000 irs.pkl
       PYTHONHASHSEED=0 valgrind --tool=callgrind python bench/ca_ir_count.py serve 500 irs.pkl
       PYTHONHASHSEED=0 valgrind --tool=callgrind python bench/ca_ir_count.py svc 500 -
"""

from __future__ import annotations

import pickle
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.ca.authority import Authority
from fleet.cmp.client import ClientConfig, ClientTransaction
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import MacProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.server import ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets
from fleet.cmp.trust import TrustStore

SECRET = b"bench-secret"


def make(n: int, out: Path) -> None:
    irs = []
    for i in range(n):
        protector = MacProtector(SECRET, reference=b"bench-ref", salt=b"fixed-salt-16byt")
        subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"bench-{i}")])
        request = CertRequest(BodyType.IR, ec.generate_private_key(ec.SECP256R1()), subject=subject)
        irs.append(ClientTransaction(ClientConfig(protector=protector), request).start().data)
    out.write_bytes(pickle.dumps((time.time(), irs)))


def serve(n: int, source: Path) -> None:
    now, irs = pickle.loads(source.read_bytes())  # the file ``make`` wrote
    with tempfile.TemporaryDirectory() as tmp:
        authority = Authority.open(Path(tmp) / "state", base_url="http://127.0.0.1:8080")
        server = authority.server(config=ServerConfig(), secrets=SharedSecrets(default=SECRET))
        for data in irs[:n]:
            server.handle(data, now)
        authority.close()
    print(f"answered {n} irs")


def enroll(n: int, mode: str) -> None:
    """N enrollments built live; what the CA answers depends on ``mode`` (module doc)."""
    import trio

    from fleet.ca.service import CaService
    from fleet.http.server import HttpRequest

    with tempfile.TemporaryDirectory() as tmp:
        authority = Authority.open(Path(tmp) / "state", base_url="http://127.0.0.1:8080")
        config, secrets = ServerConfig(), SharedSecrets(default=SECRET)
        trust = TrustStore([x509.load_der_x509_certificate(authority.root)])
        protector = MacProtector(SECRET, reference=b"bench-ref", salt=b"fixed-salt-16byt")
        txs = [
            ClientTransaction(ClientConfig(protector=protector, trust=trust), CertRequest(
                BodyType.IR, ec.generate_private_key(ec.SECP256R1()),
                subject=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"bench-{i}")])))
            for i in range(n)
        ]
        irs = [tx.start().data for tx in txs]
        now = time.time()
        if mode == "svc":
            service = CaService(authority, config=config, secrets=secrets, clock=lambda: now)
            headers = [(b"content-type", b"application/pkixcmp")]

            async def answer_all(bodies: list[bytes]) -> list[bytes]:
                answers: list[bytes] = [b""] * len(bodies)

                async def one(i: int) -> None:
                    request = HttpRequest("POST", "/.well-known/cmp", headers, bodies[i], "127.0.0.1")
                    answers[i] = (await service.handle(request)).body

                for start in range(0, len(bodies), 50):
                    async with trio.open_nursery() as nursery:
                        for i in range(start, min(start + 50, len(bodies))):
                            nursery.start_soon(one, i)
                return answers

            ips = trio.run(answer_all, irs)
            confs = [tx.receive(ip).data for tx, ip in zip(txs, ips, strict=True)]  # type: ignore[union-attr]
            trio.run(answer_all, confs)
        else:
            server = authority.server(config=config, secrets=secrets)
            ips = [server.handle(data, now).data for data in irs]
            confs = [tx.receive(ip).data for tx, ip in zip(txs, ips, strict=True)]  # type: ignore[union-attr]
            if mode == "cmp":
                for data in confs:
                    server.handle(data, now)
        authority.store.flush()
        counts = {k: v for k, v in authority.store.counts_by_status().items() if v}
        authority.close()
    print(f"{mode}: {n} enrollments, certificates {counts}")


def drive(n: int, port: int, root_pem: Path) -> None:
    """N enrollments (built first) sent to a CA on ``port``, 50 transactions at a time."""
    import trio

    from fleet.cmp.client import Send
    from fleet.http.client import CmpHttpClient

    trust = TrustStore([x509.load_pem_x509_certificate(root_pem.read_bytes())])
    protector = MacProtector(SECRET, reference=b"bench", salt=b"fixed-salt-16byt")
    started = []
    for i in range(n):
        tx = ClientTransaction(ClientConfig(protector=protector, trust=trust), CertRequest(
            BodyType.IR, ec.generate_private_key(ec.SECP256R1()),
            subject=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"bench-{i}")])))
        started.append((tx, tx.start()))

    async def run() -> None:
        async with CmpHttpClient(f"http://127.0.0.1:{port}/.well-known/cmp", max_connections=50,
                                 request_timeout=600) as client:

            async def lane(first: int) -> None:
                for tx, event in started[first::50]:
                    while isinstance(event, Send):
                        event = tx.receive((await client.post(event.data)).body)

            async with trio.open_nursery() as nursery:
                for first in range(50):
                    nursery.start_soon(lane, first)

    trio.run(run)
    print(f"drive: {n} enrollments")


if __name__ == "__main__":
    command, count = sys.argv[1], int(sys.argv[2])
    if command == "drive":
        drive(count, int(sys.argv[3]), Path(sys.argv[4]))
    elif command == "make":
        make(count, Path(sys.argv[3]))
    elif command == "serve":
        serve(count, Path(sys.argv[3]))
    else:
        enroll(count, command)
