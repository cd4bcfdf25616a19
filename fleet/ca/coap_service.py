"""The CA's CMP over CoAP (RFC 9482) front: one UDP socket beside the HTTP one.

The sans-I/O ``fleet.coap.server.CoapServer`` does the CoAP (duplicates, blocks, separate
responses); each whole request goes to the same ``CaService`` the HTTP front uses (same CMP
servers, knobs, records, durability rule and metrics), so a CA serves both at once and an
enrollment started over one could be finished over the other. A request the service does not
answer within ``separate_after`` seconds gets an empty ACK and a separate response later.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import cast

import trio

from fleet.ca.service import CMP_TYPE, CaService, route
from fleet.coap.message import Code
from fleet.coap.server import CoapServer, Incoming, ServerLimits
from fleet.coap.timing import CoapTiming
from fleet.http.server import HttpRequest

__all__ = ["CoapFront", "serve_coap"]

log = logging.getLogger(__name__)

_CMP_HEADERS = [(b"content-type", CMP_TYPE.encode())]
_PKIXCMP = 259


@dataclass
class CoapFront:
    """The running front: its CoAP state (``coap.stats``) and the bound port."""

    coap: CoapServer
    port: int = 0
    in_flight: int = 0


async def serve_coap(
    service: CaService,
    host: str,
    port: int,
    *,
    timing: CoapTiming | None = None,
    limits: ServerLimits | None = None,
    separate_after: float = 1.0,
    max_in_flight: int = 10_000,
    task_status: trio.TaskStatus[CoapFront] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve CMP over CoAP on ``host:port`` (UDP) until cancelled; ``task_status.started``
    gets the ``CoapFront`` (its ``port`` is the bound one)."""
    infos = await trio.socket.getaddrinfo(host or None, port, type=socket.SOCK_DGRAM,
                                          flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = trio.socket.socket(family, kind, proto)
    with sock:
        await sock.bind(address)
        front = CoapFront(CoapServer(timing=timing, limits=limits), sock.getsockname()[1])
        waiting: dict[int, tuple[Incoming, float]] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_timers, front, sock, waiting, separate_after)
            task_status.started(front)
            while True:
                try:
                    data, peer = await sock.recvfrom(65536)
                except OSError:  # an ICMP error for an earlier send: nothing to do
                    continue
                out, incoming = front.coap.receive(data, peer, trio.current_time())
                await _send(sock, out)
                if incoming is None:
                    continue
                if front.in_flight >= max_in_flight:
                    front.coap.stats["busy"] += 1
                    await _send(sock, front.coap.respond(
                        incoming, Code.SERVICE_UNAVAILABLE, b"busy", trio.current_time(),
                        content_format=None))
                    continue
                front.in_flight += 1
                nursery.start_soon(_answer, service, front, sock, incoming, waiting)


async def _answer(
    service: CaService, front: CoapFront, sock: trio.socket.SocketType, request: Incoming,
    waiting: dict[int, tuple[Incoming, float]],
) -> None:
    key = id(request)
    waiting[key] = (request, trio.current_time())
    try:
        code, payload, fmt = await _cmp(service, request)
    except Exception:
        log.exception("CoAP request failed inside the CA")
        code, payload, fmt = Code.INTERNAL_SERVER_ERROR, b"internal error", None
    finally:
        waiting.pop(key, None)
        front.in_flight -= 1
    if code is None:  # the drop knob: no answer at all
        return
    await _send(sock, front.coap.respond(request, code, payload, trio.current_time(),
                                         content_format=fmt))


async def _cmp(service: CaService, request: Incoming) -> tuple[int | None, bytes, int | None]:
    """(CoAP code, payload, Content-Format) for one whole request (RFC 9482 §2, §3)."""
    path = "/" + "/".join(request.path)
    kind, _ = route(path)
    if kind != "cmp":
        return Code.NOT_FOUND, b"not found (CMP is at /.well-known/cmp[/p/<name>])", None
    if request.code != Code.POST:
        return Code.METHOD_NOT_ALLOWED, b"CMP takes POST", None
    if request.content_format != _PKIXCMP:
        return Code.UNSUPPORTED_CONTENT_FORMAT, b"Content-Format must be application/pkixcmp (259)", None
    response = await service.handle(
        HttpRequest("POST", path, _CMP_HEADERS, request.payload, str(request.peer))
    )
    if response.drop_connection:
        return None, b"", None
    # HTTP's 400 for a body that is not DER (RFC 9811) still carries a CMP error message: over
    # CoAP the CMP answer goes back as one, whatever it says (RFC 9482 §2.3).
    if response.status == 200 or (response.status == 400 and response.body[:1] == b"\x30"):
        return Code.CHANGED, response.body, _PKIXCMP
    if response.status == 503:
        return Code.SERVICE_UNAVAILABLE, response.body[:100], None
    if response.status == 413:
        return Code.REQUEST_ENTITY_TOO_LARGE, response.body[:100], None
    return Code.INTERNAL_SERVER_ERROR, response.body[:100], None


async def _timers(
    front: CoapFront, sock: trio.socket.SocketType, waiting: dict[int, tuple[Incoming, float]],
    separate_after: float,
) -> None:
    """Retransmit separate responses; empty-ACK requests the service is slow to answer."""
    coap = front.coap
    step = max(0.01, min(separate_after / 2, coap.timing.ack_timeout / 4))
    while True:
        now = trio.current_time()
        await _send(sock, coap.poll(now))
        for request, since in list(waiting.values()):
            if now - since >= separate_after:
                await _send(sock, coap.acknowledge(request))
        await trio.sleep(step)


async def _send(sock: trio.socket.SocketType, out: list[tuple[bytes, object]]) -> None:
    for datagram, peer in out:
        try:  # every peer is an address sock.recvfrom returned (the CoAP layer keeps it opaque)
            await sock.sendto(datagram, cast("tuple[object, ...]", peer))
        except OSError as exc:  # a peer gone away must not stop the others
            log.debug("CoAP send to %s failed: %s", peer, exc)

