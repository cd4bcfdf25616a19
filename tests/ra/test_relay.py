"""The RA (``Relay`` + ``RaService``) between fleet's devices and fleet's real CA, in process.

Devices run whole transactions (ir, certConf) through the RA's HTTP handler; the RA forwards over
an ``InProcessTransport`` to a ``NestedServer`` around the real ``Authority``. Each mode is
checked end to end (certificates issued and confirmed, what the CA saw), and each refusal for
what it answers and for not reaching the CA at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from cmp.ca_stub import Credentials, issue, make_ca
from cryptography import x509
from inprocess_ca import name, new_key

from fleet.ca.authority import Authority
from fleet.ca.config import LoadKnobs
from fleet.cmp import messages
from fleet.cmp.client import ClientConfig, ClientTransaction
from fleet.cmp.errors import ServerError, StatusError
from fleet.cmp.messages import BodyType, ErrorMsgContent
from fleet.cmp.nested_server import NestedServer
from fleet.cmp.protection import MacProtector, SignatureProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.server import ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets, derive_device_secret
from fleet.cmp.trust import TrustStore
from fleet.exchange import run_transaction
from fleet.http.server import HttpRequest
from fleet.ra.metrics import RaMetrics
from fleet.ra.relay import RaMode, Relay, RelayPolicy
from fleet.ra.service import RaService
from fleet.transport import InProcessTransport, TransportError

MASTER = b"ra-master"


@dataclass
class Bench:
    authority: Authority
    ca: NestedServer
    upstream: InProcessTransport
    ra_cred: Credentials
    device_root: Credentials

    def relay(self, mode: RaMode) -> Relay:
        return Relay(
            SignatureProtector(self.ra_cred.key, self.ra_cred.cert, self.ra_cred.chain),
            policy=RelayPolicy(mode=mode), secrets=SharedSecrets(master=MASTER),
            trust=TrustStore([self.device_root.cert]),
            upstream_trust=TrustStore([x509.load_der_x509_certificate(self.authority.root)]),
        )

    def issued(self) -> dict[str, int]:
        """Certificates by status, the statuses with none left out."""
        return {k: v for k, v in self.authority.store.counts_by_status().items() if v}


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    authority = Authority.open(tmp_path / "ca", base_url="http://127.0.0.1:9")
    ra_root, device_root = make_ca("RA Root"), make_ca("Device Root")
    ca = NestedServer(authority.server(
        config=ServerConfig(grant_implicit_confirm=False), secrets=SharedSecrets(master=MASTER),
        trusted=(device_root.cert,), ra_trusted=(ra_root.cert,),
    ))
    yield Bench(authority, ca, InProcessTransport(ca), issue(ra_root, "Test RA"), device_root)
    authority.close()


class _Response:
    def __init__(self, body: bytes) -> None:
        self.body = body


class ViaRa:
    """A device-side transport that hands each message to the RA's HTTP handler."""

    def __init__(self, service: RaService) -> None:
        self.service = service

    async def post(self, data: bytes, /, *, path: str | None = None, deadline: float | None = None) -> _Response:
        request = HttpRequest("POST", path or "/.well-known/cmp", [(b"content-type", b"application/pkixcmp")],
                              data, "test")
        response = await self.service.handle(request)
        assert response.status == 200, response
        return _Response(response.body)


def mac_device(ref: str, *, secret: bytes | None = None) -> ClientConfig:
    secret = secret if secret is not None else derive_device_secret(MASTER, ref.encode())
    return ClientConfig(MacProtector(secret, reference=ref.encode()))


async def enroll(transport: ViaRa, config: ClientConfig, cn: str) -> x509.Certificate:
    tx = ClientTransaction(config, CertRequest(BodyType.IR, new_key(), subject=name(cn)))
    done = await run_transaction(transport, tx, timeout=60)  # type: ignore[arg-type]
    assert done.certificate is not None
    return x509.load_der_x509_certificate(done.certificate)


async def with_service(service: RaService, body) -> None:  # type: ignore[no-untyped-def]
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run_batches)
        await body()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# The three modes, end to end


async def test_pass_through_relays_unchanged(bench: Bench) -> None:
    service = RaService(bench.relay(RaMode.PASS), bench.upstream)
    via = ViaRa(service)

    async def body() -> None:
        for i in range(3):
            cert = await enroll(via, mac_device(f"dev-{i}"), f"pass-{i}")
            assert cert.subject == name(f"pass-{i}")

    await with_service(service, body)
    assert bench.upstream.posts == 6  # ir + certConf each, one post per message
    assert bench.issued() == {"issued": 3}
    assert service.outcomes[("ir", "forwarded", "")] == 3


async def test_nested_batches_several_devices_in_one_envelope(bench: Bench, autojump_clock) -> None:  # type: ignore[no-untyped-def]
    service = RaService(bench.relay(RaMode.NESTED), bench.upstream, batch_size=4, batch_wait=0.5)
    via = ViaRa(service)
    certs: list[x509.Certificate] = []

    async def one(i: int) -> None:
        certs.append(await enroll(via, mac_device(f"dev-{i}"), f"batched-{i}"))

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(one, i)

    await with_service(service, body)
    assert sorted(c.subject.rfc4514_string() for c in certs) == [f"CN=batched-{i}" for i in range(4)]
    # Four irs in one envelope, four certConfs in another: two posts to the CA.
    assert service.upstream_posts == {"nested": 2}
    assert bench.upstream.posts == 2
    assert bench.issued() == {"issued": 4}


async def test_nested_batch_leaves_after_batch_wait(bench: Bench, autojump_clock) -> None:  # type: ignore[no-untyped-def]
    service = RaService(bench.relay(RaMode.NESTED), bench.upstream, batch_size=100, batch_wait=0.2)
    via = ViaRa(service)

    async def body() -> None:
        started = trio.current_time()
        await enroll(via, mac_device("dev-1"), "alone")
        assert trio.current_time() - started == pytest.approx(0.4)  # two batches, each waited out

    await with_service(service, body)
    assert service.upstream_posts == {"nested": 2}


async def test_replace_reprotects_with_ra_verified_pop_and_remacs_the_answer(bench: Bench) -> None:
    seen: list[messages.PKIMessage] = []
    upstream = bench.upstream

    class Spy:
        async def post(self, data: bytes, /, *, path: str | None = None, deadline: float | None = None):  # type: ignore[no-untyped-def]
            seen.append(messages.decode(data))
            return await upstream.post(data, path=path, deadline=deadline)

    service = RaService(bench.relay(RaMode.REPLACE), Spy())  # type: ignore[arg-type]
    via = ViaRa(service)

    async def body() -> None:
        cert = await enroll(via, mac_device("dev-7"), "replaced")
        assert cert.subject == name("replaced")

    await with_service(service, body)
    ir, conf = seen
    assert ir.body_type is BodyType.IR and conf.body_type is BodyType.CERTCONF
    assert ir.body.messages[0].popo.kind == "raVerified"  # type: ignore[union-attr]
    ra_subject = bench.ra_cred.cert.subject.public_bytes()
    for msg in seen:  # signed by the RA, the device's transactionID kept
        assert msg.header.sender == messages.directory_name(ra_subject)
        assert msg.extra_certs[0] == bench.ra_cred.der
    assert ir.header.transaction_id == conf.header.transaction_id
    assert bench.issued() == {"issued": 1}


async def test_replace_forwards_a_signed_device_request_from_its_trust(bench: Bench) -> None:
    device = issue(bench.device_root, "signing-device")
    config = ClientConfig(SignatureProtector(device.key, device.cert, device.chain),
                          TrustStore([x509.load_der_x509_certificate(bench.authority.root)]))
    service = RaService(bench.relay(RaMode.REPLACE), bench.upstream)

    async def body() -> None:
        assert (await enroll(ViaRa(service), config, "signed-via-ra")).subject == name("signed-via-ra")

    await with_service(service, body)
    assert bench.issued() == {"issued": 1}


# ---------------------------------------------------------------------------------------------
# Refusals: answered by the RA, never forwarded


def _fail_names(data: bytes) -> tuple[str, ...]:
    msg = messages.decode(data)
    assert isinstance(msg.body, ErrorMsgContent), msg.label
    return msg.body.status.fail_names


@pytest.mark.parametrize("mode", list(RaMode))
async def test_bad_mac_and_untrusted_signer_never_reach_the_ca(bench: Bench, mode: RaMode) -> None:
    service = RaService(bench.relay(mode), bench.upstream)
    stranger = issue(make_ca("Stranger Root"), "stranger")
    cases = [
        (mac_device("dev-1", secret=b"not the derived secret"), "badMessageCheck"),
        (ClientConfig(SignatureProtector(stranger.key, stranger.cert, stranger.chain)), "signerNotTrusted"),
    ]
    for config, fail in cases:
        tx = ClientTransaction(config, CertRequest(BodyType.IR, new_key(), subject=name("refused")))
        answer = await ViaRa(service).post(tx.start().data)
        assert _fail_names(answer.body) == (fail,)
    assert bench.upstream.posts == 0
    assert bench.issued() == {}
    assert service.outcomes[("ir", "refused", "badMessageCheck")] == 1


async def test_bad_pop_is_refused_by_the_replacing_ra(bench: Bench) -> None:
    service = RaService(bench.relay(RaMode.REPLACE), bench.upstream)
    tx = ClientTransaction(mac_device("dev-2"), CertRequest(BodyType.IR, new_key(), subject=name("x")))
    data = bytearray(tx.start().data)
    # Flip a bit of the POP signature: the last bytes of the CertReqMsg before the protection.
    msg = messages.decode(bytes(data))
    pop = msg.body.messages[0].popo.signature  # type: ignore[union-attr]
    at = bytes(data).index(pop)
    data[at + 10] ^= 1
    # Re-MAC so that only the POP is wrong.
    forged = messages.decode(bytes(data))
    mac = tx.config.protector
    assert isinstance(mac, MacProtector)
    header_der = messages.encode_header(forged.header)
    body_der = messages.der.parse(forged.protected_part).children()[1].raw
    fixed = messages.assemble(header_der, body_der, mac.protect(messages.protected_part(header_der, body_der)))
    answer = await ViaRa(service).post(fixed)
    assert _fail_names(answer.body) == ("badPOP",)
    assert bench.upstream.posts == 0


async def test_two_requests_with_one_transaction_id(bench: Bench, autojump_clock) -> None:  # type: ignore[no-untyped-def]
    """The second new request on a live transactionID is refused by the RA; the first, batched,
    still enrolls."""
    service = RaService(bench.relay(RaMode.NESTED), bench.upstream, batch_size=10, batch_wait=0.1)
    via = ViaRa(service)
    tid = os.urandom(16)
    first = ClientTransaction(mac_device("dev-1"), CertRequest(BodyType.IR, new_key(), subject=name("one")),
                              transaction_id=tid)
    second = ClientTransaction(mac_device("dev-2"), CertRequest(BodyType.IR, new_key(), subject=name("two")),
                               transaction_id=tid)
    answers: dict[str, bytes] = {}

    async def send(label: str, tx: ClientTransaction) -> None:
        answers[label] = (await via.post(tx.start().data)).body

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, "first", first)
            await trio.sleep(0.01)
            nursery.start_soon(send, "second", second)

    await with_service(service, body)
    assert _fail_names(answers["second"]) == ("transactionIdInUse",)
    assert messages.decode(answers["first"]).body_type is BodyType.IP
    assert service.upstream_posts == {"nested": 1}


async def test_unreachable_upstream_is_system_unavail(bench: Bench) -> None:
    class Down:
        async def post(self, data: bytes, /, *, path: str | None = None, deadline: float | None = None):  # type: ignore[no-untyped-def]
            raise TransportError("http://127.0.0.1:9/", "connection refused", kind="connect")

    service = RaService(bench.relay(RaMode.PASS), Down())  # type: ignore[arg-type]

    async def body() -> None:
        with pytest.raises(ServerError) as err:
            await enroll(ViaRa(service), mac_device("dev-3"), "down")
        assert err.value.fail_names == ("systemUnavail",)

    await with_service(service, body)
    assert service.outcomes[("ir", "upstream_error", "systemUnavail")] == 1


async def test_error_knob_injects_without_forwarding(bench: Bench) -> None:
    service = RaService(bench.relay(RaMode.PASS), bench.upstream, knobs=LoadKnobs(error_fraction=1.0, seed=1))

    async def body() -> None:
        with pytest.raises(StatusError) as err:
            await enroll(ViaRa(service), mac_device("dev-4"), "injected")
        assert err.value.fail_names == ("systemFailure",)

    await with_service(service, body)
    assert bench.upstream.posts == 0


async def test_metrics_count_what_the_ra_did(bench: Bench, autojump_clock) -> None:  # type: ignore[no-untyped-def]
    metrics = RaMetrics(process=False)
    service = RaService(bench.relay(RaMode.NESTED), bench.upstream, batch_size=2, batch_wait=0.1, metrics=metrics)
    via = ViaRa(service)

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(2):
                nursery.start_soon(enroll, via, mac_device(f"dev-{i}"), f"m-{i}")
        tx = ClientTransaction(mac_device("dev-9", secret=b"wrong"), CertRequest(BodyType.IR, new_key(), subject=name("x")))
        await via.post(tx.start().data)
        await trio.sleep(1.5)  # one sample of the transaction table

    await with_service(service, body)
    text = metrics.exposition().decode()
    assert 'fleet_ra_requests_total{body="ir",outcome="forwarded"} 2.0' in text
    assert 'fleet_ra_requests_total{body="certConf",outcome="forwarded"} 2.0' in text
    assert 'fleet_ra_failures_total{body="ir",fail_info="badMessageCheck"} 1.0' in text
    assert 'fleet_ra_upstream_requests_total{kind="nested"} 2.0' in text
    assert "fleet_ra_batch_size_bucket{le=\"2.0\"} 2.0" in text
    assert "fleet_ra_transactions 2.0" in text  # the refused one is not remembered
    assert "wrong" not in text and "dev-9" not in text  # no secrets, no references
