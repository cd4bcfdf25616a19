"""https:// against a plain-HTTP server, and http:// against a TLS one: both sides fail fast and
say why in one line (fleet's client, its CLI, openssl s_client against `fleet ca serve`)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from loopback_servers import ROOT, RawReader, fleet_ca, http_server, raw_server, self_signed

from fleet.http import CmpHttpClient, ConnectError, HttpRequest, HttpResponse

NOT_TLS = "the server does not speak TLS (use http:// ?)"
SPEAKS_TLS = "the server speaks TLS (use https:// ?)"


async def echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(200, b"re:" + request.body)


def tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it)."""
    cert, key = self_signed(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


# --- fleet's client ---------------------------------------------------------------------------


async def test_https_to_the_plain_server_says_it_does_not_speak_tls() -> None:
    async with http_server(echo, request_timeout=30, header_timeout=30) as (port, stats):
        url = f"https://127.0.0.1:{port}/.well-known/cmp"
        async with CmpHttpClient(url) as client:
            start = trio.current_time()
            with trio.fail_after(5), pytest.raises(ConnectError) as info:
                await client.post(b"x")
            assert trio.current_time() - start < 3
            assert client.statistics().open_connections == 0
    assert str(info.value) == f"{url}: {NOT_TLS}"
    assert info.value.kind == "tls"
    assert stats.requests_total == 0


async def test_https_to_a_server_that_closes_at_once_suggests_http() -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)  # the ClientHello; then close without a word

    async with raw_server(serve) as port, CmpHttpClient(f"https://127.0.0.1:{port}/") as client:
        with trio.fail_after(5), pytest.raises(ConnectError) as info:
            await client.post(b"x")
    assert info.value.problem == (
        f"127.0.0.1:{port} closed the connection during the TLS handshake; "
        "the server may not speak TLS (use http:// ?)"
    )


async def test_http_to_the_tls_server_says_it_speaks_tls(tmp_path: Path) -> None:
    """fleet's TLS server answers a plain request with a plain 400 naming https:// (as nginx and
    Go do); the client turns that into one line, and the server keeps serving TLS."""
    server_ctx, client_ctx = tls_contexts(tmp_path)
    async with http_server(echo, ssl_context=server_ctx) as (port, stats):
        url = f"http://127.0.0.1:{port}/.well-known/cmp"
        async with CmpHttpClient(url) as client:
            with trio.fail_after(5), pytest.raises(ConnectError) as info:
                await client.post(b"x" * 2000)
        assert str(info.value) == f"{url}: {SPEAKS_TLS}"
        assert info.value.kind == "tls"
        async with CmpHttpClient(f"https://127.0.0.1:{port}/", ssl_context=client_ctx) as client:
            with trio.fail_after(10):
                assert (await client.post(b"ok")).body == b"re:ok"
    assert stats.requests_total == 1


async def test_plain_request_on_the_tls_port_gets_a_plain_400(tmp_path: Path) -> None:
    server_ctx, _ = tls_contexts(tmp_path)
    async with http_server(echo, ssl_context=server_ctx) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(b"POST /pkix/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
                reader = RawReader(stream)
                status, headers, body, _ = await reader.read_response()
                assert await reader.at_eof()
    assert status == 400 and headers[b"connection"] == b"close"
    assert b"https://" in body


@pytest.mark.parametrize(
    "answer",
    [b"\x15\x03\x03\x00\x02\x02\x46", b"\x16\x03\x03\x00\x40" + b"\x00" * 20],
    ids=["alert", "handshake record"],
)
async def test_http_to_a_server_answering_tls_records_says_it_speaks_tls(answer: bytes) -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(answer)
        await trio.sleep_forever()

    async with raw_server(serve) as port, CmpHttpClient(f"http://127.0.0.1:{port}/") as client:
        with trio.fail_after(5), pytest.raises(ConnectError) as info:
            await client.post(b"x")
    assert info.value.problem == SPEAKS_TLS


# --- against `fleet ca serve`: raw sockets, openssl s_client, the CLI --------------------------


@pytest.fixture(scope="module")
def plain_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real `fleet ca serve` on a plain-HTTP port; yields the port."""
    with fleet_ca(tmp_path_factory.mktemp("ca")) as url:
        yield int(url.rsplit(":", 1)[1])


def test_client_hello_to_the_plain_ca_is_answered_and_closed_at_once(plain_ca: int) -> None:
    hello = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="127.0.0.1"
    )
    with pytest.raises(ssl.SSLWantReadError):
        hello.do_handshake()
    with socket.create_connection(("127.0.0.1", plain_ca), timeout=5) as sock:
        start = time.monotonic()
        sock.sendall(outgoing.read())
        received = b""
        while chunk := sock.recv(65536):  # ends when the CA closes; a 5 s timeout fails
            received += chunk
        seconds = time.monotonic() - start
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"not TLS" in received
    assert seconds < 5


def test_openssl_s_client_against_the_plain_ca_ends_promptly(plain_ca: int) -> None:
    start = time.monotonic()
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{plain_ca}"],
        check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )
    seconds = time.monotonic() - start
    assert proc.returncode != 0
    assert "wrong version number" in proc.stdout + proc.stderr
    assert seconds < 10


def genm(server: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "cmp", "genm", "--server", server,
         "--ref", "dev-00000001", "--secret", "pass:irrelevant"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


def test_cli_https_to_the_plain_ca_is_one_line(plain_ca: int) -> None:
    url = f"https://127.0.0.1:{plain_ca}/.well-known/cmp"
    proc = genm(url)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"fleet: error: {url}: {NOT_TLS}\n"


def test_cli_http_to_the_tls_ca_is_one_line(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with fleet_ca(tmp_path / "ca", "--tls-cert", str(cert), "--tls-key", str(key)) as base:
        assert base.startswith("https://")
        url = "http://" + base.removeprefix("https://") + "/.well-known/cmp"
        proc = genm(url)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"fleet: error: {url}: {SPEAKS_TLS}\n"
