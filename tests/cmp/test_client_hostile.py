"""A hostile CA on loopback: every lie or abuse is refused with its own typed error, in time.

Two kinds of server: fleet's HTTP server answering through ``CaStub`` (tests/cmp/ca_stub.py) made
to misbehave at the CMP level, and raw trio sockets where HTTP itself misbehaves (a 100 MB
answer, silence, a byte at a time). Each test runs the real client stack
(``run_transaction`` over ``CmpHttpClient``) and bounds itself with ``trio.fail_after``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.cmp import messages
from fleet.cmp.client import ClientConfig, ClientTransaction, Done, State
from fleet.cmp.errors import (
    CaPubsNotAllowed,
    CmpError,
    MalformedMessage,
    PollingLimit,
    RecipNonceMismatch,
    TransactionIdMismatch,
    UnprotectedMessage,
    WrongPublicKey,
)
from fleet.cmp.messages import BodyType, CertRepMessage, CertResponse, PKIMessage, PKIStatus
from fleet.cmp.protection import BadMac, SignatureProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.trust import TrustStore, UntrustedSigner
from fleet.errors import FleetError
from fleet.exchange import TransactionTimeout, run_transaction
from fleet.http import HttpRequest, HttpResponse, serve_http
from fleet.http.client import CmpHttpClient
from fleet.http.errors import (
    ConnectionLost,
    HttpStatusError,
    ProtocolError,
    ReadTimeout,
    ResponseTooLarge,
)

from .ca_stub import CaStub, Reply, issue, make_ca

KEY = ec.generate_private_key(ec.SECP256R1())
SUBJECT = x509.Name.from_rfc4514_string("CN=hostile test")
TIMEOUT = 0.6  # the whole transaction's deadline in these tests
BOUND = 2.0  # no test may take longer than this


@asynccontextmanager
async def stub_server(stub: CaStub) -> AsyncIterator[str]:
    """fleet's HTTP server on 127.0.0.1, answering every POST with ``stub.answer``."""

    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, stub.answer(request.body))

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_http, handler, "127.0.0.1", 0))
        yield f"http://127.0.0.1:{port}/.well-known/cmp"
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw_server(serve: Callable[[trio.SocketStream], Awaitable[None]]) -> AsyncIterator[str]:
    """A bare TCP server on 127.0.0.1 calling ``serve(stream)`` per connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await serve(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, one, listeners))  # type: ignore[arg-type]
        yield f"http://127.0.0.1:{port}/"
        nursery.cancel_scope.cancel()


async def read_request(stream: trio.SocketStream) -> bytes:
    """One request with a Content-Length body; returns the body."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise trio.BrokenResourceError
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += await stream.receive_some(65536)
    return body


def http_head(length: int | None, content_type: bytes = b"application/pkixcmp", status: int = 200) -> bytes:
    head = b"HTTP/1.1 %d OK\r\nContent-Type: %s\r\n" % (status, content_type)
    if length is not None:
        head += b"Content-Length: %d\r\n" % length
    return head + b"\r\n"


def ir() -> CertRequest:
    return CertRequest(BodyType.IR, KEY, SUBJECT)


async def enroll(url: str, config: ClientConfig, *, timeout: float = TIMEOUT, **client: object) -> tuple[ClientTransaction, Done]:
    tx = ClientTransaction(config, ir())
    async with CmpHttpClient(url, max_connections=1, request_timeout=BOUND, connect_timeout=1, **client) as http:  # type: ignore[arg-type]
        return tx, await run_transaction(http, tx, timeout=timeout)


async def refused(url: str, config: ClientConfig, error: type[FleetError], kind: str, **kw: object) -> FleetError:
    """Run an ir that must fail with ``error`` (of ``kind``) well within the deadline."""
    started = trio.current_time()
    with trio.fail_after(BOUND):
        with pytest.raises(error) as info:
            await enroll(url, config, **kw)  # type: ignore[arg-type]
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert info.value.kind == kind  # type: ignore[attr-defined]
    assert "\n" not in str(info.value)
    assert trio.current_time() - started < BOUND
    return info.value


def mac(stub: CaStub) -> ClientConfig:
    return ClientConfig(stub.mac_protector())


def sig(stub: CaStub) -> ClientConfig:
    device = stub.device()
    return ClientConfig(SignatureProtector(device.key, device.cert), TrustStore([stub.root.cert]))


def header_change(**changes: object) -> Callable[[Reply, PKIMessage], Reply]:
    def mutate(reply: Reply, request: PKIMessage) -> Reply:
        return dataclasses.replace(reply, header=dataclasses.replace(reply.header, **changes))  # type: ignore[arg-type]

    return mutate


# ---------------------------------------------------------------------------------------------
# CMP-level lies, served over real HTTP


async def test_honest_stub_enrolls() -> None:
    """The baseline the other tests corrupt: the same setup succeeds when nobody lies."""
    stub = CaStub()
    async with stub_server(stub) as url:
        tx, done = await enroll(url, mac(stub))
    assert tx.state is State.DONE and done.certificate is not None
    assert [m.body_type for m in stub.received] == [BodyType.IR, BodyType.CERTCONF]


async def test_wrong_mac() -> None:
    stub = CaStub(reply_secret=b"guessed")
    async with stub_server(stub) as url:
        await refused(url, mac(stub), BadMac, "bad_mac")


async def test_signer_outside_the_trust_anchors() -> None:
    stub = CaStub(ca_pubs=False)
    config = sig(stub)
    stub.signer = issue(make_ca("Mallory Root"), "Mallory RA")
    async with stub_server(stub) as url:
        await refused(url, config, UntrustedSigner, "untrusted_signer")


async def test_self_signed_signer_with_the_right_name() -> None:
    """A signer claiming the real RA's subject, self-signed: the name is not the trust."""
    stub = CaStub(ca_pubs=False)
    config = sig(stub)
    fake_root = make_ca(stub.signer.cert.subject.rfc4514_string().removeprefix("CN="))
    stub.signer = fake_root
    async with stub_server(stub) as url:
        await refused(url, config, UntrustedSigner, "untrusted_signer")


async def test_wrong_recip_nonce() -> None:
    stub = CaStub(mutate=header_change(recip_nonce=b"\x00" * 16))
    async with stub_server(stub) as url:
        await refused(url, mac(stub), RecipNonceMismatch, "wrong_recip_nonce")


async def test_replayed_response() -> None:
    """certConf answered with the ip again (a valid MAC, but the ir's recipNonce)."""
    stub = CaStub()
    first: list[bytes] = []

    def replay(data: bytes) -> bytes:
        if not first:
            first.append(data)
        return first[0]

    stub.tamper = replay
    async with stub_server(stub) as url:
        await refused(url, mac(stub), RecipNonceMismatch, "wrong_recip_nonce")
    assert [m.body_type for m in stub.received] == [BodyType.IR, BodyType.CERTCONF]


async def test_wrong_transaction_id() -> None:
    stub = CaStub(mutate=header_change(transaction_id=b"\x07" * 16))
    async with stub_server(stub) as url:
        await refused(url, mac(stub), TransactionIdMismatch, "wrong_transaction_id")


async def test_unprotected_positive_response() -> None:
    stub = CaStub(mutate=lambda reply, request: dataclasses.replace(reply, protect="none"))
    async with stub_server(stub) as url:
        await refused(url, mac(stub), UnprotectedMessage, "unprotected")


async def test_certificate_for_another_key() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    stub = CaStub()

    def swap(reply: Reply, request: PKIMessage) -> Reply:
        if reply.body_type is not BodyType.IP:
            return reply
        cert = stub.issue_for(other.public_key())
        return dataclasses.replace(reply, body=CertRepMessage((CertResponse(0, messages.ACCEPTED, cert),)))

    stub.mutate = swap
    async with stub_server(stub) as url:
        await refused(url, mac(stub), WrongPublicKey, "wrong_public_key")
    # The CA was told first, so it can revoke what it issued.
    assert [m.body_type for m in stub.received] == [BodyType.IR, BodyType.CERTCONF]
    status = stub.received[1].body.statuses[0].status_info  # type: ignore[union-attr]
    assert status is not None and status.status == PKIStatus.REJECTION
    assert status.fail_names == ("badCertTemplate",)


async def test_ca_pubs_under_signature_protection() -> None:
    """A conformance run that asks for it refuses them before confirming anything."""
    stub = CaStub(ca_pubs=True)
    async with stub_server(stub) as url:
        await refused(url, dataclasses.replace(sig(stub), refuse_signed_ca_pubs=True), CaPubsNotAllowed,
                      "capubs_not_allowed")
    assert [m.body_type for m in stub.received] == [BodyType.IR]  # nothing confirmed


async def test_rogue_ca_pubs_under_signature_protection_never_become_trust_anchors() -> None:
    """By default the certificate is accepted (CAs commonly send caPubs whatever the protection),
    but a rogue root in caPubs reaches neither the result nor the trust store: a signer under
    that root is still refused afterwards (RFC 9483 §4.1.1)."""
    rogue = make_ca("Rogue Root")
    stub = CaStub(ca_pubs=True)

    def rogue_ca_pubs(reply: Reply, request: PKIMessage) -> Reply:
        if not isinstance(reply.body, CertRepMessage):
            return reply
        return dataclasses.replace(reply, body=dataclasses.replace(reply.body, ca_pubs=(rogue.der,)))

    stub.mutate = rogue_ca_pubs
    config = sig(stub)
    async with stub_server(stub) as url:
        with trio.fail_after(BOUND):
            _, done = await enroll(url, config)
    assert done.certificate is not None and done.ca_pubs == () and done.warnings == ("capubs_ignored",)
    assert [m.body_type for m in stub.received] == [BodyType.IR, BodyType.CERTCONF]
    assert rogue.cert not in config.trust.anchors  # type: ignore[union-attr]
    impostor = CaStub(root=rogue)  # answers signed by an RA under the rogue root
    async with stub_server(impostor) as url:
        await refused(url, config, UntrustedSigner, "untrusted_signer")


async def test_truncated_der() -> None:
    stub = CaStub(tamper=lambda data: data[: len(data) * 2 // 3])
    async with stub_server(stub) as url:
        await refused(url, mac(stub), MalformedMessage, "malformed")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: b"\x30\x84\xff\xff\xff\xff" + d[4:],  # outer SEQUENCE claims 4 GiB
        lambda d: b"\x30\x89\x01\x00\x00\x00\x00\x00\x00\x00\x00" + d[4:],  # 9 length octets
        lambda d: d[:4] + b"\x30\x84\x7f\xff\xff\xff" + d[6:],  # the header claims 2 GiB
        lambda d: b"\x30\x80" + d[4:] + b"\x00\x00",  # indefinite length (BER, not DER)
    ],
    ids=["4GiB", "9 length octets", "inner 2GiB", "indefinite"],
)
async def test_absurd_der_length_fields(tamper: Callable[[bytes], bytes]) -> None:
    stub = CaStub(tamper=tamper)
    async with stub_server(stub) as url:
        await refused(url, mac(stub), MalformedMessage, "malformed")


async def test_endless_polling() -> None:
    stub = CaStub(polls=1000, check_after=0)
    async with stub_server(stub) as url:
        await refused(url, ClientConfig(stub.mac_protector(), max_polls=5), PollingLimit, "poll_limit")
    assert len(stub.received) == 6


async def test_check_after_beyond_the_deadline_ends_at_the_deadline() -> None:
    """A pollRep asking for 30 s when the transaction has 0.6 s: timed out at the deadline,
    not after sleeping the whole checkAfter."""
    stub = CaStub(polls=2, check_after=30)
    async with stub_server(stub) as url:
        started = trio.current_time()
        await refused(url, ClientConfig(stub.mac_protector()), TransactionTimeout, "transaction_timeout")
        assert TIMEOUT <= trio.current_time() - started < TIMEOUT + 0.5


# ---------------------------------------------------------------------------------------------
# HTTP-level abuse, from raw sockets


async def test_100_mb_response_declared_is_refused_unread() -> None:
    sent = [0]

    async def serve(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(http_head(100_000_000))
        chunk = b"\x00" * 65536
        while sent[0] < 100_000_000:
            await stream.send_all(chunk)
            sent[0] += len(chunk)

    async with raw_server(serve) as url:
        error = await refused(url, mac(CaStub()), ResponseTooLarge, "too_large")
        await trio.sleep(0.05)
    assert error.declared == 100_000_000  # type: ignore[attr-defined]
    assert sent[0] < 20_000_000  # the client hung up; it did not drain 100 MB


async def test_100_mb_response_undeclared_is_cut_at_the_limit() -> None:
    """Close-delimited body (no Content-Length): read up to the limit, then refused."""
    sent = [0]

    async def serve(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/pkixcmp\r\n\r\n")
        chunk = b"\x30" * 65536
        while sent[0] < 100_000_000:
            await stream.send_all(chunk)
            sent[0] += len(chunk)

    async with raw_server(serve) as url:
        await refused(url, mac(CaStub()), ResponseTooLarge, "too_large", max_response_bytes=1 << 20)
        await trio.sleep(0.05)
    assert sent[0] < 20_000_000


@pytest.mark.parametrize(
    ("length", "error", "kind"),
    [(10**14, ResponseTooLarge, "too_large"), (10**30, ProtocolError, "protocol")],
    ids=["100TB", "30 digits"],
)
async def test_absurd_content_length(length: int, error: type[FleetError], kind: str) -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(http_head(length) + b"\x30\x03")
        await trio.sleep_forever()

    async with raw_server(serve) as url:
        await refused(url, mac(CaStub()), error, kind)


async def test_server_that_never_answers() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await trio.sleep_forever()

    async with raw_server(serve) as url:
        started = trio.current_time()
        error = await refused(url, mac(CaStub()), TransactionTimeout, "transaction_timeout")
        assert TIMEOUT <= trio.current_time() - started < TIMEOUT + 0.5
    assert "0.6 s" in str(error)


async def test_request_timeout_shorter_than_the_transaction() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await trio.sleep_forever()

    async with raw_server(serve) as url:
        tx = ClientTransaction(mac(CaStub()), ir())
        with trio.fail_after(BOUND), pytest.raises(ReadTimeout) as info:
            async with CmpHttpClient(url, request_timeout=0.3) as http:
                await run_transaction(http, tx, timeout=5)
    assert info.value.kind == "timeout"


async def test_server_that_dribbles_a_valid_response() -> None:
    """An honest answer, one byte per 20 ms: the deadline covers the whole transaction."""
    stub = CaStub()

    async def serve(stream: trio.SocketStream) -> None:
        body = stub.answer(await read_request(stream))
        for byte in http_head(len(body)) + body:
            await stream.send_all(bytes([byte]))
            await trio.sleep(0.02)

    async with raw_server(serve) as url:
        await refused(url, mac(stub), TransactionTimeout, "transaction_timeout")


async def test_server_that_sends_headers_forever() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\n")
        while True:
            await stream.send_all(b"X-A: b\r\n" * 100)

    async with raw_server(serve) as url:
        error = await refused(url, mac(CaStub()), ProtocolError, "protocol")
    assert "malformed HTTP response" in str(error)


async def test_server_that_hangs_up() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await read_request(stream)

    async with raw_server(serve) as url:
        await refused(url, mac(CaStub()), ConnectionLost, "connection_lost")


async def test_body_shorter_than_content_length() -> None:
    stub = CaStub()

    async def serve(stream: trio.SocketStream) -> None:
        body = stub.answer(await read_request(stream))
        await stream.send_all(http_head(len(body)) + body[:-10])

    async with raw_server(serve) as url:
        await refused(url, mac(stub), ConnectionLost, "connection_lost")


async def test_not_a_cmp_answer() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await read_request(stream)
        page = b"<html>maintenance</html>"
        await stream.send_all(http_head(len(page), b"text/html", 503) + page)

    async with raw_server(serve) as url:
        error = await refused(url, mac(CaStub()), HttpStatusError, "http_503")
    assert "maintenance" not in str(error)


async def test_garbage_instead_of_http() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"\x00\xff" * 100 + b"\r\n\r\n")

    async with raw_server(serve) as url:
        await refused(url, mac(CaStub()), ProtocolError, "protocol")


def test_every_error_here_is_typed() -> None:
    """The suite's contract: all refusals are FleetErrors with a kind, none is a bare exception."""
    for error in (BadMac, UntrustedSigner, RecipNonceMismatch, TransactionIdMismatch, UnprotectedMessage,
                  WrongPublicKey, CaPubsNotAllowed, MalformedMessage, PollingLimit, TransactionTimeout):
        assert issubclass(error, CmpError) and error.kind
    kinds = {e.kind for e in (BadMac, UntrustedSigner, RecipNonceMismatch, TransactionIdMismatch,
                              UnprotectedMessage, WrongPublicKey, CaPubsNotAllowed, MalformedMessage,
                              ResponseTooLarge, TransactionTimeout)}
    assert len(kinds) == 10  # each its own kind
