"""What carries CMP messages: the ``CmpTransport`` protocol, its error family, and an in-process
transport over a ``CmpServer``.

``fleet.exchange.run_transaction`` drives a sans-I/O ``ClientTransaction`` over any transport:
CMP over HTTP (``fleet.http.client.CmpHttpClient``) today; CoAP or an RA's upstream fit the
same shape. A transport posts one DER-encoded PKIMessage and returns the response whose
``body`` is the answering PKIMessage, or raises a ``TransportError`` when no CMP response was
obtained. ``deadline`` is on trio's clock: the transport honours it at each blocking wait, so
a transaction's deadline costs no cancel scope per request.

``InProcessTransport`` answers from a ``CmpServer`` in the same process: tests and benches run
whole transactions without sockets or monkeypatching, and under trio's ``MockClock`` when the
server is given trio's clock (the default), so timing logic runs in virtual time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

import trio

from fleet.errors import FleetError
from fleet.records import record

if TYPE_CHECKING:
    from fleet.cmp.server import Outcome, Reply

__all__ = [
    "CmpResponse",
    "CmpTransport",
    "InProcessResponse",
    "InProcessTransport",
    "TransportError",
    "TransportFactory",
    "TransportTimeout",
    "trio_wall_clock",
]


def _one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace so that a peer's text can never forge extra log lines."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TransportError(FleetError):
    """No CMP response was obtained from the peer, whatever carries the messages.

    ``peer`` names where the message went (a URL without userinfo, or a name), never a message
    body. ``kind`` is a short stable label from a fixed set, used as a metrics label value;
    each transport's subclasses name theirs (``fleet.http.errors``: ``connect``, ``timeout``,
    ``http_503`` ...).
    """

    kind: str = "transport"

    def __init__(self, peer: str, problem: str, *, kind: str | None = None) -> None:
        self.peer = peer
        self.problem = _one_line(problem)
        if kind is not None:
            self.kind = kind
        super().__init__(f"{peer}: {self.problem}")


class TransportTimeout(TransportError):
    """A wait of the transport (for a connection, the peer's answer) reached its deadline.

    ``run_transaction`` turns it into ``TransactionTimeout`` when the transaction's own
    deadline has passed."""

    kind = "timeout"


class CmpResponse(Protocol):
    """What a transport returns: the answering PKIMessage, DER-encoded, as ``body``."""

    @property
    def body(self) -> bytes: ...


class CmpTransport(Protocol):
    """Posts one PKIMessage and returns the response to it.

    ``path`` selects the CA's endpoint where the transport has paths (RFC 9811 §3: every
    message of a transaction goes to the same one); a transport without paths ignores it.
    ``deadline`` (trio's clock) bounds the call; past it the transport raises a
    ``TransportTimeout``. Failures to obtain a response raise ``TransportError``; a CMP error
    message is a response, not an exception.
    """

    async def post(
        self, data: bytes, /, *, path: str | None = None, deadline: float | None = None
    ) -> CmpResponse: ...


#: Makes the transport a run uses, opened and closed around it (``async with factory() as t``).
TransportFactory = Callable[[], AbstractAsyncContextManager[CmpTransport]]


class _Handles(Protocol):
    """The server role as the in-process transport uses it (``fleet.cmp.server.CmpServer``)."""

    def handle(self, data: bytes, now: float) -> Reply: ...

    def tick(self, now: float) -> list[Outcome]: ...


def trio_wall_clock() -> Callable[[], float]:
    """A clock in seconds since the epoch that moves with trio's clock: the wall time when first
    read, then trio's time since. Under ``MockClock`` a server given it lives in virtual time
    (its messageTime, confirmWaitTime, certificate validity all follow the mock). A client
    stamps messageTime from its own clock (``ClientTransaction(now=)``, the system's by
    default), so the server's ``max_time_skew`` bounds how far virtual time may run ahead."""
    anchor: float | None = None

    def now() -> float:
        nonlocal anchor
        current = trio.current_time()
        if anchor is None:
            anchor = time.time() - current
        return anchor + current

    return now


@record
class InProcessResponse:
    """The server's answer, with what the server made of the request (for tests)."""

    body: bytes
    outcome: Outcome


class InProcessTransport:
    """A ``CmpTransport`` that hands each message to ``server.handle(data, clock())``.

    ``clock`` gives the server's ``now`` (seconds since the epoch); by default
    ``trio_wall_clock()``, so a test under ``MockClock`` drives the server's time too.
    ``latency`` delays each answer (trio's clock), bounded by the deadline as a slow peer
    would be. ``path`` is ignored: there is one server. Each post is a trio checkpoint, as a
    network round trip is, so concurrent transactions interleave.
    """

    def __init__(
        self,
        server: _Handles,
        *,
        clock: Callable[[], float] | None = None,
        latency: float = 0.0,
        name: str = "in-process CA",
    ) -> None:
        if latency < 0:
            raise ValueError(f"latency must be >= 0, got {latency}")
        self.server = server
        self.clock = clock if clock is not None else trio_wall_clock()
        self.latency = latency
        self.name = name
        self.posts = 0

    def __repr__(self) -> str:
        return f"<InProcessTransport {self.name} posts={self.posts}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def post(
        self, data: bytes, /, *, path: str | None = None, deadline: float | None = None
    ) -> InProcessResponse:
        """Answer ``data`` from the server; ``TransportTimeout`` when the answer would come
        after ``deadline``."""
        if self.latency:
            ready = trio.current_time() + self.latency
            if deadline is not None and ready > deadline:
                await trio.sleep_until(deadline)
                raise TransportTimeout(
                    self.name, f"no answer within the deadline ({self.latency:g} s latency)"
                )
            await trio.sleep_until(ready)
        else:
            await trio.lowlevel.checkpoint()
            if deadline is not None and trio.current_time() >= deadline:
                raise TransportTimeout(
                    self.name, "the deadline passed before the request was handled"
                )
        self.posts += 1
        reply = self.server.handle(data, self.clock())
        return InProcessResponse(reply.data, reply.outcome)

    def tick(self) -> list[Outcome]:
        """Run the server's expiry at its clock's now (what a CA's periodic tick does)."""
        return self.server.tick(self.clock())
