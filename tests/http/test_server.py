"""fleet's HTTP server, driven with raw sockets to check exactly what goes over the wire."""

from __future__ import annotations

import logging

import h11
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from loopback_servers import RawReader, http_server

from fleet.http import HttpRequest, HttpResponse, serve_http
from fleet.http.server import _parse_head


async def echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(200, b"re:" + request.body)


def post(
    body: bytes, *, version: bytes = b"1.1", path: bytes = b"/pkix/", extra: bytes = b""
) -> bytes:
    return (
        b"POST %s HTTP/%s\r\nHost: 127.0.0.1\r\nContent-Type: application/pkixcmp\r\n"
        b"Content-Length: %d\r\n%s\r\n" % (path, version, len(body), extra)
    ) + body


async def connect(port: int) -> tuple[trio.SocketStream, RawReader]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    return stream, RawReader(stream)


async def test_started_reports_the_bound_port_and_serves() -> None:
    async with http_server(echo) as (port, _):
        assert port > 0
        stream, reader = await connect(port)
        async with stream:
            await stream.send_all(post(b"hello"))
            _, headers, body, line = await reader.read_response()
    assert line.startswith(b"HTTP/1.1 200")
    assert body == b"re:hello"
    assert headers[b"content-type"] == b"application/pkixcmp"
    assert headers[b"content-length"] == b"8"
    assert b"date" in headers
    assert b"connection" not in headers


async def test_http10_keep_alive_like_openssl_stays_open() -> None:
    """OpenSSL 3.0's `openssl cmp` sends HTTP/1.0 with Connection: keep-alive."""
    async with http_server(echo) as (port, stats):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                for i in range(2):
                    await stream.send_all(
                        post(b"req%d" % i, version=b"1.0", extra=b"Connection: keep-alive\r\n")
                    )
                    _, headers, body, line = await reader.read_response()
                    assert line.startswith(b"HTTP/1.1 200")
                    assert headers[b"connection"].lower() == b"keep-alive"
                    assert body == b"re:req%d" % i
    assert stats.connections_total == 1 and stats.requests_total == 2


async def test_http10_without_keep_alive_is_closed_after_the_answer() -> None:
    async with http_server(echo) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(post(b"x", version=b"1.0"))
                status, headers, body, _ = await reader.read_response()
                assert (status, body) == (200, b"re:x")
                assert headers[b"connection"] == b"close"
                assert await reader.at_eof()


async def test_connection_close_is_honoured() -> None:
    async with http_server(echo) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(post(b"x", extra=b"Connection: close\r\n"))
                status, headers, _, _ = await reader.read_response()
                assert status == 200 and headers[b"connection"] == b"close"
                assert await reader.at_eof()


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with http_server(echo) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(post(b"one") + post(b"two") + post(b"three"))
                bodies = [(await reader.read_response())[2] for _ in range(3)]
    assert bodies == [b"re:one", b"re:two", b"re:three"]


async def test_raw_path_reaches_the_handler_unchanged() -> None:
    paths: list[str] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        paths.append(request.path)
        return HttpResponse(404, content_type="")

    async with http_server(handler) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            await stream.send_all(
                post(b"x", path=b"/.Well-Known/CMP/p/a%2Fb/../initialization?q=1")
            )
            status, headers, body, _ = await reader.read_response()
    assert paths == ["/.Well-Known/CMP/p/a%2Fb/../initialization?q=1"]
    assert status == 404 and body == b"" and b"content-type" not in headers


async def test_large_declared_body_gets_413_without_being_read() -> None:
    calls = 0

    async def handler(request: HttpRequest) -> HttpResponse:
        nonlocal calls
        calls += 1
        return HttpResponse(200, b"")

    async with http_server(handler, max_body_bytes=1000) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                head = post(b"")[: -len(b"Content-Length: 0\r\n\r\n")]
                await stream.send_all(head + b"Content-Length: 50000000\r\n\r\n" + b"x" * 5000)
                status, headers, _, _ = await reader.read_response()
                assert status == 413 and headers[b"connection"] == b"close"
                assert await reader.at_eof()
    assert calls == 0


async def test_large_chunked_body_gets_413() -> None:
    async with http_server(echo, max_body_bytes=1000) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(
                    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"200\r\n"
                    + b"y" * 0x200
                    + b"\r\n"
                    + b"200\r\n"
                    + b"y" * 0x200
                    + b"\r\n"
                )
                status, _, _, _ = await reader.read_response()
                assert status == 413
                assert await reader.at_eof()


@pytest.mark.parametrize(
    "garbage",
    [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"\x16\x03\x01\x02\x00",
    ],
)
async def test_malformed_request_gets_400_and_close(garbage: bytes) -> None:
    async with http_server(echo) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(garbage + b"\r\n\r\n")
                status, _, _, _ = await reader.read_response()
                assert status == 400
                assert await reader.at_eof()


async def test_oversized_headers_are_refused() -> None:
    async with http_server(echo) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 40000)
                status, _, _, _ = await reader.read_response()
                assert status == 431


async def test_handler_exception_gives_500_and_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        if request.body == b"boom":
            raise RuntimeError("handler bug")
        return HttpResponse(200, b"fine")

    async with http_server(handler) as (port, stats):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5), caplog.at_level(logging.ERROR, "fleet.http.server"):
                await stream.send_all(post(b"boom"))
                status, headers, _, _ = await reader.read_response()
                assert status == 500 and headers[b"content-type"] == b"text/plain"
                await stream.send_all(post(b"ok"))  # same connection still served
                assert (await reader.read_response())[:1] == (200,)
    assert stats.handler_errors == 1
    assert "RuntimeError" in caplog.text and "boom" not in caplog.text


async def test_invalid_response_from_handler_gives_500() -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, b"x", headers=(("X-Evil", "a\r\nSet-Cookie: b"),))

    async with http_server(handler) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(post(b"x"))
                status, headers, _, _ = await reader.read_response()
    assert status == 500 and b"set-cookie" not in headers


async def test_drop_connection_closes_without_answer() -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(503, drop_connection=True)

    async with http_server(handler) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(post(b"x"))
                assert await reader.at_eof()


async def test_close_flag_answers_then_closes() -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, b"bye", close=True)

    async with http_server(handler) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(post(b"x"))
                _, headers, body, _ = await reader.read_response()
                assert body == b"bye" and headers[b"connection"] == b"close"
                assert await reader.at_eof()


async def test_expect_100_continue_gets_interim_answer() -> None:
    async with http_server(echo) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(
                    b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 4\r\n\r\n"
                )
                assert (await reader.read_head()).startswith(b"HTTP/1.1 100")
                await stream.send_all(b"body")
                assert (await reader.read_response())[2] == b"re:body"


async def closed_by_peer(reader: RawReader) -> bool:
    try:
        return await reader.at_eof()
    except trio.BrokenResourceError:  # reset because our unread bytes were still queued
        return True


async def test_slowloris_request_is_cut_off() -> None:
    """Bytes keep coming, but the request is not complete within request_timeout: closed."""
    async with http_server(echo, request_timeout=0.3, idle_timeout=10) as (port, stats):
        stream, reader = await connect(port)
        async with stream:

            async def dribble() -> None:
                try:
                    for byte in post(b"x" * 100):
                        await stream.send_all(bytes([byte]))
                        await trio.sleep(0.05)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            start = trio.current_time()
            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(dribble)
                    assert await closed_by_peer(reader)
                    nursery.cancel_scope.cancel()
            assert 0.25 < trio.current_time() - start < 1.5
    assert stats.requests_total == 0


async def test_idle_keep_alive_connection_is_closed() -> None:
    async with http_server(echo, idle_timeout=0.2) as (port, stats):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(post(b"x"))
                await reader.read_response()
                start = trio.current_time()
                assert await reader.at_eof()
                assert 0.15 < trio.current_time() - start < 1.5
        with trio.fail_after(5):
            while stats.connections_open:
                await trio.sleep(0.01)


async def test_connections_over_the_limit_are_closed_at_once() -> None:
    async with http_server(echo, max_connections=2) as (port, stats):
        held = [await connect(port) for _ in range(2)]
        with trio.fail_after(5):
            for stream, reader in held:  # both are served
                await stream.send_all(post(b"x"))
                await reader.read_response()
            stream, reader = await connect(port)
            async with stream:
                try:
                    await stream.send_all(post(b"x"))
                except trio.BrokenResourceError:
                    pass
                with pytest.raises((EOFError, trio.BrokenResourceError)):
                    await reader.read_response()
        assert stats.connections_rejected == 1
        for stream, _ in held:
            await stream.aclose()


async def test_ipv6_any_address_port_zero() -> None:
    async with trio.open_nursery() as nursery:
        try:
            port = await nursery.start(serve_http, echo, "::1", 0)
        except OSError:
            pytest.skip("no IPv6 loopback")
        stream = await trio.open_tcp_stream("::1", port)
        async with stream:
            await stream.send_all(post(b"6"))
            assert (await RawReader(stream).read_response())[2] == b"re:6"
        nursery.cancel_scope.cancel()


# -- the fast request path and its hand-over to h11 ------------------------------------------

_HEAD_PIECES = st.sampled_from(
    [
        b"Host: x",
        b"host:x",
        b"HOST:  a b  ",
        b"Content-Length: 5",
        b"content-length:0005",
        b"Content-Length: 5, 5",
        b"Content-Length: -1",
        b"Content-Length: 1e3",
        b"Content-Length:",
        b"Transfer-Encoding: chunked",
        b"Expect: 100-continue",
        b"Connection: keep-alive, close",
        b" folded",
        b"\tfolded",
        b"X: a\x00b",
        b"X: a\x01b",
        b"X: a\x7fb",
        b"X: caf\xc3\xa9",
        b"X: a\tb",
        b"X : a",
        b"X\x00: a",
        b"(bad): a",
        b"X: a\rb",
        b"X: a\nb",
        b"Y;",
        b"",
        b"Upgrade: h2c",
        b"X-Empty:",
        b"X: \t ",
    ]
)
_REQUEST_LINES = st.sampled_from(
    [
        b"POST /pkix/ HTTP/1.1",
        b"GET /crl/issuing.crl HTTP/1.0",
        b"POST  /pkix/ HTTP/1.1",
        b"POST /pkix/ HTTP/1.1 ",
        b"POST /a\x7f HTTP/1.1",
        b"POST /\xc3\xa9 HTTP/1.1",
        b"POST /pkix/ HTTP/2.0",
        b"POST /pkix/ http/1.1",
        b"P@ST / HTTP/1.1",
        b"CONNECT x:1 HTTP/1.1",
        b"POST * HTTP/1.1",
        b"\r\nPOST / HTTP/1.1",
        b"POST /pkix/ HTTP/1.1\n",
    ]
)


def _h11_parse(head: bytes) -> tuple[str, str, str, list[tuple[bytes, bytes]], int] | None:
    """What h11 makes of a whole head (followed by CRLF CRLF), or None if it refuses it."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head + b"\r\n\r\n")
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    headers = list(event.headers)
    lengths = [int(v) for n, v in headers if n == b"content-length"]
    return (
        event.method.decode(),
        event.target.decode("ascii", "replace"),
        event.http_version.decode(),
        headers,
        lengths[0] if lengths else 0,
    )


@settings(max_examples=400, deadline=None)
@given(_REQUEST_LINES, st.lists(_HEAD_PIECES, max_size=6))
def test_fast_head_parser_accepts_only_what_h11_reads_the_same(
    line: bytes, fields: list[bytes]
) -> None:
    head = b"\r\n".join([line, *fields])
    fast = _parse_head(head)
    if fast is not None:
        assert fast == _h11_parse(head)


def test_fast_head_parser_reads_a_cmp_post() -> None:
    head = post(b"")[:-4].replace(b"Content-Length: 0", b"Content-Length: 510")
    assert _parse_head(head) == (
        "POST",
        "/pkix/",
        "1.1",
        [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/pkixcmp"),
            (b"content-length", b"510"),
        ],
        510,
    )


def test_cached_head_results_are_not_shared() -> None:
    head = post(b"")[:-4]
    first = _parse_head(head)
    assert first is not None
    first[3].clear()  # a handler may change its request's header list
    again = _parse_head(head)
    assert again is not None and again[3] == [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/pkixcmp"),
        (b"content-length", b"0"),
    ]
    long_head = head + b"\r\nX-Pad: " + b"p" * 2000  # past the cached size: same answer
    assert _parse_head(long_head) == _parse_head(long_head) is not None


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\n",  # no Host in HTTP/1.1
        b"POST / HTTP/1.1\r\nHost: x\r\nHost: y\r\nContent-Length: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nBad Name: a\r\nContent-Length: 1\r\n\r\n",
    ],
)
async def test_heads_outside_the_fast_path_get_h11s_400(head: bytes) -> None:
    async with http_server(echo) as (port, stats):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(head + b"x")
                assert (await reader.read_response())[0] == 400
                assert await reader.at_eof()
    assert stats.requests_total == 0


async def test_keep_alive_mixes_fast_and_h11_requests_in_order() -> None:
    """A chunked request in the middle of a pipelined keep-alive connection goes through h11;
    the bytes it leaves over are served by the fast path again."""
    chunked = (
        b"POST /pkix/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\ntwo\r\n0\r\n\r\n"
    )
    expect = (  # an interim 100, and an obs-folded header h11 unfolds
        b"POST /pkix/ HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nX: a\r\n b\r\n"
        b"Content-Length: 5\r\n\r\nthree"
    )
    async with http_server(echo) as (port, stats):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(post(b"one") + chunked + expect + post(b"four"))
                bodies = []
                for _ in range(4):
                    head_or_response = await reader.read_response()
                    if head_or_response[0] == 100:
                        head_or_response = await reader.read_response()
                    bodies.append(head_or_response[2])
    assert bodies == [b"re:one", b"re:two", b"re:three", b"re:four"]
    assert stats.connections_total == 1


async def test_request_arriving_one_byte_at_a_time_is_served() -> None:
    async with http_server(echo, request_timeout=5) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                for byte in post(b"slow but in time"):
                    await stream.send_all(bytes([byte]))
                assert (await reader.read_response())[2] == b"re:slow but in time"


async def test_connection_closed_mid_body_is_not_served() -> None:
    async with http_server(echo) as (port, stats):
        stream, _ = await connect(port)
        with trio.fail_after(5):
            await stream.send_all(post(b"0123456789")[:-4])
            await stream.aclose()
            while stats.connections_open:
                await trio.sleep(0.01)
    assert stats.requests_total == 0


async def test_slow_handler_is_not_cut_off_by_the_request_deadlines() -> None:
    """Timeouts bound reading and sending, never the handler (the CA's latency knob sleeps)."""

    async def slow(request: HttpRequest) -> HttpResponse:
        await trio.sleep(0.5)
        return HttpResponse(200, b"late:" + request.body)

    async with http_server(slow, request_timeout=0.1, idle_timeout=0.1) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                for body in (b"a", b"b"):  # and the connection stays usable afterwards
                    await stream.send_all(post(body))
                    assert (await reader.read_response())[2] == b"late:" + body


# ---------------------------------------------------------------------------------------------
# Responses rendered from cached head parts, and the raw-socket I/O path


def _render_reference(response: HttpResponse, keep_alive: bool, http10: bool) -> bytes:
    """The response serialiser before its parts were cached, kept as the specification."""
    from fleet.http.server import _REASONS, _header_name, _header_value, _http_date

    status = response.status
    if not 100 <= status <= 999:
        raise ValueError(f"invalid HTTP status {status}")
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Unknown")), b"Date: " + _http_date()]
    body = response.body
    if status < 200 or status in (204, 304):
        body = b""
    else:
        if response.content_type and body:
            lines.append(b"Content-Type: " + _header_value(response.content_type))
        lines.append(b"Content-Length: %d" % len(body))
    for name, value in response.headers:
        lines.append(_header_name(name) + b": " + _header_value(value))
    if not keep_alive:
        lines.append(b"Connection: close")
    elif http10:
        lines.append(b"Connection: keep-alive")
    lines.append(b"")
    lines.append(body)
    return b"\r\n".join(lines)


_HEADER_NAMES = st.sampled_from(["Allow", "Retry-After", "X-Odd", "", "Bad Name", "é"])
_HEADER_VALUES = st.sampled_from(["POST", "1", "", "a\r\nb", "nul\0", "café", "✓"])


@settings(max_examples=400, deadline=None)
@given(
    status=st.sampled_from([100, 101, 200, 204, 304, 400, 404, 413, 500, 503, 599, 99, 1000, 0]),
    body=st.sampled_from([b"", b"x", b"\x30\x03\x02\x01\x02" * 50]),
    content_type=st.sampled_from(["application/pkixcmp", "", "text/plain; charset=utf-8", "bad\r\n"]),
    headers=st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=2),
    as_list=st.booleans(),
    keep_alive=st.booleans(),
    http10=st.booleans(),
)
def test_render_from_cached_parts_matches_the_reference(
    status: int, body: bytes, content_type: str, headers: list[tuple[str, str]], as_list: bool,
    keep_alive: bool, http10: bool,
) -> None:
    from fleet.http.server import _render

    response = HttpResponse(status, body, content_type, headers if as_list else tuple(headers))  # type: ignore[arg-type]
    try:
        expected: bytes | type[Exception] = _render_reference(response, keep_alive, http10)
    except (ValueError, UnicodeError) as exc:
        expected = type(exc)
    if isinstance(expected, bytes):
        assert _render(response, keep_alive, http10) == expected
        assert _render(response, keep_alive, http10) == expected  # again, from the cache
    else:
        with pytest.raises(expected):
            _render(response, keep_alive, http10)


async def test_plain_tcp_connections_use_the_raw_socket_path() -> None:
    """The raw-socket path is what serves plain TCP (trio still keeps its socket where the
    server looks for it); a response larger than the socket buffer still arrives whole."""
    from fleet.http.server import _raw_socket

    big = bytes(range(256)) * 40_000  # 10 MB: more than one non-blocking send takes

    async def large(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, big if request.body == b"big" else b"small")

    async with http_server(large) as (port, _):
        stream, reader = await connect(port)
        assert _raw_socket(stream) is not None
        async with stream:
            with trio.fail_after(20):
                for body in (b"big", b"x", b"big"):
                    await stream.send_all(post(body))
                    _, headers, received, _ = await reader.read_response()
                    assert received == (big if body == b"big" else b"small")
                    assert headers[b"content-length"] == str(len(received)).encode()


async def test_options_asterisk_is_answered_by_the_server_not_the_handler() -> None:
    """Reachability probes send OPTIONS * (RFC 9110 §9.3.7): 204 with Allow, the handler (a CA,
    its request counts) never called; the connection stays usable."""
    seen: list[str] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        seen.append(request.method)
        return await echo(request)

    async with http_server(handler) as (port, _):
        stream, reader = await connect(port)
        async with stream:
            with trio.fail_after(5):
                await stream.send_all(b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                _, headers, body, line = await reader.read_response()
                assert line.startswith(b"HTTP/1.1 204") and body == b""
                assert headers[b"allow"] == b"GET, POST, OPTIONS"
                await stream.send_all(post(b"after"))
                _, _, body, _ = await reader.read_response()
    assert body == b"re:after" and seen == ["POST"]
