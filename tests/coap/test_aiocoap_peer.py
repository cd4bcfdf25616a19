"""An independent CoAP peer both ways (issue 15): aiocoap, a CoAP library no one here wrote.

* An aiocoap client POSTs a CMP ir built by fleet's CMP core to a real ``fleet ca serve
  --coap-port`` (block-wise: 64-byte Block1 requests, Block2 responses) and gets a valid ip,
  then confirms it.
* fleet's CoAP client enrolls against an aiocoap server whose resource hands each request to
  fleet's sans-I/O ``CmpServer``: the CoAP side of that server (CON/ACK, Block1 reassembly,
  Block2) is aiocoap's.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import aiocoap
import pytest
import trio
from aiocoap import resource
from aiocoap.optiontypes import BlockOption
from cryptography import x509
from inprocess_ca import InProcessCa, name, new_key

from fleet.cmp.client import ClientConfig, ClientTransaction, Done, Send
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import MacProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.shared_secrets import derive_device_secret
from fleet.cmp.trust import TrustStore
from fleet.coap.transport import CoapSettings
from fleet.exchange import run_transaction

ROOT = Path(__file__).resolve().parents[2]
PKIXCMP = 259


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fleet_ca(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``fleet ca serve --coap-port`` as a user starts it: (CoAP port, state folder)."""
    state = tmp_path / "ca"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli.main", "ca", "serve", "--dir", str(state), "--port", "0",
         "--coap-port", "0", "--master-secret", "pass:demo"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    port = 0
    while not port:  # the CA prints its lines at once at start, or exits
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip().startswith("CoAP:"):
            port = int(line.rsplit("UDP port ", 1)[1].rstrip(")\n"))
    try:
        assert port, "".join(lines)
        yield port, state
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        proc.stdout.close()


def test_an_aiocoap_client_enrolls_at_fleet_ca_serve_block_wise(fleet_ca: tuple[int, Path]) -> None:
    port, state = fleet_ca
    reference = b"dev-00000042"
    root = x509.load_pem_x509_certificate((state / "root-ca.pem").read_bytes())
    config = ClientConfig(MacProtector(derive_device_secret(b"demo", reference), reference=reference),
                          TrustStore([root]))
    tx = ClientTransaction(config, CertRequest(BodyType.IR, new_key(), subject=name("aiocoap-device")))
    sizes: list[tuple[int, int]] = []

    async def post(context: aiocoap.Context, data: bytes) -> bytes:
        request = aiocoap.Message(code=aiocoap.POST, payload=data, content_format=PKIXCMP,
                                  uri=f"coap://127.0.0.1:{port}/.well-known/cmp")
        request.opt.block1 = BlockOption.BlockwiseTuple(0, False, 2)  # 64-byte blocks
        response = await asyncio.wait_for(context.request(request).response, 60)
        assert response.code == aiocoap.CHANGED, response
        assert response.opt.content_format == PKIXCMP
        sizes.append((len(data), len(response.payload)))
        return response.payload

    async def enroll() -> Done:
        context = await aiocoap.Context.create_client_context()
        try:
            event: Send | Done = tx.start()
            while isinstance(event, Send):
                event = tx.receive(await post(context, event.data))
            return event
        finally:
            await context.shutdown()

    with pytest.warns(DeprecationWarning, match="block1"):
        done = asyncio.run(enroll())
    assert done.certificate is not None
    cert = x509.load_der_x509_certificate(done.certificate)
    assert cert.subject.rfc4514_string() == "CN=aiocoap-device"
    issuing = x509.load_pem_x509_certificate((state / "issuing-ca.pem").read_bytes())
    cert.verify_directly_issued_by(issuing)
    issuing.verify_directly_issued_by(root)
    assert len(sizes) == 2 and sizes[0][0] > 64 * 3 and sizes[0][1] > 1024  # Block1 and Block2 both ways
    result = subprocess.run([sys.executable, "-m", "fleet.cli.main", "ca", "stats", "--dir", str(state)],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            check=False)
    assert result.returncode == 0 and "issued 1" in " ".join(result.stdout.split()), result.stdout


class _CmpResource(resource.Resource):
    """An aiocoap resource that hands the whole (reassembled) request to fleet's CmpServer."""

    def __init__(self, ca: InProcessCa) -> None:
        super().__init__()
        self.ca = ca
        self.posts = 0

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.posts += 1
        if request.opt.content_format != PKIXCMP:
            return aiocoap.Message(code=aiocoap.UNSUPPORTED_CONTENT_FORMAT)
        reply = self.ca.server.handle(request.payload, time.time())
        return aiocoap.Message(code=aiocoap.CHANGED, payload=reply.data, content_format=PKIXCMP)


class AiocoapServer:
    """aiocoap serving ``/.well-known/cmp`` in its own thread and asyncio loop."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_udp_port()
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.result: dict[str, object] = {}
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        ca = InProcessCa(self.folder)  # sqlite: made and used in this thread only
        cmp = _CmpResource(ca)
        site = resource.Site()
        site.add_resource([".well-known", "cmp"], cmp)
        for attempt in range(5):  # the free port may be taken between its probe and this bind
            try:
                context = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", self.port))
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or attempt == 4:
                    self.result["error"] = exc
                    self.ready.set()
                    ca.close()
                    return
                self.port = free_udp_port()
        self.result["root"] = ca.root()
        self.result["mac"] = ca.mac_config
        self.ready.set()
        await self.stop.wait()
        await context.shutdown()
        self.result["counts"] = ca.counts()
        self.result["posts"] = cmp.posts
        ca.close()

    def __enter__(self) -> Self:
        self.thread.start()
        assert self.ready.wait(30), "aiocoap server did not start"
        assert "error" not in self.result, f"aiocoap server did not start: {self.result['error']}"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


async def test_fleet_coap_client_enrolls_against_an_aiocoap_server(tmp_path: Path) -> None:
    with AiocoapServer(tmp_path / "ca") as server:
        mac = server.result["mac"]
        settings = CoapSettings(szx=2)  # 64-byte Block1 requests; aiocoap reassembles them
        async with settings.transport(f"coap://127.0.0.1:{server.port}/.well-known/cmp") as transport:
            certs: list[x509.Certificate] = []
            chains: list[x509.Certificate] = []

            async def one(i: int) -> None:
                tx = ClientTransaction(mac(f"dev-{i}".encode()),  # type: ignore[operator]
                                       CertRequest(BodyType.IR, new_key(), subject=name(f"peer-{i}")))
                done = await run_transaction(transport, tx, timeout=60)
                assert done.certificate is not None
                certs.append(x509.load_der_x509_certificate(done.certificate))
                chains.append(x509.load_der_x509_certificate(done.chain[0]))

            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(one, i)
            counters = transport.counters()
    assert sorted(c.subject.rfc4514_string() for c in certs) == [f"CN=peer-{i}" for i in range(5)]
    assert len(chains) == 5
    root = server.result["root"]
    for cert, issuing in zip(certs, chains, strict=True):
        cert.verify_directly_issued_by(issuing)
        issuing.verify_directly_issued_by(root)  # type: ignore[arg-type]
    assert server.result["counts"] == {"issued": 5}
    assert server.result["posts"] == 10  # ir and certConf each reached the CMP server once
    assert counters["sent"] > 10 * 5  # every message went block-wise
