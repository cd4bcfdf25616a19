"""The server side of CoAP for CMP (RFC 7252, RFC 7959, RFC 9482), sans-I/O.

``CoapServer.receive(datagram, peer, now)`` answers what the CoAP layer answers alone
(duplicates, Block1 ``2.31 Continue``, Block2 follow-ups, malformed or unsupported messages)
and hands a whole request (all its Block1 blocks) to the application as an ``Incoming``. The
application answers with ``respond``, at once (piggybacked on the ACK) or, after
``acknowledge`` sent an empty ACK, later as a separate confirmable response that ``poll``
retransmits until the client acknowledges it.

Everything kept per peer is bounded in count and bytes and expires: duplicate detection
(``exchange_lifetime``), partial Block1 bodies (``block_lifetime``), finished responses kept
for Block2 follow-ups. A flood of new tokens or unfinished block transfers evicts the oldest
state; it never grows memory without bound, and other clients keep being served.

Block-wise state is keyed by (peer, Uri-Path, Request-Tag) as RFC 7959 §2.4 and RFC 9175
§3.3 say, so many devices behind one client socket can transfer at the same time when each
tags its request.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from fleet.coap.message import (
    ACK,
    CON,
    NON,
    PKIXCMP,
    RST,
    Block,
    CoapFormatError,
    Code,
    Message,
    Opt,
    decode,
    encode,
    uint_bytes,
)
from fleet.coap.timing import CoapTiming

__all__ = ["CoapServer", "Incoming", "ServerLimits"]

Peer = Hashable
Out = list[tuple[bytes, Peer]]


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Bounds on what the server keeps; the defaults hold a busy CA's working set."""

    szx: int = 6  # Block2 size of responses: 2**(szx+4) bytes
    max_body: int = 64 * 1024  # a whole request (CMP messages are a few KiB)
    max_partials: int = 10_000  # unfinished Block1 transfers
    max_partial_bytes: int = 16 * 2**20
    max_dedup: int = 50_000  # remembered (peer, message ID) answers
    max_block2: int = 10_000  # finished responses kept for Block2 follow-ups
    block_lifetime: float | None = None  # default: the timing's MAX_TRANSMIT_WAIT

    def __post_init__(self) -> None:
        if not 0 <= self.szx <= 6:
            raise ValueError(f"szx must be 0..6, got {self.szx}")


@dataclass(slots=True)
class Incoming:
    """A whole request for the application. ``path`` is the Uri-Path segments."""

    peer: Peer
    mtype: int
    mid: int
    token: bytes
    code: int
    path: tuple[str, ...]
    content_format: int | None
    payload: bytes
    key: tuple
    block1: Block | None  # the last Block1, echoed in the response
    szx: int  # Block2 size for the response
    acked: bool = False
    answered: bool = False


@dataclass(slots=True)
class _Partial:
    body: bytearray
    started: float


@dataclass(slots=True)
class _Done:
    token: bytes
    reply: bytes | None  # None while the application has not answered
    at: float


@dataclass(slots=True)
class _Pending:
    """A separate CON response waiting for the client's ACK."""

    datagram: bytes
    peer: Peer
    next_at: float
    timeout: float
    retransmits: int = 0


class CoapServer:
    """One UDP endpoint's CoAP state (any number of peers). ``stats`` counts what happened."""

    def __init__(
        self,
        *,
        timing: CoapTiming | None = None,
        limits: ServerLimits | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.timing = timing or CoapTiming()
        self.limits = limits or ServerLimits()
        self.rng = rng or random.Random()
        self.block_lifetime = self.limits.block_lifetime or self.timing.max_transmit_wait
        self._dedup: OrderedDict[tuple[Peer, int], _Done] = OrderedDict()
        self._partials: OrderedDict[tuple, _Partial] = OrderedDict()
        self._partial_bytes = 0
        self._block2: OrderedDict[tuple, tuple[bytes, bytes, float]] = OrderedDict()
        self._pending: dict[tuple[Peer, int], _Pending] = {}
        self._mid = self.rng.randrange(0x10000)
        self._etag = self.rng.randrange(1 << 32)
        self.stats: Counter[str] = Counter()

    # -- receiving ------------------------------------------------------------------------

    def receive(self, data: bytes, peer: Peer, now: float) -> tuple[Out, Incoming | None]:
        """Datagrams to send now and, when a request is complete, the request."""
        try:
            msg = decode(data)
        except CoapFormatError:
            self.stats["malformed"] += 1
            return self._reset_malformed(data, peer), None
        if msg.mtype in (ACK, RST):
            self._settle(msg, peer)
            return [], None
        if msg.code == Code.EMPTY:  # a CON ping (§4.3): answered with a Reset
            self.stats["ping"] += 1
            return [(encode(Message(RST, 0, msg.mid)), peer)], None
        if not msg.is_request:
            self.stats["unexpected"] += 1
            return ([(encode(Message(RST, 0, msg.mid)), peer)] if msg.mtype == CON else []), None
        done = self._dedup.get((peer, msg.mid))
        if done is not None and done.token == msg.token:
            self.stats["duplicate"] += 1
            if done.reply is not None:
                return [(done.reply, peer)], None
            # Still being answered: the answer (or an empty ACK from ``acknowledge``) follows.
            # An empty ACK here would make the client wait for a separate response that the
            # application is about to piggyback, and never retransmit should that one be lost.
            return [], None
        self._expire(now)
        self.stats["requests"] += 1
        try:
            return self._request(msg, peer, now)
        except CoapFormatError as exc:
            self.stats["bad_request"] += 1
            return self._answer(msg, peer, now, Code.BAD_REQUEST, str(exc).encode()[:120]), None

    def _request(self, msg: Message, peer: Peer, now: float) -> tuple[Out, Incoming | None]:
        for number, _ in msg.options:
            if number & 1 and number not in Opt.UNDERSTOOD_CRITICAL:
                self.stats["bad_option"] += 1
                return self._answer(msg, peer, now, Code.BAD_OPTION,
                                    f"critical option {number} not understood".encode()), None
        path = msg.path()
        key = (peer, path, msg.option(Opt.REQUEST_TAG))
        block2 = msg.block(Opt.BLOCK2)
        block1 = msg.block(Opt.BLOCK1)
        szx = min(self.limits.szx, block2.szx) if block2 is not None else self.limits.szx
        if block2 is not None and block2.num > 0 and block1 is None:
            return self._follow_up(msg, peer, now, key, block2), None
        payload = msg.payload
        if block1 is not None:
            out, assembled = self._block1(msg, peer, now, key, block1)
            if assembled is None:
                return out, None
            payload = assembled
        elif len(payload) > self.limits.max_body:
            return self._too_large(msg, peer, now), None
        fmt = msg.option(Opt.CONTENT_FORMAT)
        incoming = Incoming(
            peer, msg.mtype, msg.mid, msg.token, msg.code, path,
            None if fmt is None else int.from_bytes(fmt, "big"), payload, key, block1, szx,
        )
        self._dedup[(peer, msg.mid)] = _Done(msg.token, None, now)
        self._bound(self._dedup, self.limits.max_dedup)
        return [], incoming

    def _block1(
        self, msg: Message, peer: Peer, now: float, key: tuple, block: Block
    ) -> tuple[Out, bytes | None]:
        """RFC 7959 §2.3 atomic Block1: blocks in order, each but the last of full size."""
        if block.more and len(msg.payload) != block.size:
            raise CoapFormatError(
                f"Block1 {block.num} carries {len(msg.payload)} bytes, not its size {block.size}"
            )
        limit = self.limits.max_body
        if block.num == 0:
            declared = msg.uint_option(Opt.SIZE1)
            if declared is not None and declared > limit:
                return self._too_large(msg, peer, now), None
            self._drop_partial(key)
            partial = _Partial(bytearray(), now)
            self._partials[key] = partial
        else:
            found = self._partials.get(key)
            if found is None or block.offset != len(found.body):
                self.stats["incomplete"] += 1
                self._drop_partial(key)
                text = b"Block1 out of order or its transfer unknown; start again with block 0"
                return self._answer(msg, peer, now, Code.REQUEST_ENTITY_INCOMPLETE, text), None
            partial = found
            self._partials.move_to_end(key)
        if len(partial.body) + len(msg.payload) > limit:
            self._drop_partial(key)
            return self._too_large(msg, peer, now), None
        partial.body += msg.payload
        self._partial_bytes += len(msg.payload)
        if block.more:
            self._bound_partials()
            self.stats["block1_continue"] += 1
            return self._answer(msg, peer, now, Code.CONTINUE, b"",
                                [(Opt.BLOCK1, Block(block.num, True, block.szx).encode())]), None
        body = bytes(partial.body)
        self._drop_partial(key)
        return [], body

    def _follow_up(self, msg: Message, peer: Peer, now: float, key: tuple, block2: Block) -> Out:
        kept = self._block2.get(key)
        if kept is None or block2.offset >= len(kept[0]):
            self.stats["incomplete"] += 1
            return self._answer(msg, peer, now, Code.REQUEST_ENTITY_INCOMPLETE,
                                b"no response kept for this Block2 request")
        self.stats["block2_served"] += 1
        body, etag, _ = kept
        chunk, options = self._chunk(body, block2.num, block2.szx, etag)
        return self._answer(msg, peer, now, Code.CHANGED, chunk, options)

    # -- answering ------------------------------------------------------------------------

    def acknowledge(self, request: Incoming) -> Out:
        """The empty ACK that makes the response a separate one (RFC 7252 §5.2.2)."""
        if request.mtype != CON or request.acked or request.answered:
            return []
        request.acked = True
        self.stats["separate"] += 1
        ack = encode(Message(ACK, 0, request.mid))
        done = self._dedup.get((request.peer, request.mid))
        if done is not None and done.token == request.token:
            done.reply = ack
        return [(ack, request.peer)]

    def respond(
        self, request: Incoming, code: int, payload: bytes, now: float, *,
        content_format: int | None = PKIXCMP,
    ) -> Out:
        """The response to ``request``: piggybacked, or separate (CON) once acknowledged;
        a payload longer than one block is sent block-wise (Block2) and kept for follow-ups."""
        if request.answered:
            raise RuntimeError("request already answered")
        request.answered = True
        options: list[tuple[int, bytes]] = []
        if content_format is not None and payload:
            options.append((Opt.CONTENT_FORMAT, uint_bytes(content_format)))
        if request.block1 is not None:
            options.append((Opt.BLOCK1, Block(request.block1.num, False, request.block1.szx).encode()))
        size = 1 << (request.szx + 4)
        if len(payload) > size:
            etag = self._next_etag()
            self._block2[request.key] = (payload, etag, now)
            self._bound(self._block2, self.limits.max_block2)
            chunk, more = self._chunk(payload, 0, request.szx, etag)
            options += more
            payload = chunk
        if request.acked:
            mid = self._next_mid(request.peer)
            datagram = encode(Message(CON, code, mid, request.token, options, payload))
            timeout = self.timing.first_timeout(self.rng)
            self._pending[(request.peer, mid)] = _Pending(datagram, request.peer, now + timeout, timeout)
            return [(datagram, request.peer)]
        mtype = ACK if request.mtype == CON else NON
        mid = request.mid if mtype == ACK else self._next_mid(request.peer)
        datagram = encode(Message(mtype, code, mid, request.token, options, payload))
        done = self._dedup.get((request.peer, request.mid))
        if done is not None and done.token == request.token:
            done.reply = datagram
        return [(datagram, request.peer)]

    def _chunk(self, body: bytes, num: int, szx: int, etag: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
        size = 1 << (szx + 4)
        start = num * size
        chunk = body[start : start + size]
        more = start + size < len(body)
        options = [(Opt.BLOCK2, Block(num, more, szx).encode()), (Opt.ETAG, etag),
                   (Opt.CONTENT_FORMAT, uint_bytes(PKIXCMP))]
        if num == 0:
            options.append((Opt.SIZE2, uint_bytes(len(body))))
        return chunk, options

    def _answer(
        self, msg: Message, peer: Peer, now: float, code: int, payload: bytes,
        options: list[tuple[int, bytes]] | None = None,
    ) -> Out:
        """An answer the CoAP layer gives by itself, remembered for duplicates."""
        mtype = ACK if msg.mtype == CON else NON
        mid = msg.mid if mtype == ACK else self._next_mid(peer)
        datagram = encode(Message(mtype, code, mid, msg.token, options or [], payload))
        self._dedup[(peer, msg.mid)] = _Done(msg.token, datagram, now)
        self._bound(self._dedup, self.limits.max_dedup)
        return [(datagram, peer)]

    def _too_large(self, msg: Message, peer: Peer, now: float) -> Out:
        self.stats["too_large"] += 1
        limit = self.limits.max_body
        return self._answer(msg, peer, now, Code.REQUEST_ENTITY_TOO_LARGE,
                            f"request exceeds {limit} bytes".encode(),
                            [(Opt.SIZE1, uint_bytes(limit))])

    def _reset_malformed(self, data: bytes, peer: Peer) -> Out:
        """§4.2: a confirmable message with a format error is rejected with a Reset."""
        if len(data) >= 4 and data[0] >> 6 == 1 and (data[0] >> 4 & 3) == CON:
            return [(encode(Message(RST, 0, data[2] << 8 | data[3])), peer)]
        return []

    # -- separate responses, expiry --------------------------------------------------------

    def _settle(self, msg: Message, peer: Peer) -> None:
        pending = self._pending.pop((peer, msg.mid), None)
        if pending is not None:
            self.stats["separate_acked" if msg.mtype == ACK else "separate_reset"] += 1

    def poll(self, now: float) -> Out:
        """Retransmit separate responses due by ``now``; give up after MAX_RETRANSMIT."""
        out: Out = []
        for key, pending in list(self._pending.items()):
            if pending.next_at > now:
                continue
            if pending.retransmits >= self.timing.max_retransmit:
                del self._pending[key]
                self.stats["separate_timeout"] += 1
                continue
            pending.retransmits += 1
            pending.timeout *= 2
            pending.next_at = now + pending.timeout
            self.stats["retransmissions"] += 1
            out.append((pending.datagram, pending.peer))
        self._expire(now)
        return out

    def next_wakeup(self) -> float | None:
        return min((p.next_at for p in self._pending.values()), default=None)

    def _expire(self, now: float) -> None:
        lifetime = self.timing.exchange_lifetime
        dedup = self._dedup
        while dedup:
            key, done = next(iter(dedup.items()))
            if now - done.at < lifetime:
                break
            del dedup[key]
        partials = self._partials
        while partials:
            key, partial = next(iter(partials.items()))
            if now - partial.started < self.block_lifetime:
                break
            self.stats["block1_expired"] += 1
            self._drop_partial(key)
        kept = self._block2
        while kept:
            key, (_, _, at) = next(iter(kept.items()))
            if now - at < self.block_lifetime:
                break
            del kept[key]

    def _drop_partial(self, key: tuple) -> None:
        partial = self._partials.pop(key, None)
        if partial is not None:
            self._partial_bytes -= len(partial.body)

    def _bound_partials(self) -> None:
        limits = self.limits
        while self._partials and (
            len(self._partials) > limits.max_partials or self._partial_bytes > limits.max_partial_bytes
        ):
            self.stats["block1_evicted"] += 1
            self._drop_partial(next(iter(self._partials)))

    def _bound(self, table: OrderedDict, limit: int) -> None:
        while len(table) > limit:
            table.popitem(last=False)
            self.stats["evicted"] += 1

    def _next_mid(self, peer: Peer) -> int:
        for _ in range(0x10000):
            self._mid = (self._mid + 1) & 0xFFFF
            if (peer, self._mid) not in self._pending:
                return self._mid
        raise RuntimeError("every message ID is in use")

    def _next_etag(self) -> bytes:
        self._etag = (self._etag + 1) & 0xFFFFFFFF
        return self._etag.to_bytes(4, "big")

    def memory(self) -> dict[str, int]:
        """Sizes of the bounded tables (tests check they stay within the limits)."""
        return {"dedup": len(self._dedup), "partials": len(self._partials),
                "partial_bytes": self._partial_bytes, "block2": len(self._block2),
                "pending": len(self._pending), "peers": len({peer for peer, _ in self._dedup})}
