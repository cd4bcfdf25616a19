"""fleet's CoAP client (one trio UDP socket) against the CA's CoAP front (``serve_coap`` over
the same ``CaService`` as HTTP), over real loopback UDP: many devices on one socket, separate
responses, deadlines, and enrollments through 10% datagram loss each way with no duplicate
at the CA."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
from cryptography import x509
from inprocess_ca import MASTER, name, new_key

from fleet.ca.authority import Authority
from fleet.ca.coap_service import CoapFront, serve_coap
from fleet.ca.config import Latency, LoadKnobs
from fleet.ca.service import CaService
from fleet.cmp.client import ClientConfig, ClientTransaction
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import MacProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.server import ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets, derive_device_secret
from fleet.cmp.trust import TrustStore
from fleet.coap.transport import CoapSettings, CoapTimeout, CoapTransport
from fleet.exchange import run_transaction


class CoapCa:
    def __init__(self, service: CaService, front: CoapFront) -> None:
        self.service = service
        self.front = front
        self.url = f"coap://127.0.0.1:{front.port}/.well-known/cmp"

    def config(self, index: int) -> ClientConfig:
        reference = f"dev-{index:08d}".encode()
        return ClientConfig(MacProtector(derive_device_secret(MASTER, reference), reference=reference),
                            TrustStore([self.service.authority.hierarchy.root]))

    async def enroll(self, transport: CoapTransport, index: int, timeout: float = 60) -> x509.Certificate:
        tx = ClientTransaction(self.config(index), CertRequest(BodyType.IR, new_key(), subject=name(f"d{index}")))
        done = await run_transaction(transport, tx, timeout=timeout)
        assert done.certificate is not None
        return x509.load_der_x509_certificate(done.certificate)

    def requests(self) -> Counter[str]:
        """CMP requests the CA's engine handled, by body type."""
        counts: Counter[str] = Counter()
        for (request, _status, _fail), n in self.service.outcomes.items():
            counts[request] += n
        return counts


@pytest.fixture
async def coap_ca(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    authorities: list[Authority] = []
    async with trio.open_nursery() as nursery:

        async def start(knobs: LoadKnobs | None = None, **front: object) -> CoapCa:
            authority = Authority.open(tmp_path / f"ca{len(authorities)}")
            authorities.append(authority)
            service = CaService(authority, config=ServerConfig(grant_implicit_confirm=False),
                                secrets=SharedSecrets(master=MASTER), knobs=knobs)
            started = await nursery.start(lambda task_status: serve_coap(
                service, "127.0.0.1", 0, task_status=task_status, **front))
            return CoapCa(service, started)

        yield start
        nursery.cancel_scope.cancel()
    for authority in authorities:
        authority.close()


async def test_many_devices_share_one_socket_and_block_wise_transfer(coap_ca) -> None:  # type: ignore[no-untyped-def]
    ca = await coap_ca()
    async with CoapSettings(szx=2).transport(ca.url) as transport:  # 64-byte blocks both ways
        certs: dict[int, x509.Certificate] = {}

        async def one(i: int) -> None:
            certs[i] = await ca.enroll(transport, i)

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
        counters = transport.counters()
    assert sorted(c.subject.rfc4514_string() for c in certs.values()) == sorted(f"CN=d{i}" for i in range(40))
    assert ca.requests() == {"ir": 40, "certConf": 40}
    stats = ca.front.coap.stats
    assert stats["block1_continue"] > 40 * 5 and stats["block2_served"] > 40 * 5
    assert ca.front.coap.memory()["peers"] == 1  # forty devices, one client socket
    # every first transmission and retransmission reached the CA: as a new request or a duplicate
    assert counters["sent"] + counters["retransmissions"] == stats["requests"] + stats["duplicate"]


async def test_a_slow_ca_answers_separately_and_the_client_waits_for_it(coap_ca) -> None:  # type: ignore[no-untyped-def]
    ca = await coap_ca(knobs=LoadKnobs(latency=Latency.parse("fixed:0.4")), separate_after=0.1)
    async with CoapSettings(ack_timeout=0.2).transport(ca.url) as transport:
        await ca.enroll(transport, 1)
        counters = transport.counters()
    assert counters["separate"] == 2  # ir and certConf each got an empty ACK, then the answer
    assert ca.front.coap.stats["separate_acked"] == 2
    assert ca.requests() == {"ir": 1, "certConf": 1}


async def test_a_deadline_ends_the_wait_with_a_timeout(coap_ca) -> None:  # type: ignore[no-untyped-def]
    ca = await coap_ca(knobs=LoadKnobs(latency=Latency.parse("fixed:5")), separate_after=0.05)
    async with CoapSettings().transport(ca.url) as transport:
        with pytest.raises(CoapTimeout, match="within the deadline"):
            await transport.post(b"\x30\x00", deadline=trio.current_time() + 0.5)
        assert transport.endpoint.in_flight == 0


async def test_a_non_cmp_path_or_content_format_is_refused_with_its_code(coap_ca) -> None:  # type: ignore[no-untyped-def]
    from fleet.coap.transport import CoapError

    ca = await coap_ca()
    async with CoapTransport(ca.url) as transport:
        with pytest.raises(CoapError, match="CoAP 4.04") as caught:
            await transport.post(b"x", path="/elsewhere")
        assert caught.value.kind == "coap_4.04"
        response = await transport.post(b"not der")  # a CMP error answer is a response
        assert response.body[:1] == b"\x30"


async def test_a_thousand_enrollments_through_ten_percent_loss_each_way(coap_ca) -> None:  # type: ignore[no-untyped-def]
    """Every enrollment completes, the CA issues each certificate once and handles each CMP
    message once (message-ID deduplication), and the retransmissions are counted. The timing is
    scaled for loopback (ack_timeout 0.25 s) and MAX_RETRANSMIT raised to 8: with the RFC's 4,
    ~0.19**5 of ~5,000 exchanges (about one) would exhaust its retransmissions."""
    ca = await coap_ca()
    settings = CoapSettings(ack_timeout=0.25, max_retransmit=8, loss=0.1, seed=15)
    limit = trio.CapacityLimiter(100)
    done: list[int] = []
    async with settings.transport(ca.url) as transport:

        async def one(i: int) -> None:
            async with limit:
                await ca.enroll(transport, i, timeout=120)
                done.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(one, i)
        counters = transport.counters()
    assert sorted(done) == list(range(1000))
    assert ca.requests() == {"ir": 1000, "certConf": 1000}
    ca.service.authority.store.flush()
    assert ca.service.authority.store.counts_by_status()["issued"] == 1000
    outgoing = counters["sent"] + counters["retransmissions"]
    assert 0.07 < counters["lost_out"] / outgoing < 0.13  # the knob drops what it says
    assert counters["lost_in"] > 0.07 * counters["sent"]
    # each lost datagram costs one retransmission (a lost answer is answered again from memory)
    assert counters["retransmissions"] >= 0.9 * (counters["lost_out"] + counters["lost_in"])
    assert ca.front.coap.stats["duplicate"] >= 0.9 * counters["lost_in"]
    print(f"\n1,000 enrollments, 10% loss each way: {dict(counters)}; CA CoAP {dict(ca.front.coap.stats)}")


async def test_cmp_polling_carries_delayed_delivery_over_coap(coap_ca) -> None:  # type: ignore[no-untyped-def]
    """RFC 9482 leaves delayed delivery to CMP (RFC 9483 §4.4), not CoAP Observe: the CA answers
    "waiting", the device polls over CoAP until its certificate is ready."""
    ca = await coap_ca(knobs=LoadKnobs(waiting_fraction=1.0, check_after=0.3))
    async with CoapSettings().transport(ca.url) as transport:
        tx = ClientTransaction(ca.config(3), CertRequest(BodyType.IR, new_key(), subject=name("polled")))
        done = await run_transaction(transport, tx, timeout=30)
    assert done.certificate is not None and done.polls >= 1
    assert ca.requests()["pollReq"] >= 1


async def test_hostile_datagrams_at_the_ca_socket_leave_other_devices_served(coap_ca) -> None:  # type: ignore[no-untyped-def]
    """Garbage, truncated headers, an Observe registration, blocks out of order and a flood of
    never-finished transfers on the CA's real socket: each gets its clear answer (or none), the
    state stays bounded, and a device enrolls meanwhile."""
    from fleet.coap.message import CON, Block, Code, Message, Opt, decode, encode
    from fleet.coap.server import ServerLimits

    ca = await coap_ca(limits=ServerLimits(max_partials=50, max_dedup=2_000))
    path = [(Opt.URI_PATH, b".well-known"), (Opt.URI_PATH, b"cmp"), (Opt.CONTENT_FORMAT, b"\x01\x03")]
    with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as attacker:
        await attacker.connect(("127.0.0.1", ca.front.port))

        async def ask(data: bytes) -> Message | None:
            await attacker.send(data)
            with trio.move_on_after(2):
                return decode(await attacker.recv(2048))
            return None

        assert await ask(b"\x40\x02\x00\x07\xf1") == Message(3, 0, 7)  # CON, reserved nibble: Reset
        out_of_order = await ask(encode(Message(CON, Code.POST, 8, b"t", [*path, (Opt.BLOCK1, Block(3, True, 2).encode())], bytes(64))))
        assert out_of_order is not None and out_of_order.code == Code.REQUEST_ENTITY_INCOMPLETE
        observed = await ask(encode(Message(CON, Code.POST, 9, b"o", [*path, (Opt.OBSERVE, b"")], b"\x30\x00")))
        assert observed is not None and observed.code == Code.CHANGED and observed.option(Opt.OBSERVE) is None
        for i in range(1_000):  # never-finished transfers, each a new token and tag
            await attacker.send(encode(Message(CON, Code.POST, 100 + i, i.to_bytes(4, "big"),
                                               [*path, (Opt.REQUEST_TAG, i.to_bytes(4, "big")),
                                                (Opt.BLOCK1, Block(0, True, 2).encode())], bytes(64))))
        async with CoapSettings(szx=2).transport(ca.url) as transport:
            await ca.enroll(transport, 5)
    memory = ca.front.coap.memory()
    assert memory["partials"] <= 50 and memory["dedup"] <= 2_000
    assert ca.front.coap.stats["malformed"] == 1


async def test_without_a_deadline_a_separate_response_is_awaited_for_exchange_lifetime_only(coap_ca) -> None:  # type: ignore[no-untyped-def]
    from fleet.coap.timing import CoapTiming

    ca = await coap_ca(knobs=LoadKnobs(latency=Latency.parse("fixed:30")), separate_after=0.05)
    timing = CoapTiming(ack_timeout=0.5, max_retransmit=0, max_latency=0.05)  # lifetime 0.6 s
    async with CoapTransport(ca.url, timing=timing) as transport:
        started = trio.current_time()
        with pytest.raises(CoapTimeout, match="no separate response within EXCHANGE_LIFETIME"):
            await transport.post(b"\x30\x00")
        assert trio.current_time() - started < 5
        assert transport.counters()["separate"] == 1
