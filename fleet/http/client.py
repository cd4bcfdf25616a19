"""CMP over HTTP (RFC 9811, RFC 9483 §6.1) client: trio streams with a keep-alive pool.

One ``CmpHttpClient`` per CA URL is shared by every task that talks to that CA (tens of thousands
of virtual devices, a CLI transaction, a provisioning batch). It is a ``fleet.transport.CmpTransport``:
``fleet.exchange.run_transaction`` drives transactions over it. It keeps at most ``max_connections``
sockets; tasks wait for a free connection in FIFO order rather than opening more, so the fleet
never exhausts file descriptors or ephemeral ports.

CMP requests are not idempotent, so a request is re-sent only in the one case where the server
cannot have seen it: a reused keep-alive connection that turns out dead before any response byte
arrived (the server closed it while it was idle). Even then it is re-sent once, on a fresh
connection.

httpx costs many times more client CPU per request, and h11 alone still a large share of a
device's enrollment (``bench/http_client_cpu.py``, figures in bench/README.md); this module writes
its one request shape itself and frames responses with ``fleet.http.wire`` (status line, headers,
Content-Length, chunked, close-delimited).
"""

from __future__ import annotations

import functools
import re
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self
from urllib.parse import quote, urlsplit

import trio

from fleet import __version__
from fleet.http.errors import (
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    HttpStatusError,
    InvalidUrl,
    ProtocolError,
    ReadTimeout,
    ResponseTooLarge,
)
from fleet.http.proxy import choose_proxy, tunnel
from fleet.http.wire import MAX_HEAD_BYTES, ChunkedDecoder, WireError, parse_head
from fleet.records import record
from fleet.tls import alert_problem, options_probe

if TYPE_CHECKING:
    from fleet.transport import CmpTransport

__all__ = [
    "CMP_CONTENT_TYPE",
    "CMP_OPERATIONS",
    "CmpHttpClient",
    "CmpHttpResponse",
    "PoolStatistics",
    "cmp_path",
    "default_ssl_context",
]

CMP_CONTENT_TYPE = "application/pkixcmp"

#: Operation path segments of RFC 9483 §6.1 (a CA may define others; ``cmp_path`` accepts them).
CMP_OPERATIONS = frozenset(
    {
        "initialization",
        "certification",
        "keyupdate",
        "pkcs10",
        "revocation",
        "getcacerts",
        "getrootupdate",
        "getcertreqtemplate",
        "getcrls",
    }
)

_RECEIVE_SIZE = 65536
# Request heads kept per (path, body length): CMP messages of one run have few distinct sizes.
_REQUEST_CACHE_SIZE = 256
# Body of a non-CMP answer (an error page) read to keep the connection; larger ones close it.
_ERROR_BODY_LIMIT = 65536
_CMP_MEDIA_TYPE = b"application/pkixcmp"
# A connection idle for less than this is reused without checking it first: a server rarely
# closes one that fast, and a request on a connection it did close is re-sent (see above).
_FRESH_IDLE = 0.05
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+")


@record
class CmpHttpResponse:
    """A CMP body as the server sent it, with the HTTP status (2xx, 4xx or 5xx)."""

    status: int
    content_type: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """Point-in-time state of a client's connection pool, for metrics and tests; ``requests``,
    ``waited`` and ``wait_seconds`` count since the client was made."""

    open_connections: int
    idle_connections: int
    tasks_waiting: int
    max_connections: int
    requests: int = 0
    waited: int = 0  # requests that found every connection busy and queued for one
    wait_seconds: float = 0.0  # their time in that queue, summed


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """The verifying client context for https URLs without one; made once (loading the
    system's CA certificates is slow)."""
    return ssl.create_default_context()


def cmp_path(base_path: str, *, profile: str | None = None, operation: str | None = None) -> str:
    """Append RFC 9483 §6.1 segments to ``base_path``: ``<base>[/p/<profile>][/<operation>]``.

    ``cmp_path("/.well-known/cmp", profile="tls", operation="initialization")`` gives
    ``/.well-known/cmp/p/tls/initialization``. With neither, ``base_path`` is returned unchanged
    (so ``/pkix/`` keeps its trailing slash, as OpenSSL's mock server wants).
    """
    path = base_path or "/"
    if not path.startswith("/"):
        raise ValueError(f"base path must start with '/': {base_path!r}")
    segments = []
    if profile is not None:
        segments += ["p", _segment(profile, "profile")]
    if operation is not None:
        segments.append(_segment(operation, "operation"))
    if not segments:
        return path
    return path.rstrip("/") + "/" + "/".join(segments)


def _segment(value: str, what: str) -> str:
    encoded = quote(value, safe="")
    if not value or value in (".", "..") or not _SEGMENT.fullmatch(encoded):
        raise ValueError(f"invalid CMP {what} path segment: {value!r}")
    return encoded


class _Conn:
    """One pooled connection: the stream (TLS) or, for plain TCP, the socket itself.

    Plain connections skip trio's stream layers: a request is one ``send`` and usually one
    ``recv`` after a single yield, where ``SocketStream`` yields after each call and wraps each
    in context managers (a measurable share of the client's CPU per request: bench/enroll_cpu.py).
    """

    __slots__ = ("idle_since", "plain", "raw", "sock", "stream")

    def __init__(self, stream: trio.abc.Stream, sock: trio.socket.SocketType, raw: socket.socket, plain: bool) -> None:
        self.stream = stream
        self.sock = sock
        self.raw = raw  # the same socket as ``sock``, as the non-blocking stdlib object
        self.plain = plain
        self.idle_since = 0.0


class _Timeout(Exception):
    """A plain connection's request passed its deadline while waiting on the socket."""


class _StaleConnection(Exception):
    """A reused connection died before any response byte: the server never saw the request."""


class CmpHttpClient:
    """POST CMP messages to one CA URL over a bounded pool of keep-alive connections.

    Timeouts: ``connect_timeout`` bounds TCP connect plus TLS handshake; ``request_timeout``
    (or ``post(timeout=...)``) bounds sending the request and receiving the whole response;
    ``post(deadline=...)`` bounds the whole call, waiting for a free pooled connection included.
    """

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 100,
        request_timeout: float = 30.0,
        max_response_bytes: int = 8 * 2**20,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        keep_alive: bool = True,
        proxy: str | None = None,
    ) -> None:
        """``proxy``: an http:// proxy URL, ``""`` for none; None reads HTTPS_PROXY, HTTP_PROXY
        and NO_PROXY (``fleet.http.proxy``)."""
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise InvalidUrl(f"CA URL must be http:// or https://, got scheme {parts.scheme!r}")
        if parts.username is not None or parts.password is not None:
            raise InvalidUrl("CA URL must not contain credentials (user:password@)")
        try:
            port = parts.port
        except ValueError:
            raise InvalidUrl(f"CA URL has an invalid port: {url}") from None
        host = parts.hostname
        if not host:
            raise InvalidUrl(f"CA URL has no host: {url}")
        tls = scheme == "https"
        if port is None:
            port = 443 if tls else 80
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            target = path.encode("ascii")
            host_bytes = host.encode("idna") if not host.isascii() else host.encode("ascii")
        except UnicodeError:
            raise InvalidUrl(f"CA URL must be ASCII (percent-encode the path): {url}") from None

        self.url = f"{scheme}://{parts.netloc}{parts.path}" + (
            f"?{parts.query}" if parts.query else ""
        )
        self.base_path = parts.path or "/"
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.max_response_bytes = max_response_bytes
        self.keep_alive = keep_alive
        self._tls = tls
        self._ssl_context = ssl_context if ssl_context is not None or not tls else None
        self._target = target
        host_header = b"[" + host_bytes + b"]" if b":" in host_bytes else host_bytes
        if port != (443 if tls else 80):
            host_header += b":%d" % port
        self._headers: list[tuple[bytes, bytes]] = [
            (b"Host", host_header),
            (b"User-Agent", b"fleet/" + __version__.encode()),
            (b"Content-Type", _CMP_MEDIA_TYPE),
        ]
        if not keep_alive:
            self._headers.append((b"Connection", b"close"))
        self.proxy = choose_proxy(scheme, host, port, proxy)
        if self.proxy is not None and not tls:
            # RFC 9112 §3.2.2: absolute-form to a proxy; the request never leaves it unchanged
            self._origin = f"http://{host_header.decode('ascii')}".encode("ascii")
            if self.proxy.authorization is not None:
                self._headers.append((b"Proxy-Authorization", self.proxy.authorization))
        else:
            self._origin = b""
        self._idle: deque[_Conn] = deque()
        self._slots = trio.Semaphore(max_connections)  # FIFO: trio's ParkingLot hands off in order
        self._open = 0
        self._requests = 0
        self._waited = 0
        self._wait_time = 0.0
        self._closed = False
        self._request_cache: dict[tuple[bytes, int], bytes] = {}

    def __repr__(self) -> str:
        return f"<CmpHttpClient {self.url} open={self._open}/{self.max_connections}>"

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            open_connections=self._open,
            idle_connections=len(self._idle),
            tasks_waiting=self._slots.statistics().tasks_waiting,
            max_connections=self.max_connections,
            requests=self._requests,
            waited=self._waited,
            wait_seconds=self._wait_time,
        )

    def counters(self) -> dict[str, int]:
        """``statistics()`` as a load run's integer counters, summed over workers and shards:
        requests, how many queued for a free connection and for how long in all (µs), the pool's size."""
        s = self.statistics()
        return {"requests": s.requests, "pool_waits": s.waited, "pool_wait_us": round(s.wait_seconds * 1e6),
                "max_connections": s.max_connections}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close idle connections now; connections in use close when their request ends."""
        self._closed = True
        while self._idle:
            self._discard(self._idle.pop())
        await trio.lowlevel.checkpoint()

    async def post(
        self,
        body: bytes,
        *,
        path: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> CmpHttpResponse:
        """POST one DER-encoded PKIMessage; return the CMP response or raise a TransportError.

        ``path`` replaces the URL's path (see ``cmp_path``); ``timeout`` replaces
        ``request_timeout`` for this request. ``deadline`` (trio's clock) bounds the whole call,
        waiting for a connection slot and connecting included: a transaction's deadline, applied
        at each blocking wait, so the usual request takes no cancel scope. Past it, the call
        raises ``ReadTimeout`` (or ``ConnectTimeout`` while connecting).
        """
        if self._closed:
            raise trio.ClosedResourceError("CmpHttpClient is closed")
        if path is None:
            target = self._target
        else:
            if not path.startswith("/"):
                raise ValueError(f"request path must start with '/': {path!r}")
            try:
                target = path.encode("ascii")
            except UnicodeEncodeError:
                raise ValueError(
                    f"request path must be ASCII (percent-encoded): {path!r}"
                ) from None
        request = self._request_event(target, len(body))
        if timeout is None:
            timeout = self.request_timeout
        slots = self._slots
        self._requests += 1
        try:
            # Fast path without a scheduler round trip; the semaphore only has a free slot when
            # nobody is queued (release hands slots to waiters directly), so FIFO order holds.
            slots.acquire_nowait()
        except trio.WouldBlock:
            self._waited += 1
            queued = trio.current_time()
            try:
                if deadline is None:
                    await slots.acquire()
                else:
                    with trio.move_on_at(deadline) as scope:
                        await slots.acquire()
                    if scope.cancelled_caught:  # not acquired: trio's acquire is cancel-safe
                        raise ReadTimeout(
                            self.url, f"no free connection to {self._where()} before the deadline"
                        )
            finally:
                self._wait_time += trio.current_time() - queued
        try:
            if self._closed:
                raise trio.ClosedResourceError("CmpHttpClient was closed while waiting")
            request_deadline = trio.current_time() + timeout
            if deadline is not None and deadline < request_deadline:
                request_deadline = deadline
            conn = self._take_idle()
            if conn is not None:
                try:
                    return await self._exchange(conn, request, body, request_deadline, timeout, True)
                except _StaleConnection:
                    pass  # the server closed it while idle: it never saw this request
            conn = await self._connect(deadline)
            return await self._exchange(conn, request, body, request_deadline, timeout, False)
        finally:
            slots.release()

    def _request_event(self, target: bytes, length: int) -> bytes:
        """The request head for this target and body length, built once per pair."""
        key = (target, length)
        head = self._request_cache.get(key)
        if head is None:
            if not target or any(c <= 0x20 or c >= 0x7F for c in target):
                raise ValueError(f"invalid request path: {target!r}")
            if len(self._request_cache) >= _REQUEST_CACHE_SIZE:
                self._request_cache.clear()
            lines = [b"POST " + self._origin + target + b" HTTP/1.1"]
            lines += [name + b": " + value for name, value in self._headers]
            lines.append(b"Content-Length: %d" % length)
            head = b"\r\n".join(lines) + b"\r\n\r\n"
            self._request_cache[key] = head
        return head

    def _take_idle(self) -> _Conn | None:
        """Most recently used idle connection that does not look closed by the server."""
        idle = self._idle
        now = trio.current_time()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < _FRESH_IDLE:
                return conn  # just answered on: not worth a system call (a stale one is retried)
            # An idle keep-alive socket has nothing to read; if it has, the server sent EOF (or
            # junk, or a TLS close_notify): drop it before sending, which avoids most
            # stale-connection retries. One non-blocking peek at the TCP bytes tells.
            try:
                conn.raw.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                return conn
            except OSError:
                pass
            self._discard(conn)
        return None

    def _discard(self, conn: _Conn) -> None:
        """Close a connection at once (no TLS close_notify: the peer is https_compatible)."""
        if conn.sock.fileno() != -1:
            self._open -= 1
            conn.sock.close()

    async def probe(self, deadline: float | None = None) -> None:
        """Open one connection (TCP, and TLS for https) and close it: whether the CA can be
        reached at all, before a run or by ``fleet doctor``. Over TLS it sends ``OPTIONS *``
        and reads the first bytes of the answer, since under TLS 1.3 a server refuses a client
        certificate only after the client's handshake completed. Raises ``ConnectError``
        (kind ``tls`` for a failed handshake or a refused client certificate) or
        ``ConnectTimeout``."""
        conn = await self._connect(deadline)
        try:
            if self._tls:
                problem = None
                with trio.move_on_at(deadline if deadline is not None else trio.current_time() + self.connect_timeout):
                    problem = await options_probe(conn.stream, self._headers[0][1])
                if problem is not None:
                    raise ConnectError(self.url, problem, kind="tls")
        finally:
            self._open -= 1
            conn.sock.close()

    async def _connect(self, deadline: float | None = None) -> _Conn:
        stream: trio.abc.Stream | None = None
        connect_deadline = trio.current_time() + self.connect_timeout
        if deadline is not None and deadline < connect_deadline:
            connect_deadline = deadline
        with trio.move_on_at(connect_deadline):
            proxy = self.proxy
            try:
                if proxy is None:
                    tcp, raw = await _open_tcp(self.host, self.port)
                else:
                    tcp, raw = await _open_tcp(proxy.host, proxy.port)
            except OSError as exc:
                where = self._where() if proxy is None else proxy.label
                raise ConnectError(self.url, f"cannot connect to {where}: {_why(exc)}") from None
            try:
                if proxy is not None and self._tls:
                    await tunnel(tcp, proxy, self.host, self.port, self.url)
                if self._tls:
                    ctx = self._ssl_context or default_ssl_context()
                    stream = trio.SSLStream(
                        tcp, ctx, server_hostname=self.host, https_compatible=True
                    )
                    await stream.do_handshake()
                else:
                    stream = tcp
            except trio.BrokenResourceError as exc:
                tcp.socket.close()
                problem = _handshake_failure(exc, self._where())
                raise ConnectError(self.url, problem, kind="tls") from None
            except BaseException:
                tcp.socket.close()
                raise
            self._open += 1
            return _Conn(stream, tcp.socket, raw, not self._tls)
        raise ConnectTimeout(
            self.url, f"no connection to {self._where()} within {self.connect_timeout:g} s"
        )

    async def _exchange(
        self,
        conn: _Conn,
        request: bytes,
        body: bytes,
        deadline: float,
        timeout: float,
        reused: bool,
    ) -> CmpHttpResponse:
        """One request/response on ``conn`` by ``deadline``; returns the connection to the pool
        or closes it. ``timeout`` is only for the message."""
        stream = conn.stream
        raw = conn.raw if conn.plain else None
        pooled = False
        got_bytes = False

        async def receive() -> bytes | bytearray:
            """trio's receive_some may give a bytearray (the ABC, SSLStream); every consumer
            below only concatenates or joins, which makes bytes again."""
            nonlocal got_bytes
            chunk: bytes | bytearray
            try:
                if raw is not None:
                    # One yield (a checkpoint, and time for the server to answer), then read;
                    # wait for readability only when nothing has arrived yet.
                    await trio.lowlevel.checkpoint()
                    while True:
                        try:
                            chunk = raw.recv(_RECEIVE_SIZE)
                            break
                        except BlockingIOError:
                            with trio.move_on_at(deadline) as scope:
                                await trio.lowlevel.wait_readable(raw)
                            if scope.cancelled_caught:
                                raise _Timeout from None
                else:
                    chunk = await stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                alert = alert_problem(exc)  # TLS 1.3: a refused client certificate shows here
                if alert is not None:
                    raise ConnectError(self.url, alert, kind="tls") from None
                if reused and not got_bytes:
                    raise _StaleConnection from None
                raise ConnectionLost(
                    self.url, f"connection broken while reading the response: {_why(exc)}"
                ) from None
            if chunk:
                got_bytes = True
            elif reused and not got_bytes:
                raise _StaleConnection
            return chunk

        async def transfer() -> CmpHttpResponse:
            nonlocal pooled
            try:
                if raw is not None:
                    await _send_all(raw, request + body, deadline)
                else:
                    await stream.send_all(request + body)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                if reused:
                    raise _StaleConnection from None
                raise ConnectionLost(
                    self.url, f"sending the request failed: {_why(exc)}"
                ) from None

            buf = b""
            while True:  # the head; 1xx interim responses are skipped
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if buf[:1] in _TLS_RECORD_TYPES:  # an HTTP answer starts with "HTTP/"
                        raise ConnectError(self.url, _SPEAKS_TLS, kind="tls")
                    if len(buf) > MAX_HEAD_BYTES:
                        raise ProtocolError(self.url, "malformed HTTP response: head too large")
                    chunk = await receive()
                    if not chunk:
                        raise ConnectionLost(
                            self.url,
                            "server closed the connection without a response"
                            if not buf
                            else "server closed the connection before the response was complete",
                        )
                    buf += chunk
                    continue
                try:
                    head = parse_head(buf[:end])
                except WireError as exc:
                    raise ProtocolError(self.url, f"malformed HTTP response: {exc}") from None
                buf = buf[end + 4 :]
                if 100 <= head.status < 200:
                    continue
                break

            status = head.status
            content_type = head.content_type
            cmp = head.media_type == _CMP_MEDIA_TYPE and status // 100 in (2, 4, 5)
            limit = self.max_response_bytes if cmp else min(self.max_response_bytes, _ERROR_BODY_LIMIT)

            def too_large(declared: int | None = None) -> Exception:  # only on the error paths
                if not cmp:
                    return HttpStatusError(self.url, status, _str(content_type))
                return ResponseTooLarge(self.url, limit, declared)

            reusable = head.persistent
            if head.bodiless:
                data = b""
                reusable = reusable and not buf
            elif head.chunked:
                decoder = ChunkedDecoder(limit)
                try:
                    rest = decoder.feed(buf)
                    while not decoder.done:
                        chunk = await receive()
                        if not chunk:
                            raise ConnectionLost(
                                self.url,
                                "server closed the connection before the response was complete",
                            )
                        rest = decoder.feed(chunk)
                except WireError as exc:
                    raise ProtocolError(self.url, f"malformed HTTP response: {exc}") from None
                except OverflowError:
                    raise too_large() from None
                data = decoder.body()
                reusable = reusable and not rest
            elif head.content_length is not None:
                length = head.content_length
                if length > limit:
                    raise too_large(length)
                parts: list[bytes | bytearray] = [buf]
                have = len(buf)
                while have < length:
                    chunk = await receive()
                    if not chunk:
                        raise ConnectionLost(
                            self.url,
                            "server closed the connection before the response was complete",
                        )
                    parts.append(chunk)
                    have += len(chunk)
                joined = b"".join(parts) if len(parts) > 1 else buf
                data = joined[:length]
                reusable = reusable and have == length
            else:  # delimited by the server closing the connection
                parts = [buf]
                have = len(buf)
                while True:
                    if have > limit:
                        raise too_large()
                    chunk = await receive()
                    if not chunk:
                        break
                    parts.append(chunk)
                    have += len(chunk)
                data = b"".join(parts)
                reusable = False

            if reusable and self.keep_alive and not self._closed:
                conn.idle_since = trio.current_time()
                self._idle.append(conn)
                pooled = True
            if not cmp:
                if status == 400 and not self._tls and b"https" in data[:1024].lower():
                    # What nginx, Go and fleet's own server answer plain HTTP on a TLS port.
                    raise ConnectError(self.url, _SPEAKS_TLS, kind="tls")
                raise HttpStatusError(self.url, status, _str(content_type))
            return CmpHttpResponse(status, _str(content_type), data)

        try:
            if raw is not None:  # deadlines only at the (rare) blocking waits: no cancel scope
                try:
                    return await transfer()
                except _Timeout:
                    pass
            else:
                with trio.move_on_at(deadline):
                    return await transfer()
            raise ReadTimeout(
                self.url, f"no complete response from {self._where()} within {timeout:g} s"
            )
        finally:
            if not pooled:
                self._discard(conn)

    def _where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


async def _send_all(raw: socket.socket, data: bytes, deadline: float) -> None:
    """Send on a non-blocking socket; a loopback request almost always goes in one call."""
    try:
        sent = raw.send(data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return  # the receive that follows is the checkpoint
    view = memoryview(data)
    while sent < len(data):
        with trio.move_on_at(deadline) as scope:
            await trio.lowlevel.wait_writable(raw)
        if scope.cancelled_caught:
            raise _Timeout
        try:
            sent += raw.send(view[sent:])
        except BlockingIOError:
            pass


async def _open_tcp(host: str, port: int) -> tuple[trio.SocketStream, socket.socket]:
    """Connect to the first address of ``host`` that accepts, keeping the stdlib socket.

    Like ``trio.open_tcp_stream`` without happy eyeballs (one CA, tried address by address), and
    built on public API only: a stdlib socket handed to trio with ``from_stdlib_socket``.
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"no address for {host}")
    error: OSError | None = None
    for family, type_, proto, _, address in infos:
        raw = socket.socket(family, type_, proto)
        try:
            raw.setblocking(False)
            sock = trio.socket.from_stdlib_socket(raw)
            await sock.connect(address)
        except OSError as exc:
            raw.close()
            error = exc
            continue
        except BaseException:
            raw.close()
            raise
        return trio.SocketStream(sock), raw
    assert error is not None
    raise error


if TYPE_CHECKING:

    def _is_a_transport(client: CmpHttpClient) -> CmpTransport:
        """For type checkers: ``CmpHttpClient`` satisfies the ``CmpTransport`` protocol."""
        return client


_SPEAKS_TLS = "the server speaks TLS (use https:// ?)"
# First bytes of a TLS server's answer to plain HTTP: an alert (21) or handshake (22) record.
_TLS_RECORD_TYPES = (b"\x15", b"\x16")
# OpenSSL's reasons for a handshake that got bytes which are not TLS at all.
_NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL"}
)


def _handshake_failure(exc: BaseException, where: str) -> str:
    """Why a TLS handshake failed, in one line; a server that answers without TLS (a plain HTTP
    server: an HTTP error, or a close) is named as such, since https:// for http:// is the usual
    cause."""
    cause = exc.__cause__
    alert = alert_problem(exc)
    if alert is not None:
        return alert
    if isinstance(cause, ssl.SSLError) and cause.reason in _NOT_TLS_REASONS:
        return "the server does not speak TLS (use http:// ?)"
    if isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return (
            f"{where} closed the connection during the TLS handshake; "
            "the server may not speak TLS (use http:// ?)"
        )
    return f"TLS handshake with {where} failed: {_why(exc)}"


def _str(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _why(exc: BaseException) -> str:
    """The innermost OS/TLS reason of a trio error, in one line."""
    while exc.__cause__ is not None and not isinstance(exc, (OSError, ssl.SSLError)):
        exc = exc.__cause__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    return text
