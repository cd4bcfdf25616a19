"""HTTP/1.1 server for the embedded CMP CA: trio streams, a strict fast path, h11 for the rest.

A request whose head is in a narrow, plainly valid shape (request line ``TOKEN SP target SP
HTTP/1.1|1.0``, token header names, values without control characters, at most one
Content-Length of digits, one Host, no Transfer-Encoding, Expect or obs-fold) is framed here
(``_parse_head``); h11 on every request cost a large share of the CA's CPU. Any other complete head
(Transfer-Encoding, 100-continue, obs-fold, bare-LF line ends, malformed ones) goes to a fresh h11
parser, so hostile heads meet h11's checks and errors, plus the smuggling rules h11 leaves to its
user (RFC 9112 §6.1, §6.3: Transfer-Encoding with Content-Length or in HTTP/1.0 is refused).
Bodies are read here: Content-Length, or chunked with ``wire.ChunkedDecoder``, which checks each
declared chunk size against the limit before its data arrives. Responses are written here
(always a complete body with Content-Length). That also lets the server keep HTTP/1.0 clients
that ask for ``Connection: keep-alive`` open, which OpenSSL 3.0's ``openssl cmp`` does and h11
alone refuses.

Every malformed request is answered (4xx, then close) as soon as it is known to be malformed,
not when a deadline passes: a TLS ClientHello on a plain port gets a 400 at its first byte (a TLS
client then reports a non-TLS answer at once, e.g. OpenSSL's "wrong version number"), a plain
HTTP request on a TLS port a 400 in plain HTTP saying to use https://.

Defences: heads capped at 16 KiB (431), bodies at ``max_body_bytes`` (413 without reading it
all); a connection's first request head must be complete within ``header_timeout`` of the
accept, a later one within ``header_timeout`` of its first byte; a whole request must arrive
within ``request_timeout`` of its first byte (slowloris); idle keep-alive connections close after
``idle_timeout``; a response must be taken by the client within ``request_timeout``; connections
beyond ``max_connections`` are closed as soon as accepted.
A connection's deadline is a plain number that one reaper task per server checks every tick
(1/8 of the shortest timeout, 10 ms to 1 s) and enforces by cancelling the connection's scope: a
trio deadline moved three or four times per request cost more. Timeouts therefore fire
up to one tick late.
"""

from __future__ import annotations

import errno
import logging
import math
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from functools import lru_cache
from http import HTTPStatus
from typing import Protocol

import trio

from fleet.http.wire import ChunkedDecoder, WireError, hopeless_request_head, parse_request_head_h11
from fleet.records import record
from fleet.tls import send_alert

__all__ = ["Handler", "HttpObserver", "HttpRequest", "HttpResponse", "HttpServerStats", "observed", "serve_http"]

log = logging.getLogger(__name__)

_RECEIVE_SIZE = 65536
_MAX_HEADER_BYTES = 16384
# After an error answer, read (and drop) at most this much for at most this long before closing,
# so that the client sees the answer instead of a reset caused by its unread upload.
_LINGER_BYTES = 1 << 20
_LINGER_SECONDS = 1.0
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@record
class HttpRequest:
    """One complete request. ``path`` is the raw request target (not normalised or decoded);
    header names are lower-case, values as sent."""

    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    peer: str
    http_version: str = "1.1"

    def header(self, name: bytes) -> bytes | None:
        """First value of header ``name`` (lower-case bytes), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@record
class HttpResponse:
    """What a handler answers.

    ``drop_connection=True`` closes the socket without answering (simulates a dropped
    connection); ``close=True`` answers and then closes the connection.
    """

    status: int
    body: bytes = b""
    content_type: str = "application/pkixcmp"
    headers: tuple[tuple[str, str], ...] = ()
    drop_connection: bool = False
    close: bool = False


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class HttpObserver(Protocol):
    """What a service tells its metrics about each HTTP request (the CA's and the RA's)."""

    def http_started(self) -> None: ...

    def http_done(self) -> None: ...

    def response(self, code: int | str) -> None: ...


async def observed(observer: HttpObserver | None, respond: Handler, request: HttpRequest) -> HttpResponse:
    """``respond(request)``, counted in flight and by its status (or "dropped") when observed."""
    if observer is None:
        return await respond(request)
    observer.http_started()
    try:
        response = await respond(request)
    finally:
        observer.http_done()
    observer.response("dropped" if response.drop_connection else response.status)
    return response

_INTERNAL_ERROR = HttpResponse(500, b"internal server error\n", content_type="text/plain")
# OPTIONS * asks about the server itself (RFC 9110 §9.3.7): clients' reachability probes send it.
_OPTIONS_ANSWER = HttpResponse(204, content_type="text/plain", headers=(("Allow", "GET, POST, OPTIONS"),))


@dataclass(slots=True)
class HttpServerStats:
    """Live counters of one server; pass one to ``serve_http`` to read them (metrics, tests)."""

    connections_open: int = 0
    connections_total: int = 0
    connections_rejected: int = 0
    requests_total: int = 0
    handler_errors: int = 0
    tls_failures: int = 0  # TLS handshakes refused or broken by TLS errors (a client certificate refused...)


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    *,
    max_body_bytes: int = 1_000_000,
    idle_timeout: float = 30.0,
    request_timeout: float = 30.0,
    header_timeout: float = 10.0,
    max_connections: int = 10_000,
    ssl_context: ssl.SSLContext | None = None,
    stats: HttpServerStats | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``host``:``port`` until cancelled.

    ``task_status.started()`` reports the bound port (the real one when ``port`` is 0). ``host``
    may be an IPv4 or IPv6 address ("::" listens on IPv6 only) or a name; when a name resolves
    to several addresses and ``port`` is 0, all listeners share the first one's port.
    With ``ssl_context`` (server side, certificate loaded) the server speaks HTTPS.
    ``header_timeout`` bounds each request head (from the accept for a connection's first);
    ``idle_timeout`` the wait for the next request on a keep-alive connection;
    ``request_timeout`` a whole request from its first byte, and the client's taking of the
    response.
    """
    listeners = await _open_listeners(host, port)
    bound = listeners[0].socket.getsockname()[1]
    server = _Server(
        handler,
        max_body_bytes=max_body_bytes,
        idle_timeout=idle_timeout,
        request_timeout=request_timeout,
        header_timeout=header_timeout,
        max_connections=max_connections,
        stats=stats if stats is not None else HttpServerStats(),
    )
    wrapped: list[trio.abc.Listener[trio.abc.Stream]] = [
        trio.SSLListener(listener, ssl_context, https_compatible=True) if ssl_context else listener
        for listener in listeners
    ]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.reap)
            for listener in wrapped:
                nursery.start_soon(server.accept_loop, listener, nursery)
            task_status.started(bound)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


async def _open_listeners(host: str | None, port: int) -> list[trio.SocketListener]:
    """Listeners on every address of ``host``; with port 0, all on the first one's port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    if port != 0 or len(listeners) == 1:
        return listeners
    bound = listeners[0].socket.getsockname()[1]
    others = [listener.socket.getsockname()[0] for listener in listeners[1:]]
    for extra in listeners[1:]:
        await extra.aclose()
    rebound = [listeners[0]]
    try:
        for address in others:
            rebound += await trio.open_tcp_listeners(bound, host=address)
    except BaseException:
        for listener in rebound:
            await trio.aclose_forcefully(listener)
        raise
    return rebound


class _Server:
    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        idle_timeout: float,
        request_timeout: float,
        header_timeout: float,
        max_connections: int,
        stats: HttpServerStats,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.head_timeout = min(header_timeout, request_timeout)  # a head is part of a request
        self.max_connections = max_connections
        self.stats = stats
        self.connections: set[_Connection] = set()
        self.tick = min(max(min(idle_timeout, self.head_timeout) / 8, 0.01), 1.0)

    async def reap(self) -> None:
        """Cancel every connection whose deadline has passed, once per tick, until cancelled."""
        while True:
            await trio.sleep(self.tick)
            now = trio.current_time()
            for conn in self.connections:  # no await in here: the set cannot change meanwhile
                if conn.deadline <= now:
                    conn.scope.cancel()

    async def accept_loop(
        self, listener: trio.abc.Listener[trio.abc.Stream], nursery: trio.Nursery
    ) -> None:
        stats = self.stats
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY_ERRNOS:
                    log.warning("accept failed (%s); retrying in 0.1 s", exc.strerror)
                    await trio.sleep(0.1)
                    continue
                raise
            if stats.connections_open >= self.max_connections:
                stats.connections_rejected += 1
                await trio.aclose_forcefully(stream)
                continue
            stats.connections_open += 1
            stats.connections_total += 1
            nursery.start_soon(self.serve_connection, stream)

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        conn: _Connection | None = None
        first = True
        try:
            conn = _Connection(stream, _peer(stream))
            conn.deadline = trio.current_time() + self.head_timeout
            self.connections.add(conn)
            # The reaper cancels this scope once conn.deadline passes; none while the handler runs.
            with conn.scope:
                while True:
                    request = await self._read_request(conn, first)
                    first = False
                    if request is None:
                        return
                    self.stats.requests_total += 1
                    if conn.scope.cancel_called:
                        return  # the deadline passed as the request completed: too late
                    conn.deadline = math.inf
                    if request.path == "*" and request.method == "OPTIONS":
                        response = _OPTIONS_ANSWER  # the server answers, the handler never sees it
                    else:
                        response = await self._call_handler(request)
                    if response.drop_connection:
                        return
                    keep_alive = not response.close and _wants_keep_alive(request)
                    try:
                        data = _render(response, keep_alive, request.http_version == "1.0")
                    except (ValueError, UnicodeError) as exc:
                        self.stats.handler_errors += 1
                        log.error(
                            "handler answered %s %s with an invalid response: %s",
                            request.method,
                            request.path[:200],
                            exc,
                        )
                        data = _render(_INTERNAL_ERROR, keep_alive, request.http_version == "1.0")
                    conn.deadline = trio.current_time() + self.request_timeout
                    await conn.send(data)
                    if not keep_alive:
                        return
        except trio.BrokenResourceError as exc:
            if first and isinstance(stream, trio.SSLStream):
                if _is_plain_http(exc):
                    await _answer_plain_http_on_tls(stream)
                else:  # e.g. no or a bad client certificate: the client is told by an alert
                    if isinstance(exc.__cause__, ssl.SSLError):
                        self.stats.tls_failures += 1
                    await send_alert(stream)
        except (trio.ClosedResourceError, OSError):
            pass  # the client went away; nothing to answer
        except Exception:
            # A bug here must cost one connection, not the whole server.
            log.exception("HTTP connection failed unexpectedly")
        finally:
            if conn is not None:
                self.connections.discard(conn)
            self.stats.connections_open -= 1
            await trio.aclose_forcefully(stream)

    async def _read_request(self, conn: _Connection, first: bool) -> HttpRequest | None:
        """The next complete request, or None when the connection should close.

        Sets ``conn.deadline``: the first request's head must be complete within
        ``header_timeout`` of the accept (``serve_connection`` sets that); a later one may wait
        ``idle_timeout`` for its first byte, then has ``header_timeout`` for its head; a whole
        request must arrive within ``request_timeout`` of its first byte. A head that can no
        longer become a valid request (a TLS ClientHello, a bad request line) is answered as
        soon as that shows, not when the deadline passes.
        """
        buf = conn.buf
        if not buf:
            if conn.eof:
                return None
            if not first:
                conn.deadline = trio.current_time() + self.idle_timeout
            # The usual case: one receive holds exactly one whole request, read from those
            # bytes without copying them through the buffer.
            data = await conn.receive()
            if not data:
                conn.eof = True
                return None  # closed between requests
            # (TLS streams may hand out bytearrays: those take the general loop.)
            request = self._whole_request(data, conn.peer) if type(data) is bytes else None
            if request is not None:
                return request
            buf += data
        started = trio.current_time()
        if not first:
            conn.deadline = started + self.head_timeout
        scanned = checked = 0  # how far ``buf`` was searched for the head's end / checked
        while True:
            if buf[:1] in _CRLF_STARTS:  # RFC 9112 §2.2: ignore empty lines before a request
                del buf[: len(buf) - len(buf.lstrip(b"\r\n"))]
            end = buf.find(b"\r\n\r\n", max(scanned - 3, 0))
            if end >= 0:
                head_size = end
                break
            if buf:
                refusal, checked = hopeless_request_head(buf, checked, conn.sock is not None)
                if refusal is not None:
                    await self._refuse(conn, *refusal)
                    return None
                # A head ended by a bare LF: h11 reads it.
                blank = _BLANK_LINE_RE.search(buf, max(scanned - 2, 0))
                if blank is not None:
                    head_size = blank.start()
                    break
                if len(buf) > _MAX_HEADER_BYTES:
                    await self._refuse(conn, 431)
                    return None
            if conn.eof:
                return None  # closed in the middle of a head
            scanned = len(buf)
            data = await conn.receive()
            if not data:
                conn.eof = True
            buf += data
        if head_size > _MAX_HEADER_BYTES:
            await self._refuse(conn, 431)
            return None
        head = _parse_head(bytes(buf[:end])) if end >= 0 else None
        if head is not None:
            method, target, version, headers, length = head
            chunked = expects_100 = False
            del buf[: end + 4]
        else:
            parsed = parse_request_head_h11(buf)
            if isinstance(parsed, int):
                await self._refuse(conn, parsed)
                return None
            method, target, version, headers, length, chunked, expects_100 = parsed
        if length > self.max_body_bytes:
            await self._refuse(conn, 413)
            return None
        conn.deadline = started + self.request_timeout
        if expects_100:
            await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await (self._read_chunked(conn) if chunked else self._read_exact(conn, length))
        if body is None:
            return None
        return HttpRequest(
            method=method,
            path=target,
            headers=headers,
            body=body,
            peer=conn.peer,
            http_version=version,
        )

    def _whole_request(self, data: bytes, peer: str) -> HttpRequest | None:
        """``data`` as one request in the fast path's shape with nothing after it, else None
        (the general loop then reads it, with the same result for a request that is whole)."""
        end = data.find(b"\r\n\r\n")
        if end < 0 or end > _MAX_HEADER_BYTES:
            return None
        head = _parse_head(data[:end])
        if head is None:
            return None
        method, target, version, headers, length = head
        if length > self.max_body_bytes or len(data) != end + 4 + length:
            return None
        return HttpRequest(method, target, headers, data[end + 4 :], peer, version)

    async def _read_exact(self, conn: _Connection, length: int) -> bytes | None:
        """The next ``length`` bytes of the connection, or None if it closes first."""
        buf = conn.buf
        while len(buf) < length:
            if conn.eof:
                return None  # closed in the middle of the body
            data = await conn.receive()
            if not data:
                conn.eof = True
            buf += data
        body = bytes(buf[:length])
        del buf[:length]
        return body

    async def _read_chunked(self, conn: _Connection) -> bytes | None:
        """A chunked body (RFC 9112 §7.1), or None when it is refused or the connection closes
        first. Declared chunk sizes count against ``max_body_bytes`` before their data comes."""
        buf = conn.buf
        decoder = ChunkedDecoder(self.max_body_bytes)
        try:
            rest = decoder.feed(buf)
            buf.clear()
            while not decoder.done:
                if conn.eof:
                    return None  # closed before the last chunk
                data = await conn.receive()
                if not data:
                    conn.eof = True
                rest = decoder.feed(data)
        except WireError as exc:
            await self._refuse(conn, exc.status)
            return None
        except OverflowError:
            await self._refuse(conn, 413)
            return None
        buf += rest
        return decoder.body()

    async def _refuse(self, conn: _Connection, status: int, text: bytes = b"") -> None:
        """Answer an unusable request with an error (``text`` as a plain-text body), then linger
        briefly (the caller closes); the connection's deadline bounds both."""
        stream = conn.stream
        conn.deadline = trio.current_time() + min(self.request_timeout, _LINGER_SECONDS)
        response = HttpResponse(status, text, content_type="text/plain" if text else "")
        await stream.send_all(_render(response, False, False))
        await _linger(stream)

    async def _call_handler(self, request: HttpRequest) -> HttpResponse:
        try:
            response = await self.handler(request)
            if not isinstance(response, HttpResponse):
                raise TypeError(f"handler returned {type(response).__name__}, not HttpResponse")
            return response
        except Exception as exc:
            self.stats.handler_errors += 1
            # The message names the request, never its body; the traceback is for the developer.
            log.exception(
                "handler failed on %s %s from %s: %s",
                request.method,
                request.path[:200],
                request.peer,
                type(exc).__name__,
            )
            return _INTERNAL_ERROR


class _Connection:
    """Per-connection state: bytes received but not yet consumed, whether the peer closed, and
    the deadline the reaper enforces.

    On a plain TCP connection the request/response I/O goes to the socket itself
    (``receive``/``send``): trio's stream methods try a ``recv`` that fails with EAGAIN before
    every wait (the next request never follows a response that fast) and make a full scheduler
    round trip after every successful ``send``, which together cost CPU on every request. A
    response is sent with one non-blocking ``send``; only what the socket buffer refuses goes
    through trio's ``send_all``. TLS streams and anything else use the stream methods.
    """

    __slots__ = ("buf", "deadline", "eof", "peer", "scope", "sock", "stream")

    def __init__(self, stream: trio.abc.Stream, peer: str) -> None:
        self.stream = stream
        self.peer = peer
        self.buf = bytearray()
        self.eof = False
        self.scope = trio.CancelScope()
        self.deadline = math.inf  # trio.current_time() after which the reaper cancels ``scope``
        self.sock = _raw_socket(stream)

    async def receive(self) -> bytes | bytearray:
        """Some bytes, b"" at EOF; waits for readability first (see the class doc)."""
        sock = self.sock
        if sock is None:
            return await self.stream.receive_some(_RECEIVE_SIZE)
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(_RECEIVE_SIZE)
            except BlockingIOError:
                continue  # a spurious wake-up
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from None

    async def send(self, data: bytes) -> None:
        """All of ``data``: one non-blocking send, the rest through the stream."""
        sock = self.sock
        if sock is None:
            await self.stream.send_all(data)
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from None
        if sent < len(data):
            await self.stream.send_all(memoryview(data)[sent:])


def _raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The stdlib socket under a plain ``trio.SocketStream`` (trio keeps it as ``_sock``; any
    other shape, TLS included, gets None and the stream methods)."""
    if type(stream) is not trio.SocketStream:
        return None
    raw = getattr(stream.socket, "_sock", None)
    return raw if isinstance(raw, socket.socket) else None


_PLAIN_ON_TLS_PORT = b"this server speaks TLS: use https://, not http://\n"
_PLAIN_HTTP_REASONS = ("HTTP_REQUEST", "HTTPS_PROXY_REQUEST")  # OpenSSL's, on a TLS port
_CRLF_STARTS = (b"\r", b"\n")
_BLANK_LINE_RE = re.compile(rb"\n\r?\n")  # the end of a head as h11 finds it (bare LF allowed)


async def _linger(stream: trio.abc.Stream) -> None:
    """After an error answer: half-close, then read and drop what the client still sends (at
    most ``_LINGER_BYTES``), so that it sees the answer instead of a reset caused by its unread
    upload. The caller bounds the time."""
    if isinstance(stream, trio.SocketStream):
        await stream.send_eof()
    drained = 0
    while drained < _LINGER_BYTES:
        data = await stream.receive_some(_RECEIVE_SIZE)
        if not data:
            break
        drained += len(data)


def _is_plain_http(exc: BaseException) -> bool:
    """Whether a TLS handshake failed because the client sent plain HTTP (OpenSSL says so)."""
    cause = exc.__cause__
    return isinstance(cause, ssl.SSLError) and cause.reason in _PLAIN_HTTP_REASONS


async def _answer_plain_http_on_tls(stream: trio.SSLStream[trio.abc.Stream]) -> None:
    """Tell a plain-HTTP client on the TLS port, in plain HTTP, to use https:// (as nginx and
    Go do) rather than just closing: its user then sees why. Bounded; errors are the client's."""
    response = HttpResponse(400, _PLAIN_ON_TLS_PORT, content_type="text/plain")
    with trio.move_on_after(_LINGER_SECONDS):
        try:
            await stream.transport_stream.send_all(_render(response, False, False))
            await _linger(stream.transport_stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


_TOKEN_RE = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_TARGET_RE = re.compile(rb"[\x21-\x7e]+")
# Control characters other than HTAB (and DEL) anywhere in a head line: not the fast path's shape.
_CTL_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}
# Headers whose semantics the fast path leaves to h11 (body framing, interim responses).
_H11_HEADERS = frozenset({b"transfer-encoding", b"expect"})
_CACHED_HEAD_BYTES = 1024  # heads up to this size are cached (1,024 of them: a few MB at worst)
_Head = tuple[str, str, str, tuple[tuple[bytes, bytes], ...], int]


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[bytes, bytes]], int] | None:
    """(method, target, version, headers, Content-Length) of a request head in the strict shape
    the fast path serves, or None to let h11 judge it. Never raises.

    Only requests h11 would accept with the same meaning pass; for everything else (errors
    included) h11 decides, so error statuses and edge cases are h11's. Clients send the same
    few heads over and over, so results for short heads are cached (bounded).
    """
    parsed = (
        _parse_head_cached(head) if len(head) <= _CACHED_HEAD_BYTES else _parse_head_uncached(head)
    )
    if parsed is None:
        return None
    method, target, version, headers, length = parsed
    return method, target, version, list(headers), length


def _parse_head_uncached(head: bytes) -> _Head | None:
    """``_parse_head`` without the cache, headers as a tuple (cached values must not change)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return None
    method, target, version_text = parts
    version = _VERSIONS.get(version_text)
    if (
        version is None
        or _TOKEN_RE.fullmatch(method) is None
        or method == b"CONNECT"
        or _TARGET_RE.fullmatch(target) is None
    ):
        return None
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    hosts = 0
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or _TOKEN_RE.fullmatch(name) is None or _CTL_RE.search(value) is not None:
            return None  # also catches obs-fold (a line starting with SP/HTAB: not a token)
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 15:
                return None
            length = int(value)
        elif name == b"host":
            hosts += 1
        elif name in _H11_HEADERS:
            return None
        headers.append((name, value))
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        return None
    return method.decode("ascii"), target.decode("ascii"), version, tuple(headers), length or 0


_parse_head_cached = lru_cache(maxsize=1024)(_parse_head_uncached)


def _wants_keep_alive(request: HttpRequest) -> bool:
    tokens: set[bytes] | None = None
    for name, value in request.headers:
        if name == b"connection":
            if tokens is None:
                tokens = set()
            tokens.update(token.strip().lower() for token in value.split(b","))
    if tokens is None:  # the usual request: no Connection header
        return request.http_version == "1.1"
    if request.http_version == "1.1":
        return b"close" not in tokens
    return b"keep-alive" in tokens and b"close" not in tokens


_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


def _render(response: HttpResponse, keep_alive: bool, http10: bool) -> bytes:
    """Serialise a whole response; always HTTP/1.1 with Content-Length (no chunking).

    Everything but the Date and the length is the same for every response of a kind, so those
    parts are put together once per kind (``_head_parts``)."""
    body = response.body
    status = response.status
    if body and not response.headers:  # the usual answer: parts by a short key
        parts = _plain_heads.get((status, response.content_type, keep_alive, http10))
        if parts is not None:
            return b"".join((parts[0], _http_date(), parts[1], b"%d" % len(body), parts[2], body))
    bodyless = status < 200 or status in (204, 304)
    key = (status, response.content_type if body else "", response.headers, keep_alive, http10, bodyless)
    try:
        before_date, before_length, tail = _head_parts(*key)
    except TypeError:  # unhashable headers (a list): the same parts, not cached
        before_date, before_length, tail = _head_parts.__wrapped__(*key)
    if bodyless:
        return b"".join((before_date, _http_date(), tail))
    if body and not response.headers and len(_plain_heads) < 64:
        _plain_heads[(status, response.content_type, keep_alive, http10)] = (before_date, before_length, tail)
    return b"".join((before_date, _http_date(), before_length, b"%d" % len(body), tail, body))


# ``_head_parts`` of answers with a body and no extra headers, by (status, content type,
# keep-alive, HTTP/1.0): found without the lru_cache's six-part key (bounded: the first 64).
_plain_heads: dict[tuple[int, str, bool, bool], tuple[bytes, bytes, bytes]] = {}


@lru_cache(maxsize=256)
def _head_parts(
    status: int, content_type: str, headers: tuple[tuple[str, str], ...], keep_alive: bool, http10: bool,
    bodyless: bool,
) -> tuple[bytes, bytes, bytes]:
    """(status line up to the Date value, what follows the Date up to the Content-Length value,
    the rest of the head with its blank line). Raises ValueError for an invalid status or header
    (never cached: lru_cache keeps only results)."""
    if not 100 <= status <= 999:
        raise ValueError(f"invalid HTTP status {status}")
    before_date = b"HTTP/1.1 %d %s\r\nDate: " % (status, _REASONS.get(status, b"Unknown"))
    lines = [b""]
    if not bodyless:
        if content_type:
            lines.append(b"Content-Type: " + _header_value(content_type))
        lines.append(b"Content-Length: ")
    before_length = b"\r\n".join(lines)
    rest = [b""]
    for name, value in headers:
        rest.append(_header_name(name) + b": " + _header_value(value))
    if not keep_alive:
        rest.append(b"Connection: close")
    elif http10:
        rest.append(b"Connection: keep-alive")
    rest.append(b"")
    rest.append(b"")
    if bodyless:
        return before_date, b"", before_length + b"\r\n".join(rest)
    return before_date, before_length, b"\r\n".join(rest)


_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


def _header_name(name: str) -> bytes:
    raw = name.encode("ascii")
    if not raw or not _TOKEN_CHARS.issuperset(raw):
        raise ValueError(f"invalid header name {name!r}")
    return raw


def _header_value(value: str) -> bytes:
    raw = value.encode("latin-1")
    if b"\r" in raw or b"\n" in raw or b"\0" in raw:
        raise ValueError("header value contains CR, LF or NUL")
    return raw


def _peer(stream: trio.abc.Stream) -> str:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return "?"
    address = stream.socket.getpeername()
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)
