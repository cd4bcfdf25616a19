"""The CA service on a real loopback socket, driven by fleet's own HTTP client and CMP client; its
timing logic (the tick, the latency and waiting knobs) without a socket, in virtual time."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from cmp import pyasn1_requests as P
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtensionOID, NameOID

from fleet.ca.authority import Authority
from fleet.ca.config import CaConfigError, Latency, LoadKnobs
from fleet.ca.service import CaService, route
from fleet.cmp.client import ClientConfig, ClientTransaction, Done
from fleet.cmp.errors import ServerError
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import MacProtector, SignatureProtector
from fleet.cmp.requests import CertRequest, RevocationRequest
from fleet.cmp.server import ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets
from fleet.cmp.trust import TrustStore, load_cert
from fleet.exchange import run_transaction
from fleet.http.client import CmpHttpClient
from fleet.http.errors import ConnectionLost, HttpStatusError
from fleet.http.server import HttpRequest, HttpResponse
from fleet.transport import CmpTransport, trio_wall_clock

SECRET = b"service-secret"
REF = b"ref-1"


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Running:
    def __init__(self, service: CaService, port: int) -> None:
        self.service = service
        self.port = port
        self.url = f"http://127.0.0.1:{port}/.well-known/cmp"

    @property
    def authority(self) -> Authority:
        return self.service.authority

    def mac(self, **kw: object) -> ClientConfig:
        return ClientConfig(
            protector=MacProtector(SECRET, reference=REF),
            trust=TrustStore([self.authority.hierarchy.root]),
            **kw,  # type: ignore[arg-type]
        )


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[object]:
    """Factory: ``await start(knobs=..., **ServerConfig fields)`` runs a service on port 0."""
    authorities: list[Authority] = []
    async with trio.open_nursery() as nursery:

        async def _start(knobs: LoadKnobs | None = None, **config: object) -> Running:
            authority = Authority.open(tmp_path / f"ca{len(authorities)}")
            authorities.append(authority)
            service = CaService(
                authority, config=ServerConfig(**config),  # type: ignore[arg-type]
                secrets=SharedSecrets({REF: SECRET}), knobs=knobs, tick_interval=0.05,
            )
            port = await nursery.start(service.serve, "127.0.0.1", 0)
            return Running(service, port)

        yield _start
        nursery.cancel_scope.cancel()
    for a in authorities:
        a.close()


class ServiceTransport:
    """``CaService.handle`` as a CmpTransport: the service's HTTP handling (knobs, counters, the
    store's durability) without a socket, so it runs under trio's MockClock."""

    def __init__(self, service: CaService) -> None:
        self.service = service

    async def post(self, data: bytes, /, *, path: str | None = None, deadline: float | None = None) -> HttpResponse:
        request = HttpRequest("POST", path or "/pkix/", [(b"content-type", b"application/pkixcmp")], data, "test")
        response = await self.service.handle(request)
        if response.status != 200:
            raise HttpStatusError("in-process service", response.status, response.content_type)
        return response


@pytest.fixture
async def start_virtual(tmp_path: Path) -> AsyncIterator[object]:
    """Factory: ``await start_virtual(knobs=..., **ServerConfig fields)`` runs a service whose
    clock is trio's (use with the ``autojump_clock`` fixture) and ticks every second; talk to it
    through ``ServiceTransport``."""
    authorities: list[Authority] = []
    async with trio.open_nursery() as nursery:

        async def _start(knobs: LoadKnobs | None = None, **config: object) -> tuple[Running, ServiceTransport]:
            authority = Authority.open(tmp_path / f"ca{len(authorities)}")
            authorities.append(authority)
            service = CaService(
                authority, config=ServerConfig(**config),  # type: ignore[arg-type]
                secrets=SharedSecrets({REF: SECRET}), knobs=knobs, clock=trio_wall_clock(), tick_interval=1.0,
            )
            port = await nursery.start(service.serve, "127.0.0.1", 0)  # runs the ticker; no request uses the port
            return Running(service, port), ServiceTransport(service)

        yield _start
        nursery.cancel_scope.cancel()
    for a in authorities:
        a.close()


async def enroll(ca: Running, client: CmpTransport, cn: str = "dev", **kw: object) -> tuple[Done, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    tx = ClientTransaction(ca.mac(), CertRequest(BodyType.IR, key, subject=name(cn), **kw))  # type: ignore[arg-type]
    return await run_transaction(client, tx, timeout=10), key


def test_route() -> None:
    assert route("/pkix/") == ("cmp", None)
    assert route("/pkix/////") == ("cmp", None)
    assert route("//pkix") == ("cmp", None)
    assert route("/PKIX/")[0] == "none" and route("/pKiX/")[0] == "none"
    assert route("/.well-known/cmp") == ("cmp", None)
    assert route("/.well-known/cmp/p/3gpp/initialization") == ("cmp", "3gpp")
    assert route("/.well-known/cmp/certification") == ("cmp", None)
    assert route("/.well-known/cmp/bogus")[0] == "none"
    assert route("/crl/issuing.crl") == ("crl", None)
    assert route("/ocsp") == ("ocsp", None)
    assert route("/") == ("none", None)


def test_knob_validation() -> None:
    assert str(Latency.parse("uniform:0.001:0.002")) == "uniform:0.001:0.002"
    with pytest.raises(CaConfigError):
        Latency.parse("gauss:1")
    with pytest.raises(CaConfigError):
        LoadKnobs(error_fraction=1.5)


async def test_enroll_kur_rr_then_crl_and_ocsp(start) -> None:  # type: ignore[no-untyped-def]
    ca = await start()
    async with CmpHttpClient(ca.url) as client:
        done, key = await enroll(ca, client)
        cert = load_cert(done.certificate)
        cdp = cert.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS).value
        crl_url = cdp[0].full_name[0].value
        assert crl_url == f"http://127.0.0.1:{ca.port}/crl/issuing.crl"
        signed = ClientConfig(
            protector=SignatureProtector(key, cert, ca.authority.hierarchy.chain_for_issued),
            trust=TrustStore([ca.authority.hierarchy.root]),
        )
        new_key = ec.generate_private_key(ec.SECP256R1())
        kup = await run_transaction(client, ClientTransaction(signed, CertRequest(BodyType.KUR, new_key, old_cert=cert)),
                                    path="/.well-known/cmp/keyupdate", timeout=10)
        updated = load_cert(kup.certificate)
        rr = ClientTransaction(
            ClientConfig(protector=SignatureProtector(new_key, updated, ca.authority.hierarchy.chain_for_issued),
                         trust=TrustStore([ca.authority.hierarchy.root])),
            RevocationRequest.for_certificate(updated, reason=4),
        )
        await run_transaction(client, rr, timeout=10)
    async with httpx.AsyncClient() as http:
        crl_rsp = await http.get(crl_url)
        assert crl_rsp.headers["content-type"] == "application/pkix-crl"
        crl = x509.load_der_x509_crl(crl_rsp.content)
        assert crl.get_revoked_certificate_by_serial_number(updated.serial_number) is not None
        assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is None
        req = ocsp.OCSPRequestBuilder().add_certificate(updated, ca.authority.hierarchy.issuing, hashes.SHA256()).build()
        aia = updated.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_INFORMATION_ACCESS).value
        ocsp_rsp = await http.post(aia[0].access_location.value, content=req.public_bytes(serialization.Encoding.DER),
                                   headers={"content-type": "application/ocsp-request"})
        answer = ocsp.load_der_ocsp_response(ocsp_rsp.content)
        assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
        assert answer.revocation_reason is x509.ReasonFlags.superseded


async def test_http_errors_and_server_keeps_serving(start) -> None:  # type: ignore[no-untyped-def]
    ca = await start()
    base = f"http://127.0.0.1:{ca.port}"
    async with httpx.AsyncClient() as http:
        assert (await http.post(base + "/PKIX/", content=b"x", headers={"content-type": "application/pkixcmp"})).status_code == 404
        assert (await http.get(base + "/pkix/")).status_code == 405
        assert (await http.post(base + "/pkix/", content=b"x", headers={"content-type": "text/plain"})).status_code == 415
        truncated = await http.post(base + "/pkix/", content=b"\x30\x82\x01", headers={"content-type": "application/pkixcmp"})
        # RFC 9811: not DER is a client error, 400, with a CMP error message saying badDataFormat
        assert truncated.status_code == 400 and truncated.headers["content-type"] == "application/pkixcmp"
        assert P.Answer.read(truncated.content).fail == ("badDataFormat",)
    # A 100 MB body is refused from its Content-Length without being read.
    stream = await trio.open_tcp_stream("127.0.0.1", ca.port)
    async with stream:
        await stream.send_all(
            b"POST /pkix/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/pkixcmp\r\n"
            b"Content-Length: 104857600\r\n\r\n" + b"\x00" * 65536
        )
        with trio.fail_after(5):
            head = await stream.receive_some(4096)
        assert head.startswith(b"HTTP/1.1 413")
    # HTTP/1.0 keep-alive, as OpenSSL 3.0 sends it: two requests on one connection.
    stream = await trio.open_tcp_stream("127.0.0.1", ca.port)
    async with stream:
        for _ in range(2):
            await stream.send_all(
                b"POST /pkix/ HTTP/1.0\r\nConnection: keep-alive\r\nContent-Type: application/pkixcmp\r\n"
                b"Content-Length: 3\r\n\r\n\x30\x01\x00"
            )
            with trio.fail_after(5):
                data = await stream.receive_some(65536)
            assert data.startswith(b"HTTP/1.1 400") and b"Connection: keep-alive" in data  # not a PKIMessage
    async with CmpHttpClient(ca.url) as client:
        done, _ = await enroll(ca, client)
        assert done.certificate


async def test_knobs_503_drop_error_latency(start) -> None:  # type: ignore[no-untyped-def]
    for knobs, expected in (
        (LoadKnobs(http_503_fraction=1.0), HttpStatusError),
        (LoadKnobs(drop_fraction=1.0), ConnectionLost),
        (LoadKnobs(error_fraction=1.0), ServerError),
    ):
        ca = await start(knobs=knobs)
        async with CmpHttpClient(ca.url) as client:
            with pytest.raises(expected):
                await enroll(ca, client)


async def test_latency_knob_delays_each_answer(start_virtual, autojump_clock) -> None:  # type: ignore[no-untyped-def]
    ca, transport = await start_virtual(knobs=LoadKnobs(latency=Latency.parse("fixed:5")))
    started = trio.current_time()
    await enroll(ca, transport)
    assert trio.current_time() - started == 10  # ip and pkiConf both delayed


async def test_waiting_knob_delivers_after_polling(start_virtual, autojump_clock) -> None:  # type: ignore[no-untyped-def]
    ca, transport = await start_virtual(knobs=LoadKnobs(waiting_fraction=1.0, check_after=5))
    started = trio.current_time()
    done, _ = await enroll(ca, transport)
    assert done.polls == 2 and done.certificate  # pollReq at once: checkAfter 5; pollReq 5 s later
    assert trio.current_time() - started == 5
    assert ca.service.outcomes[("ir", "waiting", "")] == 1


async def test_transaction_cap_and_confirm_deadline(start_virtual, autojump_clock) -> None:  # type: ignore[no-untyped-def]
    """The tick expires the unconfirmed transaction after confirmWaitTime (60 s, virtual), which
    frees the one slot the cap allows."""
    ca, transport = await start_virtual(max_transactions=1, confirm_wait=60)
    server = ca.service.default
    key = ec.generate_private_key(ec.SECP256R1())
    tx = ClientTransaction(ca.mac(), CertRequest(BodyType.IR, key, subject=name("held")))
    rsp = await transport.post(tx.start().data)
    tx.receive(rsp.body)  # ip received, certConf never sent: the transaction stays live
    assert server.live_transactions == 1
    with pytest.raises(ServerError) as err:
        await enroll(ca, transport)
    assert err.value.fail_names == ("systemUnavail",)
    await trio.sleep(59.5)  # ticks every second: none has reached the deadline yet
    assert server.live_transactions == 1
    assert ca.service.outcomes[("tick", "confirm_timeout", "systemUnavail")] == 0
    await trio.sleep(2.0)  # a tick at or after the deadline has run
    assert server.live_transactions == 0
    assert ca.service.outcomes[("tick", "confirm_timeout", "systemUnavail")] == 1
    assert ca.authority.store.counts_by_status()["rejected"] == 1
    done, _ = await enroll(ca, transport)
    assert done.certificate


async def test_concurrent_enrollments(start) -> None:  # type: ignore[no-untyped-def]
    ca = await start()
    serials: list[int] = []
    failures: list[BaseException] = []
    started = time.monotonic()
    async with CmpHttpClient(ca.url, max_connections=50) as client:

        async def one(i: int) -> None:
            try:
                done, _ = await enroll(ca, client, cn=f"dev-{i}")
                serials.append(load_cert(done.certificate).serial_number)
            except Exception as exc:  # noqa: BLE001 - counted, asserted below
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
    assert failures == []
    assert len(set(serials)) == 200
    assert time.monotonic() - started < 30
    assert ca.authority.store.counts_by_status()["issued"] == 200


def test_route_cache_gives_the_same_answers_and_skips_long_targets() -> None:
    from fleet.ca.service import _route, _route_cached

    for path in ("/pkix/", "/.well-known/cmp/p/prof/ir", "/ocsp/abc", "/crl/issuing.crl/", "/x", "/" + "a" * 300):
        assert route(path) == _route(path) == route(path)
    before = _route_cached.cache_info().currsize
    assert route("/.well-known/cmp/p/" + "q" * 300) == ("cmp", "q" * 300)
    assert _route_cached.cache_info().currsize == before  # long targets are not cached


async def test_the_quiet_cmp_path_answers_as_the_general_one(tmp_path: Path) -> None:
    """``_cmp_now`` (knobs off, nothing awaited) against ``_respond`` for the same requests: the
    same status, content type, CMP answer kind and counters; None where ``_respond`` must decide."""
    authority = Authority.open(tmp_path / "ca")
    service = CaService(authority, secrets=SharedSecrets({REF: SECRET}))
    cmp_type = [(b"content-type", b"application/pkixcmp")]
    irs = [
        ClientTransaction(ClientConfig(protector=MacProtector(SECRET, reference=REF)),
                          CertRequest(BodyType.IR, ec.generate_private_key(ec.SECP256R1()), name(f"q{i}"))).start().data
        for i in range(2)
    ]
    cases = [
        ("POST", "/.well-known/cmp", cmp_type, irs),
        ("POST", "/.well-known/cmp/p/3gpp/initialization", cmp_type, [b"\x30\x01\x00", b"\x30\x01\x00"]),
        ("POST", "/pkix/", [(b"content-type", b"text/plain")], [b"x", b"x"]),
    ]
    for method, path, headers, (first, second) in cases:
        fast = service._cmp_now(HttpRequest(method, path, headers, first, "p"))
        slow = await service._respond(HttpRequest(method, path, headers, second, "p"))
        assert fast is not None
        assert (fast.status, fast.content_type) == (slow.status, slow.content_type), path
    assert service.outcomes == {("ir", "accepted", ""): 2, ("malformed", "error", "badDataFormat"): 2}
    assert service.http == {"415": 2}
    for method, path in (("GET", "/pkix/"), ("POST", "/crl/issuing.crl"), ("POST", "/nowhere"), ("GET", "/ocsp/x")):
        assert service._cmp_now(HttpRequest(method, path, cmp_type, b"", "p")) is None
    authority.close()
