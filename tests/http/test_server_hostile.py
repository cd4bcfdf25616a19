"""fleet's HTTP server against slow and malformed requests, over real loopback sockets.

Every malformed request must get its answer (a 4xx, then close) as soon as it is known to be
malformed, never a wait for a deadline, a traceback or a disturbed neighbour; slow ones are cut
off by the header deadline. The server runs with 30 s request and header timeouts unless a test
is about a timeout, so a request that hangs trips the test's 5 s bound instead of passing late.
"""

from __future__ import annotations

import logging
import ssl

import pytest
import trio
import trio.lowlevel
from loopback_servers import RawReader, http_server

from fleet.http import HttpRequest, HttpResponse

SLOW = {"request_timeout": 30.0, "header_timeout": 30.0, "idle_timeout": 30.0}


async def echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(200, b"re:" + request.body)


def post(body: bytes, extra: bytes = b"") -> bytes:
    return b"POST /pkix/ HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n" % (extra, len(body)) + body


async def connect(port: int) -> tuple[trio.SocketStream, RawReader]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    return stream, RawReader(stream)


async def closed_by_peer(reader: RawReader) -> bool:
    try:
        return await reader.at_eof()
    except trio.BrokenResourceError:  # reset because our unread bytes were still queued
        return True


def client_hello() -> bytes:
    """The first flight of a real TLS client (Python's ssl, as fleet's client sends it)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def answer_to(port: int, data: bytes, *, half_close: bool = False) -> tuple[int | None, bytes, float]:
    """Send ``data`` on a new connection; (status or None if closed unanswered, body, seconds
    until the server closed). Fails the test if the server neither answers nor closes in 5 s."""
    stream, reader = await connect(port)
    async with stream:
        start = trio.current_time()
        with trio.fail_after(5):
            try:
                await stream.send_all(data)
                if half_close:
                    await stream.send_eof()
            except trio.BrokenResourceError:
                pass
            try:
                status, _, body, _ = await reader.read_response()
                if status == 100:  # the interim answer to Expect: 100-continue
                    status, _, body, _ = await reader.read_response()
            except (EOFError, trio.BrokenResourceError):
                status, body = None, b""
            assert await closed_by_peer(reader)
        return status, body, trio.current_time() - start


async def still_serves(port: int) -> None:
    stream, reader = await connect(port)
    async with stream:
        with trio.fail_after(5):
            await stream.send_all(post(b"next"))
            assert (await reader.read_response())[2] == b"re:next"


# -- a TLS client on the plain port ----------------------------------------------------------


async def test_tls_client_hello_on_the_plain_port_gets_400_and_close_at_once() -> None:
    """https:// against the plain port: the ClientHello's first byte (0x16, a TLS handshake
    record) can never start a request, so it is answered at once with a 400 that says so. A TLS
    client reading those plain bytes fails on the spot ("wrong version number")."""
    hello = client_hello()
    assert hello[0] == 0x16
    async with http_server(echo, **SLOW) as (port, stats):
        for data in (hello, hello[:3]):  # the whole ClientHello, or only its first bytes
            status, body, seconds = await answer_to(port, data)
            assert status == 400
            assert b"not TLS" in body and b"http://" in body
            assert seconds < 3
        await still_serves(port)
    assert stats.requests_total == 1


# -- the header deadline ---------------------------------------------------------------------


async def test_connection_that_sends_nothing_is_closed_at_the_header_deadline() -> None:
    """The first head is due header_timeout after the accept, not after idle_timeout."""
    async with http_server(echo, header_timeout=0.5, idle_timeout=30, request_timeout=30) as (port, stats):
        stream, reader = await connect(port)
        async with stream:
            start = trio.current_time()
            with trio.fail_after(5):
                assert await closed_by_peer(reader)
            assert 0.4 < trio.current_time() - start < 3
        with trio.fail_after(5):
            while stats.connections_open:
                await trio.sleep(0.01)


async def test_slow_head_is_cut_off_at_the_header_deadline_while_others_are_served() -> None:
    """Slowloris: bytes of a head keep coming, one every 50 ms, but the head is not complete
    within header_timeout (request_timeout is 30 s): closed. Meanwhile another client's
    requests are answered as usual."""
    async with http_server(echo, header_timeout=0.5, idle_timeout=30, request_timeout=30) as (port, stats):
        slow, slow_reader = await connect(port)
        other, other_reader = await connect(port)
        served = 0
        async with slow, other:

            async def dribble() -> None:
                try:
                    for byte in post(b"x" * 100):  # ~130 bytes: 6.5 s at this pace
                        await slow.send_all(bytes([byte]))
                        await trio.sleep(0.05)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async def serve_meanwhile() -> None:
                nonlocal served
                while True:
                    await other.send_all(post(b"%d" % served))
                    assert (await other_reader.read_response())[2] == b"re:%d" % served
                    served += 1
                    await trio.sleep(0.05)

            start = trio.current_time()
            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(dribble)
                    nursery.start_soon(serve_meanwhile)
                    assert await closed_by_peer(slow_reader)
                    elapsed = trio.current_time() - start
                    served_meanwhile = served
                    nursery.cancel_scope.cancel()
                await other.send_all(post(b"after"))  # and the other connection carries on
                assert (await other_reader.read_response())[2] == b"re:after"
            assert 0.4 < elapsed < 3
            assert served_meanwhile >= 1
    assert stats.requests_total >= served_meanwhile + 1


async def test_next_head_on_a_keep_alive_connection_gets_the_header_deadline() -> None:
    """Between requests a connection may idle for idle_timeout; once the next request's first
    byte arrives, its head has header_timeout."""
    async with http_server(echo, header_timeout=0.5, idle_timeout=30, request_timeout=30) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(post(b"first"))
                assert (await reader.read_response())[2] == b"re:first"
                await trio.sleep(0.8)  # idle past header_timeout: still open
                await stream.send_all(b"POST /pkix/ HTTP/1.1\r\nHost: x\r\n")  # no end
                start = trio.current_time()
                assert await closed_by_peer(reader)
            assert 0.4 < trio.current_time() - start < 3


async def test_a_slow_body_has_the_request_timeout_not_the_header_deadline() -> None:
    async with http_server(echo, header_timeout=0.3, idle_timeout=30, request_timeout=10) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(post(b"")[: -len(b"0\r\n\r\n")] + b"8\r\n\r\n")
                for part in (b"sl", b"ow", b" b", b"od"):
                    await trio.sleep(0.2)  # 0.8 s in all: past the header deadline
                    await stream.send_all(part)
                assert (await reader.read_response())[2] == b"re:slow bod"


# -- chunked bodies: sizes checked when declared ---------------------------------------------

CHUNKED = b"POST /pkix/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"


@pytest.mark.parametrize(
    "size_line",
    [
        b"100000000000000000000",  # 2**80
        b"FFFFFFFFFFFFFFFFFFFF",  # 2**80 - 1
        b"0000100000000000000000000",  # 2**80 behind zeros
        b"f4241",  # 1,000,001: one byte over the limit
    ],
)
@pytest.mark.parametrize("expect", [b"", b"Expect: 100-continue\r\n"])
async def test_chunk_declared_over_the_limit_gets_413_at_once(size_line: bytes, expect: bytes) -> None:
    async with http_server(echo, max_body_bytes=1_000_000, **SLOW) as (port, stats):
        status, _, seconds = await answer_to(port, CHUNKED + expect + b"\r\n" + size_line + b"\r\nabc")
        assert status == 413 and seconds < 3
        await still_serves(port)
    assert stats.requests_total == 1


async def test_chunks_that_add_up_over_the_limit_get_413() -> None:
    async with http_server(echo, max_body_bytes=1000, **SLOW) as (port, _):
        body = b"200\r\n" + b"y" * 0x200 + b"\r\n"
        status, _, seconds = await answer_to(port, CHUNKED + b"\r\n" + body + body[:10])
    assert status == 413 and seconds < 3


async def test_chunked_body_with_extensions_and_trailers_is_served() -> None:
    async with http_server(echo, **SLOW) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(
                    CHUNKED + b"\r\n3;name=value\r\nabc\r\n2 ; x\r\nde\r\n0\r\nX-Check: 1\r\n\r\n"
                    + post(b"after")  # pipelined: the bytes after the body are the next request
                )
                assert (await reader.read_response())[2] == b"re:abcde"
                assert (await reader.read_response())[2] == b"re:after"


# -- bare LF ---------------------------------------------------------------------------------


BARE_LF_HEADS = [
    b"POST /pkix/ HTTP/1.1\nHost: x\nContent-Length: 3\n\n",
    b"POST /pkix/ HTTP/1.1\r\nHost: x\nContent-Length: 3\r\n\r\n",
    b"POST /pkix/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\n",
]


@pytest.mark.parametrize("head", BARE_LF_HEADS)
async def test_bare_lf_heads_are_served_at_once(head: bytes) -> None:
    """RFC 9112 §2.2 lets a recipient take a bare LF as a line end; the server does (as h11
    does), and answers at once instead of waiting for a CRLF CRLF that never comes."""
    async with http_server(echo, **SLOW) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            start = trio.current_time()
            with trio.fail_after(5):
                await stream.send_all(head + b"abc")
                assert (await reader.read_response())[2] == b"re:abc"
            assert trio.current_time() - start < 3


@pytest.mark.parametrize("head", BARE_LF_HEADS + [post(b"")[:-len(b"0\r\n\r\n")] + b"3\r\n\r\n"])
async def test_heads_arriving_one_byte_at_a_time_are_served(head: bytes) -> None:
    """The head's end is searched for only in new bytes (and the few before them): a head
    dribbled byte by byte is found wherever its line ends fall."""
    async with http_server(echo, **SLOW) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                for byte in head + b"abc":
                    await stream.send_all(bytes([byte]))
                    await trio.lowlevel.checkpoint()
                assert (await reader.read_response())[2] == b"re:abc"


# -- the audit: every malformed request answered at once -------------------------------------

H = b"POST /pkix/ HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        # chunked framing
        pytest.param(CHUNKED + b"\r\n3\nabc\n0\n\n", 400, id="bare LF in chunk framing"),
        pytest.param(CHUNKED + b"\r\n1;" + b"e" * 5000, 400, id="chunk-size line too long"),
        pytest.param(CHUNKED + b"\r\n1;a\x00b\r\nx\r\n0\r\n\r\n", 400, id="control char in extension"),
        pytest.param(CHUNKED + b"\r\n0x3\r\nabc\r\n0\r\n\r\n", 400, id="0x chunk size"),
        pytest.param(CHUNKED + b"\r\n-3\r\nabc\r\n0\r\n\r\n", 400, id="negative chunk size"),
        pytest.param(CHUNKED + b"\r\n 3\r\nabc\r\n0\r\n\r\n", 400, id="space before chunk size"),
        pytest.param(CHUNKED + b"\r\n3\r\nabcXY0\r\n\r\n", 400, id="no CRLF after chunk data"),
        pytest.param(CHUNKED + b"\r\n0\r\n" + b"X-T: y\r\n" * 3000, 431, id="endless trailers"),
        pytest.param(CHUNKED + b"\r\n0\r\nX: " + b"y" * 20000, 431, id="trailer line too long"),
        pytest.param(CHUNKED + b"\r\n0\r\nno colon\r\n\r\n", 400, id="bad trailer line"),
        # heads
        pytest.param(H + b"X: " + b"a" * 20000, 431, id="header line too long"),
        pytest.param(H + b"X: " + b"a" * 20000 + b"\r\n\r\n", 431, id="head too long, complete"),
        pytest.param(H + b"X: a\r\n" * 5000, 431, id="too many headers"),
        pytest.param(b"POST /pkix/\r\nHost: x\r\n", 400, id="request line without version"),
        pytest.param(b"GET /\r\n", 400, id="HTTP/0.9 request line"),
        pytest.param(b"POST /pkix/ HTTP/2.0\r\nHost: x\r\n\r\n", 505, id="HTTP/2.0"),
        pytest.param(b"POST /pkix/ HTTP/1.1 extra\r\nHost: x\r\n", 400, id="junk after version"),
        pytest.param(b"POST /pkix/ HTTP/1.1\r\n Host: x\r\n\r\n", 400, id="obs-fold first line"),
        pytest.param(H + b"Bad Name: x\r\n", 400, id="space in a name, head not ended"),
        pytest.param(H + b"NoColon\r\n", 400, id="no colon, head not ended"),
        pytest.param(H + b"X: y\n(junk)\n", 400, id="bad name after bare LF, head not ended"),
        pytest.param(H + b"X: a\x00b\r\nContent-Length: 0\r\n\r\n", 400, id="NUL in a value"),
        pytest.param(H + b"X: a\rb: c\r\nContent-Length: 0\r\n\r\n", 400, id="bare CR"),
        pytest.param(H + b"Content-Length : 3\r\n\r\nabc", 400, id="space before colon"),
        pytest.param(b"\x00\x01\x02\x03", 400, id="binary junk"),
        # Content-Length and Transfer-Encoding (RFC 9112 §6.3)
        pytest.param(H + b"Content-Length: 3x\r\n\r\nabc", 400, id="Content-Length junk"),
        pytest.param(H + b"Content-Length: +3\r\n\r\nabc", 400, id="Content-Length sign"),
        pytest.param(H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400, id="Content-Lengths differ"),
        pytest.param(H + b"Content-Length: 3, 4\r\n\r\nabcd", 400, id="Content-Length list differs"),
        pytest.param(H + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", 400, id="5000-digit length"),
        pytest.param(H + b"Content-Length: " + b"9" * 20 + b"\r\n\r\n", 413, id="20-digit length"),
        pytest.param(CHUNKED + b"Content-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400, id="TE and CL"),
        pytest.param(
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400, id="TE in 1.0"
        ),
        pytest.param(H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, id="TE gzip"),
        pytest.param(CHUNKED + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, id="TE twice"),
    ],
)
async def test_malformed_request_is_answered_at_once_and_closed(
    data: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "fleet.http.server"):
        async with http_server(echo, **SLOW) as (port, stats):
            got, _, seconds = await answer_to(port, data)
            assert got == status
            assert seconds < 3
            await still_serves(port)
    assert stats.requests_total == 1 and stats.handler_errors == 0
    assert not caplog.records  # no traceback, no error line


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(CHUNKED + b"\r\n3\r\nabc\r\n", id="no last chunk"),
        pytest.param(CHUNKED + b"\r\n3\r\nab", id="chunk cut short"),
        pytest.param(CHUNKED + b"\r\n0\r\nX: y\r\n", id="trailers not ended"),
        pytest.param(H + b"Content-Length: 10\r\n\r\nabc", id="body cut short"),
        pytest.param(H + b"X: y", id="head cut short"),
    ],
)
async def test_request_cut_short_by_the_client_closing_is_dropped_at_once(
    data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "fleet.http.server"):
        async with http_server(echo, **SLOW) as (port, stats):
            got, _, seconds = await answer_to(port, data, half_close=True)
            assert got is None and seconds < 3
            await still_serves(port)
    assert stats.requests_total == 1
    assert not caplog.records


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", id="equal Content-Lengths"),
        pytest.param(H + b"X: a\r\n b\r\nContent-Length: 3\r\n\r\nabc", id="obs-fold (unfolded)"),
        pytest.param(b"\r\n" + H + b"Content-Length: 3\r\n\r\nabc", id="empty line before request"),
        pytest.param(b"POST /pkix/ HTTP/1.2\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", id="HTTP/1.2"),
        pytest.param(H + b"X: caf\xe9\r\nContent-Length: 3\r\n\r\nabc", id="obs-text value"),
    ],
)
async def test_tolerated_request_shapes_are_served(data: bytes) -> None:
    async with http_server(echo, **SLOW) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(data)
                status, _, body, line = await reader.read_response()
    assert (status, body) == (200, b"re:abc")
    assert line.startswith(b"HTTP/1.1 ")
