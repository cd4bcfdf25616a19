"""CMP over CoAP on trio: ``CoapTransport`` is a ``CmpTransport`` for ``coap://`` URLs.

One UDP socket carries every device of a worker: the sans-I/O ``ClientEndpoint`` tells the
exchanges apart by message ID and token, a reader task feeds it what arrives, and each
``post`` waits only for its own exchange (retransmitting on its own timer). ``loss`` and
``delay`` model a lossy constrained link on the client side: each datagram, either way, is
dropped with probability ``loss`` and held ``delay`` seconds; retransmissions and losses are
counted in ``counters()``.
"""

from __future__ import annotations

import errno
import random
import socket
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import unquote, urlsplit

import trio

from fleet.coap.client import ClientEndpoint, ClientExchange, CoapFailure
from fleet.coap.message import PKIXCMP, code_text
from fleet.coap.timing import CoapTiming
from fleet.errors import FleetError
from fleet.records import record
from fleet.transport import TransportError, TransportTimeout

__all__ = [
    "COUNTERS",
    "DEFAULT_PORT",
    "CoapError",
    "CoapResponse",
    "CoapSettings",
    "CoapTimeout",
    "CoapTransport",
    "InvalidCoapUrl",
]

DEFAULT_PORT = 5683
#: What ``counters()`` reports (a fixed set: metrics labels).
COUNTERS = ("sent", "retransmissions", "lost_out", "lost_in", "separate", "gave_up", "duplicate",
            "stray", "malformed", "socket_errors")


class InvalidCoapUrl(FleetError, ValueError):
    """The coap:// URL cannot be used (no host, a bad port, coaps://)."""


class CoapError(TransportError):
    """No CMP response over CoAP: an error code, a Reset, a broken block-wise transfer."""


class CoapTimeout(TransportTimeout):
    """No answer within MAX_RETRANSMIT retransmissions or the caller's deadline."""

    kind = "coap_timeout"


@dataclass(frozen=True)
class CoapSettings:
    """What a user may tune of a CoAP client: RFC 7252's transmission parameters, the block
    size (SZX: 2**(szx+4) bytes), and the lossy-link knobs (each way)."""

    ack_timeout: float = 2.0
    ack_random_factor: float = 1.5
    max_retransmit: int = 4
    szx: int = 6
    loss: float = 0.0
    delay: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.szx <= 6:
            raise ValueError(f"szx must be 0..6, got {self.szx}")
        if not 0 <= self.loss < 1:
            raise ValueError(f"loss must be a fraction in [0, 1), got {self.loss}")
        if not self.delay >= 0:
            raise ValueError(f"delay must be >= 0, got {self.delay}")
        self.timing()  # its own checks

    def timing(self) -> CoapTiming:
        return CoapTiming(self.ack_timeout, self.ack_random_factor, self.max_retransmit)

    def transport(self, url: str) -> CoapTransport:
        return CoapTransport(url, timing=self.timing(), szx=self.szx, loss=self.loss,
                             delay=self.delay, seed=self.seed)


@record
class CoapResponse:
    """The reassembled CMP response and how many retransmissions it took."""

    body: bytes
    code: int
    retransmissions: int


def split_url(url: str) -> tuple[str, int, str]:
    """(host, port, path) of a ``coap://`` URL; ``InvalidCoapUrl`` names what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "coaps":
        raise InvalidCoapUrl("coaps:// (CoAP over DTLS) is not supported; use coap://")
    if scheme != "coap":
        raise InvalidCoapUrl(f"CoAP URL must be coap://, got scheme {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidCoapUrl("CoAP URL must not contain credentials (user:password@)")
    try:
        port = parts.port
    except ValueError:
        raise InvalidCoapUrl(f"CoAP URL has an invalid port: {url}") from None
    if not parts.hostname:
        raise InvalidCoapUrl(f"CoAP URL has no host: {url}")
    if parts.query:
        raise InvalidCoapUrl("CoAP URL must not have a query (RFC 9482 uses the path only)")
    return parts.hostname, port or DEFAULT_PORT, parts.path or "/.well-known/cmp"


def segments(path: str) -> tuple[str, ...]:
    """Uri-Path options of ``path`` (RFC 7252 §6.4: one per segment, percent-decoded)."""
    return tuple(unquote(s) for s in path.split("/") if s)


class CoapTransport:
    """POST CMP messages to one CoAP URL from one UDP socket (use as an async context)."""

    def __init__(
        self,
        url: str,
        *,
        timing: CoapTiming | None = None,
        szx: int = 6,
        loss: float = 0.0,
        delay: float = 0.0,
        max_response_bytes: int = 1 << 20,
        seed: int | None = None,
    ) -> None:
        self.host, self.port, self.base_path = split_url(url)
        if not 0 <= loss < 1:
            raise ValueError(f"loss must be a fraction in [0, 1), got {loss}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        self.url = f"coap://{urlsplit(url).netloc}{self.base_path}"
        self.loss = loss
        self.delay = delay
        self._rng = random.Random(seed)
        self.endpoint = ClientEndpoint(timing=timing, szx=szx, max_response=max_response_bytes,
                                       rng=random.Random(self._rng.random()))
        self._sock: trio.socket.SocketType | None = None
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: object = None

    def __repr__(self) -> str:
        return f"<CoapTransport {self.url} in_flight={self.endpoint.in_flight}>"

    async def __aenter__(self) -> Self:
        try:
            infos = await trio.socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise CoapError(self.url, f"cannot resolve {self.host}: {exc.strerror}", kind="connect") from None
        family, kind, proto, _, address = infos[0]
        sock = trio.socket.socket(family, kind, proto)
        try:
            await sock.connect(address)  # only the server's datagrams reach this socket
        except OSError as exc:
            sock.close()
            raise CoapError(self.url, f"cannot reach {self.host}: {exc.strerror}", kind="connect") from None
        self._sock = sock
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._nursery.start_soon(self._reader)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._nursery is not None and self._sock is not None
        self._nursery.cancel_scope.cancel()
        try:
            # The body's own exception is not handed to the nursery (it would come out wrapped
            # in an exception group); it propagates as it is once the reader has stopped.
            await self._nursery_cm.__aexit__(None, None, None)  # type: ignore[attr-defined]
        finally:
            self._sock.close()

    def counters(self) -> dict[str, int]:
        """Requests sent (first transmissions), retransmissions, datagrams the loss knob dropped
        each way, separate responses, exchanges given up, duplicates and strays received."""
        stats = self.endpoint.stats
        return {key: stats[key] for key in COUNTERS}

    async def post(
        self, data: bytes, /, *, path: str | None = None, deadline: float | None = None
    ) -> CoapResponse:
        """POST ``data`` (Content-Format 259) to ``path`` (default the URL's) and return the
        CMP response; ``CoapTimeout`` past ``deadline`` or after the last retransmission."""
        endpoint = self.endpoint
        exchange = endpoint.start(data, segments(path or self.base_path), trio.current_time())
        event = trio.Event()
        exchange.waiter = event
        try:
            while True:
                outgoing = exchange.outgoing
                if outgoing is not None:
                    exchange.outgoing = None
                    await self._send(outgoing)
                if exchange.finished:
                    break
                wake = exchange.next_at
                if wake is None and deadline is None:  # a separate response, no caller deadline:
                    wake = trio.current_time() + endpoint.timing.exchange_lifetime  # not forever
                limit = wake if deadline is None else deadline if wake is None else min(wake, deadline)
                assert limit is not None  # wake is set just above when there is no deadline
                with trio.move_on_at(limit):
                    await event.wait()
                if event.is_set():
                    event = trio.Event()
                    exchange.waiter = event
                    continue
                now = trio.current_time()
                if deadline is not None and now >= deadline:
                    raise CoapTimeout(self.url, "no CoAP response within the deadline")
                if exchange.next_at is None:
                    raise CoapTimeout(self.url, "no separate response within EXCHANGE_LIFETIME")
                exchange.timeout(now)
        finally:
            exchange.cancel()
        return self._outcome(exchange)

    def _outcome(self, exchange: ClientExchange) -> CoapResponse:
        failure = exchange.failure
        if failure is not None:
            raise _error(self.url, failure)
        result = exchange.result
        assert result is not None
        if result.content_format != PKIXCMP:
            shown = "none" if result.content_format is None else str(result.content_format)
            raise CoapError(self.url, f"CoAP {code_text(result.code)} with Content-Format {shown}, "
                            "not application/pkixcmp (259)", kind="content_format")
        return CoapResponse(result.payload, result.code, exchange.retransmissions)

    async def _send(self, datagram: bytes) -> None:
        stats = self.endpoint.stats
        if self.loss and self._rng.random() < self.loss:
            stats["lost_out"] += 1
            return
        if self.delay:
            assert self._nursery is not None
            self._nursery.start_soon(self._send_later, datagram)
            return
        await self._send_now(datagram)

    async def _send_later(self, datagram: bytes) -> None:
        await trio.sleep(self.delay)
        await self._send_now(datagram)

    async def _send_now(self, datagram: bytes) -> None:
        assert self._sock is not None
        try:
            await self._sock.send(datagram)
        except OSError as exc:  # an earlier ICMP error surfaces here; retransmission copes
            self._note_error(exc)

    async def _reader(self) -> None:
        assert self._sock is not None
        sock = self._sock
        while True:
            try:
                data = await sock.recv(65536)
            except OSError as exc:
                self._note_error(exc)
                continue
            if self.loss and self._rng.random() < self.loss:
                self.endpoint.stats["lost_in"] += 1
                continue
            if self.delay:
                assert self._nursery is not None
                self._nursery.start_soon(self._receive_later, data)
                continue
            await self._receive(data)

    async def _receive_later(self, data: bytes) -> None:
        await trio.sleep(self.delay)
        await self._receive(data)

    async def _receive(self, data: bytes) -> None:
        replies, changed = self.endpoint.receive(data, trio.current_time())
        for exchange in changed:
            waiter = exchange.waiter
            if isinstance(waiter, trio.Event):
                waiter.set()
        for reply in replies:
            await self._send(reply)

    def _note_error(self, exc: OSError) -> None:
        self.endpoint.stats["socket_errors"] += 1
        if exc.errno == errno.ECONNREFUSED:  # ICMP port unreachable: fail what is in flight
            for exchange in self.endpoint.fail_all(
                "connect", f"nothing listens on {self.host}:{self.port} (ICMP port unreachable)"
            ):
                waiter = exchange.waiter
                if isinstance(waiter, trio.Event):
                    waiter.set()


def _error(url: str, failure: CoapFailure) -> TransportError:
    if failure.kind == "timeout":
        return CoapTimeout(url, failure.problem)
    return CoapError(url, failure.problem, kind=failure.kind)
