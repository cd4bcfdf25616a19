"""CmpHttpClient against real loopback servers: fleet's own, and raw trio servers that misbehave."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from loopback_servers import (
    RawReader,
    cmp_response,
    http_server,
    raw_server,
    read_request,
    self_signed,
)

from fleet.errors import FleetError
from fleet.http import (
    CmpHttpClient,
    CmpHttpResponse,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    HttpRequest,
    HttpResponse,
    HttpStatusError,
    InvalidUrl,
    ProtocolError,
    ReadTimeout,
    ResponseTooLarge,
    TransportError,
    cmp_path,
)


async def echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(200, b"re:" + request.body)


# --- round trips and keep-alive --------------------------------------------------------------


async def test_round_trip_sends_cmp_post_and_returns_body() -> None:
    seen: list[HttpRequest] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse(200, b"\x30\x03\x02\x01\x02")

    async with (
        http_server(handler) as (port, _),
        CmpHttpClient(f"http://127.0.0.1:{port}/.well-known/cmp") as client,
    ):
        response = await client.post(b"\x30\x00" * 300)
    assert response == CmpHttpResponse(200, "application/pkixcmp", b"\x30\x03\x02\x01\x02")
    (request,) = seen
    assert request.method == "POST"
    assert request.path == "/.well-known/cmp"
    assert request.body == b"\x30\x00" * 300
    assert request.header(b"content-type") == b"application/pkixcmp"
    assert request.header(b"content-length") == b"600"
    assert request.header(b"host") == b"127.0.0.1:%d" % port
    assert request.header(b"transfer-encoding") is None
    assert request.header(b"connection") is None  # HTTP/1.1 is persistent by default


async def test_path_argument_and_cmp_path() -> None:
    paths: list[str] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        paths.append(request.path)
        return HttpResponse(200, b"ok")

    async with (
        http_server(handler) as (port, _),
        CmpHttpClient(f"http://127.0.0.1:{port}/.well-known/cmp") as client,
    ):
        await client.post(
            b"a", path=cmp_path(client.base_path, profile="5g nf", operation="keyupdate")
        )
        await client.post(b"b")
    assert paths == ["/.well-known/cmp/p/5g%20nf/keyupdate", "/.well-known/cmp"]


async def test_invalid_request_paths_are_value_errors() -> None:
    async with CmpHttpClient("http://127.0.0.1:9/") as client:
        for bad in ("relative", "/with space", "/caf\u00e9"):
            with pytest.raises(ValueError):
                await client.post(b"x", path=bad)
        assert client.statistics().open_connections == 0


def test_cmp_path_shapes() -> None:
    assert cmp_path("/.well-known/cmp", profile=None, operation=None) == "/.well-known/cmp"
    assert cmp_path("/.well-known/cmp/", profile=None, operation="initialization") == (
        "/.well-known/cmp/initialization"
    )
    assert cmp_path("/pkix/", profile="tls", operation=None) == "/pkix/p/tls"
    assert cmp_path("", profile="a", operation="getcacerts") == "/p/a/getcacerts"
    for bad in ("", "..", "."):
        with pytest.raises(ValueError):
            cmp_path("/x", profile=bad, operation=None)
    assert cmp_path("/x", profile="a/b", operation=None) == "/x/p/a%2Fb"


async def test_keep_alive_reuses_one_connection() -> None:
    async with (
        http_server(echo) as (port, stats),
        CmpHttpClient(f"http://127.0.0.1:{port}/pkix/") as client,
    ):
        for i in range(20):
            assert (await client.post(b"%d" % i)).body == b"re:%d" % i
        assert client.statistics().open_connections == 1
        assert client.statistics().idle_connections == 1
    assert stats.connections_total == 1
    assert stats.requests_total == 20


async def test_keep_alive_false_sends_connection_close_and_reconnects() -> None:
    headers: list[bytes | None] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        headers.append(request.header(b"connection"))
        return HttpResponse(200, b"ok")

    async with (
        http_server(handler) as (port, stats),
        CmpHttpClient(f"http://127.0.0.1:{port}/", keep_alive=False) as client,
    ):
        for _ in range(3):
            await client.post(b"x")
        assert client.statistics().open_connections == 0
    assert headers == [b"close"] * 3
    assert stats.connections_total == 3


async def test_pool_never_exceeds_max_connections() -> None:
    in_flight = 0
    peak = 0
    waiting_seen = 0

    async def handler(request: HttpRequest) -> HttpResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await trio.sleep(0.002)
        in_flight -= 1
        return HttpResponse(200, request.body)

    async with (
        http_server(handler) as (port, stats),
        CmpHttpClient(f"http://127.0.0.1:{port}/", max_connections=5) as client,
    ):

        async def one(i: int) -> None:
            nonlocal waiting_seen
            assert (await client.post(b"%d" % i)).body == b"%d" % i
            waiting_seen = max(waiting_seen, client.statistics().tasks_waiting)
            assert client.statistics().open_connections <= 5

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(one, i)
        assert client.statistics().open_connections <= 5
    assert stats.requests_total == 200
    assert stats.connections_total <= 5
    assert peak <= 5
    assert waiting_seen > 0
    pool = client.statistics()
    assert pool.requests == 200 and 0 < pool.waited < 200 and pool.wait_seconds > 0
    assert client.counters() == {"requests": 200, "pool_waits": pool.waited,
                                 "pool_wait_us": round(pool.wait_seconds * 1e6), "max_connections": 5}


async def test_waiting_tasks_are_served_in_fifo_order() -> None:
    order: list[int] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        order.append(int(request.body))
        await trio.sleep(0.001)
        return HttpResponse(200, b"ok")

    async with (
        http_server(handler) as (port, _),
        CmpHttpClient(f"http://127.0.0.1:{port}/", max_connections=1) as client,
    ):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(30):
                    nursery.start_soon(client.post, b"%d" % i)
                    await trio.testing.wait_all_tasks_blocked()
    assert order == list(range(30))


# --- which responses are CMP ----------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 202, 400, 500, 503])
async def test_cmp_body_accepted_with_2xx_4xx_5xx(status: int) -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(status, b"\x30\x01\x00", content_type="Application/PKIXCMP; x=y")

    async with (
        http_server(handler) as (port, _),
        CmpHttpClient(f"http://127.0.0.1:{port}/") as client,
    ):
        response = await client.post(b"x")
        assert (response.status, response.body) == (status, b"\x30\x01\x00")
        assert response.content_type == "Application/PKIXCMP; x=y"
        await client.post(b"again")  # the connection stayed usable
        assert client.statistics().open_connections == 1


@pytest.mark.parametrize(
    ("status", "content_type"),
    [(503, "text/plain"), (502, "text/html"), (200, "text/html"), (302, "application/pkixcmp")],
)
async def test_non_cmp_answer_raises_http_status_error(status: int, content_type: str) -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(status, b"<h1>secret page body</h1>", content_type=content_type)

    async with (
        http_server(handler) as (port, stats),
        CmpHttpClient(f"http://127.0.0.1:{port}/") as client,
    ):
        with pytest.raises(HttpStatusError) as info:
            await client.post(b"x")
        # Small error pages are read, so the connection is reused.
        with pytest.raises(HttpStatusError):
            await client.post(b"x")
    error = info.value
    assert isinstance(error, TransportError) and isinstance(error, FleetError)
    assert error.status == status
    assert error.kind == f"http_{status}"
    assert error.content_type == content_type
    assert "secret page body" not in str(error)
    assert str(error).startswith(f"http://127.0.0.1:{port}/: HTTP {status}")
    assert stats.connections_total == 1


async def test_response_without_content_type_is_an_http_status_error() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await read_request(RawReader(stream))
        await stream.send_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
        await trio.sleep_forever()

    async with raw_server(serve) as port, CmpHttpClient(f"http://127.0.0.1:{port}/") as client:
        with pytest.raises(HttpStatusError) as info:
            await client.post(b"x", timeout=5)
    assert info.value.status == 500 and info.value.content_type is None


# --- size limits ------------------------------------------------------------------------------


def junk_server(head: bytes, total: int):  # type: ignore[no-untyped-def]
    sent = 0

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal sent
        await read_request(RawReader(stream))
        await stream.send_all(head)
        chunk = b"\x00" * 65536
        while sent < total:
            await stream.send_all(chunk)
            sent += len(chunk)

    return serve, lambda: sent


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/pkixcmp\r\nContent-Length: 100000000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/pkixcmp\r\nConnection: close\r\n\r\n",
    ],
    ids=["content-length", "close-delimited"],
)
async def test_100_mb_response_raises_too_large_quickly(head: bytes) -> None:
    serve, sent = junk_server(head, 100_000_000)
    async with (
        raw_server(serve) as port,
        CmpHttpClient(f"http://127.0.0.1:{port}/", max_response_bytes=1_000_000) as client,
    ):
        start = trio.current_time()
        with pytest.raises(ResponseTooLarge) as info:
            await client.post(b"x")
        assert trio.current_time() - start < 3
        assert client.statistics().open_connections == 0
    assert info.value.kind == "too_large"
    assert sent() < 20_000_000  # the client stopped reading long before 100 MB


async def test_chunked_response_over_limit_raises_too_large() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await read_request(RawReader(stream))
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/pkixcmp\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(100):
            await stream.send_all(b"4000\r\n" + b"z" * 0x4000 + b"\r\n")
        await trio.sleep_forever()

    async with (
        raw_server(serve) as port,
        CmpHttpClient(f"http://127.0.0.1:{port}/", max_response_bytes=100_000) as client,
    ):
        with trio.fail_after(5), pytest.raises(ResponseTooLarge):
            await client.post(b"x")


async def test_chunked_cmp_response_within_limit_is_accepted() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        reader = RawReader(stream)
        await read_request(reader)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/pkixcmp\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        await trio.sleep_forever()

    async with raw_server(serve) as port, CmpHttpClient(f"http://127.0.0.1:{port}/") as client:
        with trio.fail_after(5):
            assert (await client.post(b"x")).body == b"abcde"


# --- timeouts and broken servers --------------------------------------------------------------


async def test_server_that_never_answers_raises_read_timeout() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await read_request(RawReader(stream))
        await trio.sleep_forever()

    async with (
        raw_server(serve) as port,
        CmpHttpClient(f"http://127.0.0.1:{port}/", request_timeout=0.3) as client,
    ):
        start = trio.current_time()
        with pytest.raises(ReadTimeout) as info:
            await client.post(b"x")
        assert 0.25 < trio.current_time() - start < 1.5
        assert client.statistics().open_connections == 0
    assert info.value.kind == "timeout"
    assert "0.3 s" in str(info.value)


async def test_deadline_bounds_the_request_and_the_wait_for_a_connection_slot() -> None:
    """``deadline`` (a transaction's) caps a longer request_timeout, and a task queued for the
    only connection gives up at its deadline instead of waiting for the slot forever."""

    async def serve(stream: trio.SocketStream) -> None:
        await read_request(RawReader(stream))
        await trio.sleep_forever()

    async with (
        raw_server(serve) as port,
        CmpHttpClient(f"http://127.0.0.1:{port}/", request_timeout=30, max_connections=1) as client,
    ):
        start = trio.current_time()
        outcomes: dict[str, float] = {}

        async def post(name: str, deadline: float) -> None:
            with pytest.raises(ReadTimeout) as info:
                await client.post(b"x", deadline=deadline)
            outcomes[name] = trio.current_time() - start
            if name == "queued":
                assert "no free connection" in str(info.value)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(post, "holder", start + 0.6)
                await trio.sleep(0.05)  # the holder has the only slot
                nursery.start_soon(post, "queued", start + 0.3)
        assert 0.25 < outcomes["queued"] < 0.5 and 0.55 < outcomes["holder"] < 1.0
        assert client.statistics().tasks_waiting == 0


async def test_deadline_bounds_connecting() -> None:
    async with full_backlog() as port, CmpHttpClient(f"http://127.0.0.1:{port}/", connect_timeout=30) as client:
        start = trio.current_time()
        try:
            await client.post(b"x", deadline=start + 0.3)
        except ConnectTimeout:
            assert trio.current_time() - start < 1.0
        except (ConnectError, ConnectionLost, ReadTimeout):
            pytest.skip("this kernel accepted the connection despite a full backlog")
        else:
            pytest.fail("post succeeded against a server that never accepts")


async def test_dribbling_server_raises_read_timeout() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await read_request(RawReader(stream))
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/pkixcmp\r\nContent-Length: 9999\r\n\r\n"
        )
        for byte in head + b"x" * 9999:
            await stream.send_all(bytes([byte]))
            await trio.sleep(0.02)

    async with raw_server(serve) as port, CmpHttpClient(f"http://127.0.0.1:{port}/") as client:
        start = trio.current_time()
        with pytest.raises(ReadTimeout):
            await client.post(b"x", timeout=0.4)
        assert trio.current_time() - start < 1.5


async def test_refused_port_raises_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        async with CmpHttpClient(f"http://127.0.0.1:{port}/") as client:
            with pytest.raises(ConnectError) as info:
                await client.post(b"x")
            assert client.statistics().open_connections == 0
    assert info.value.kind == "connect"
    assert f"127.0.0.1:{port}" in str(info.value) and "\n" not in str(info.value)


@asynccontextmanager
async def full_backlog() -> AsyncIterator[int]:
    """A port whose accept queue is full (never accepted): further SYNs are dropped and connect
    hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            await trio.sleep(0.1)
            yield port
        finally:
            for filler in fillers:
                filler.close()


async def test_connect_timeout_when_backlog_is_full() -> None:
    async with full_backlog() as port, CmpHttpClient(f"http://127.0.0.1:{port}/", connect_timeout=0.3) as client:
        start = trio.current_time()
        try:
            await client.post(b"x")
        except ConnectTimeout as exc:
            assert exc.kind == "connect_timeout"
            assert trio.current_time() - start < 1.5
        except (ConnectError, ConnectionLost, ReadTimeout):
            pytest.skip("this kernel accepted the connection despite a full backlog")
        else:
            pytest.fail("post succeeded against a server that never accepts")


async def test_dropped_connection_on_fresh_connection_is_not_retried() -> None:
    requests = 0

    async def handler(request: HttpRequest) -> HttpResponse:
        nonlocal requests
        requests += 1
        return HttpResponse(500, drop_connection=True)

    async with (
        http_server(handler) as (port, _),
        CmpHttpClient(f"http://127.0.0.1:{port}/") as client,
    ):
        with pytest.raises(ConnectionLost) as info:
            await client.post(b"x")
    assert requests == 1
    assert info.value.kind == "connection_lost"


async def test_stale_keep_alive_connection_is_replaced() -> None:
    """The server closes an idle connection; the next post still succeeds, on a new one."""
    async with (
        http_server(echo, idle_timeout=0.1) as (port, stats),
        CmpHttpClient(f"http://127.0.0.1:{port}/") as client,
    ):
        assert (await client.post(b"1")).body == b"re:1"
        await trio.sleep(0.4)
        assert (await client.post(b"2")).body == b"re:2"
    assert stats.connections_total == 2
    assert stats.requests_total == 2


async def test_reused_connection_dying_before_any_response_byte_is_retried_once() -> None:
    """A server that closes a kept-alive connection on its second request without answering:
    the client cannot tell this from a stale connection, so it re-sends once on a new one."""
    received: list[bytes] = []

    async def serve(stream: trio.SocketStream) -> None:
        reader = RawReader(stream)
        received.append(await read_request(reader))
        await stream.send_all(cmp_response(b"first"))
        received.append(await read_request(reader))  # then close without answering

    async with raw_server(serve) as port, CmpHttpClient(f"http://127.0.0.1:{port}/") as client:
        with trio.fail_after(5):
            assert (await client.post(b"a")).body == b"first"
            assert (await client.post(b"b")).body == b"first"  # retried on a fresh connection
    assert received == [b"a", b"b", b"b"]


async def test_reused_connection_dying_mid_response_is_not_retried() -> None:
    received: list[bytes] = []

    async def serve(stream: trio.SocketStream) -> None:
        reader = RawReader(stream)
        received.append(await read_request(reader))
        await stream.send_all(cmp_response(b"first"))
        received.append(await read_request(reader))
        await stream.send_all(cmp_response(b"second")[:20])  # then close mid-response

    async with raw_server(serve) as port, CmpHttpClient(f"http://127.0.0.1:{port}/") as client:
        with trio.fail_after(5):
            await client.post(b"a")
            with pytest.raises(ConnectionLost):
                await client.post(b"b")
    assert received == [b"a", b"b"]


async def test_garbage_answer_raises_protocol_error() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await read_request(RawReader(stream))
        await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await trio.sleep_forever()

    async with raw_server(serve) as port, CmpHttpClient(f"http://127.0.0.1:{port}/") as client:
        with trio.fail_after(5), pytest.raises(ProtocolError) as info:
            await client.post(b"x")
    assert info.value.kind == "protocol"


async def test_cancelled_post_closes_its_connection() -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        await trio.sleep(10)
        return HttpResponse(200, b"late")

    async with (
        http_server(handler) as (port, _),
        CmpHttpClient(f"http://127.0.0.1:{port}/") as client,
    ):
        with trio.move_on_after(0.1):
            await client.post(b"x")
        assert client.statistics().open_connections == 0  # its state was unknown: discarded


async def test_aclose_closes_idle_connections_and_refuses_new_posts() -> None:
    async with http_server(echo) as (port, _):
        client = CmpHttpClient(f"http://127.0.0.1:{port}/")
        await client.post(b"x")
        assert client.statistics().idle_connections == 1
        await client.aclose()
        assert client.statistics().open_connections == 0
        with pytest.raises(trio.ClosedResourceError):
            await client.post(b"x")


# --- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["ftp://ca/", "http:///path", "https://user:secret@ca/", "http://ca:99999/", "ca.example"],
)
def test_invalid_urls_are_rejected_without_leaking_credentials(url: str) -> None:
    with pytest.raises(InvalidUrl) as info:
        CmpHttpClient(url)
    assert "secret" not in str(info.value)
    assert isinstance(info.value, FleetError)


async def test_ipv6_loopback_round_trip() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    seen: list[HttpRequest] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse(200, b"v6")

    async with trio.open_nursery() as nursery:
        try:
            port = await nursery.start(__import__("fleet.http").http.serve_http, handler, "::1", 0)
        except OSError:
            pytest.skip("no IPv6 loopback")
        async with CmpHttpClient(f"http://[::1]:{port}/pkix/") as client:
            assert (await client.post(b"x")).body == b"v6"
        nursery.cancel_scope.cancel()
    assert seen[0].header(b"host") == b"[::1]:%d" % port
    assert seen[0].peer.startswith("[::1]:")


# --- HTTPS --------------------------------------------------------------------------------------


async def test_https_round_trip_and_verification(tmp_path: Path) -> None:
    cert_path, key_path = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=str(cert_path))

    async with http_server(echo, ssl_context=server_ctx) as (port, stats):
        async with CmpHttpClient(
            f"https://127.0.0.1:{port}/.well-known/cmp", ssl_context=client_ctx
        ) as client:
            with trio.fail_after(10):
                for i in range(3):
                    assert (await client.post(b"tls%d" % i)).body == b"re:tls%d" % i
        assert stats.connections_total == 1
        # Without a context, https verifies against the system roots: this cert is unknown.
        async with CmpHttpClient(f"https://127.0.0.1:{port}/") as strict:
            with trio.fail_after(10), pytest.raises(ConnectError) as info:
                await strict.post(b"x")
        assert info.value.kind == "tls"
        assert "certificate" in str(info.value).lower()


# --- plain-TCP send path: partial writes and a peer that stops reading -------------------------


async def test_request_larger_than_the_socket_buffers_arrives_whole() -> None:
    body = bytes(range(256)) * 16384  # 4 MiB: many partial writes, waiting for the reader
    got: list[bytes] = []

    async def serve(stream: trio.SocketStream) -> None:
        reader = RawReader(stream)
        await trio.sleep(0.05)  # let the client fill the buffers and wait for writability
        got.append(await read_request(reader))
        await stream.send_all(cmp_response(b"ok"))

    async with raw_server(serve) as port, CmpHttpClient(f"http://127.0.0.1:{port}/") as client:
        response = await client.post(body)
    assert response.body == b"ok"
    assert got == [body]


async def test_server_that_stops_reading_a_large_request_raises_read_timeout() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()  # never reads: the client's send blocks

    async with (
        raw_server(serve) as port,
        CmpHttpClient(f"http://127.0.0.1:{port}/", request_timeout=0.3) as client,
    ):
        start = trio.current_time()
        with pytest.raises(ReadTimeout):
            await client.post(b"x" * (16 << 20))
        assert trio.current_time() - start < 1.5
        assert client.statistics().open_connections == 0
