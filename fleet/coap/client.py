"""The client side of CoAP for CMP (RFC 7252, RFC 7959, RFC 9482), sans-I/O.

A ``ClientEndpoint`` is one UDP socket's worth of state: any number of concurrent
``ClientExchange``s (one per CMP message posted), matched to what arrives by message ID
(ACK, Reset) or token (separate responses). Each exchange sends its body block-wise (Block1)
when it exceeds one block, gathers a block-wise response (Block2), and tags all its requests
with one Request-Tag (RFC 9175) so that the server keeps many devices' transfers from the same
socket apart. The I/O layer sends ``exchange.outgoing``, calls ``timeout`` when
``exchange.next_at`` passes, and feeds datagrams to ``endpoint.receive``.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from dataclasses import dataclass

from fleet.coap.message import (
    ACK,
    CON,
    PKIXCMP,
    RST,
    Block,
    CoapFormatError,
    Code,
    Message,
    Opt,
    code_text,
    decode,
    encode,
    uint_bytes,
)
from fleet.coap.timing import CoapTiming

__all__ = ["ClientEndpoint", "ClientExchange", "CoapFailure", "CoapResult"]


@dataclass(frozen=True, slots=True)
class CoapResult:
    """The whole response: its code, Content-Format and (reassembled) payload."""

    code: int
    content_format: int | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class CoapFailure:
    """Why no response was obtained; ``kind`` is a bounded metrics label."""

    kind: str
    problem: str


class ClientExchange:
    """One request and its response, block by block. ``result`` or ``failure`` ends it."""

    def __init__(self, endpoint: ClientEndpoint, body: bytes, path: tuple[str, ...], now: float) -> None:
        self.endpoint = endpoint
        self.body = body
        self.path = path
        self.request_tag = endpoint._new_tag()
        self.szx = endpoint.szx
        self.response = bytearray()
        self.etag: bytes | None = None
        self.result: CoapResult | None = None
        self.failure: CoapFailure | None = None
        self.retransmissions = 0
        self.outgoing: bytes | None = None  # to send now (the I/O layer clears it once sent)
        self.next_at: float | None = None  # when the current CON is due again
        self.mid = -1
        self.token = b""
        self._timeout = 0.0
        self._tries = 0
        self._waiting_separate = False
        self.waiter: object = None  # the I/O layer's wake-up handle
        self._send_block1(0, now)

    @property
    def finished(self) -> bool:
        return self.result is not None or self.failure is not None

    def _options(self) -> list[tuple[int, bytes]]:
        options = [(Opt.URI_PATH, s.encode()) for s in self.path]
        options.append((Opt.CONTENT_FORMAT, uint_bytes(PKIXCMP)))
        options.append((Opt.REQUEST_TAG, self.request_tag))
        return options

    def _send_block1(self, offset: int, now: float) -> None:
        size = 1 << (self.szx + 4)
        options = self._options()
        if len(self.body) <= size and offset == 0:
            payload = self.body
        else:
            num, rest = divmod(offset, size)
            if rest:
                raise ValueError("Block1 offset not on a block boundary")
            payload = self.body[offset : offset + size]
            more = offset + size < len(self.body)
            options.append((Opt.BLOCK1, Block(num, more, self.szx).encode()))
            if num == 0:
                options.append((Opt.SIZE1, uint_bytes(len(self.body))))
        self._send(options, payload, now)

    def _send_block2(self, num: int, szx: int, now: float) -> None:
        options = self._options()
        options.append((Opt.BLOCK2, Block(num, False, szx).encode()))
        self._send(options, b"", now)

    def _send(self, options: list[tuple[int, bytes]], payload: bytes, now: float) -> None:
        endpoint = self.endpoint
        endpoint._forget(self)
        self.mid = endpoint._new_mid()
        self.token = endpoint._new_token()
        endpoint._track(self)
        self.outgoing = encode(Message(CON, Code.POST, self.mid, self.token, options, payload))
        self._datagram = self.outgoing
        self._tries = 0
        self._timeout = endpoint.timing.first_timeout(endpoint.rng)
        self.next_at = now + self._timeout
        self._waiting_separate = False
        endpoint.stats["sent"] += 1

    def timeout(self, now: float) -> None:
        """``next_at`` has passed: retransmit (doubling the wait) or fail after MAX_RETRANSMIT."""
        if self.finished or self.next_at is None or now < self.next_at:
            return
        timing = self.endpoint.timing
        if self._tries >= timing.max_retransmit:
            self._fail("timeout", f"no answer after {self._tries + 1} transmissions")
            self.endpoint.stats["gave_up"] += 1
            return
        self._tries += 1
        self.retransmissions += 1
        self.endpoint.stats["retransmissions"] += 1
        self._timeout *= 2
        self.next_at = now + self._timeout
        self.outgoing = self._datagram

    def _fail(self, kind: str, problem: str) -> None:
        self.failure = CoapFailure(kind, problem)
        self.next_at = None
        self.outgoing = None
        self.endpoint._forget(self)

    def _on_empty_ack(self) -> None:
        self.next_at = None  # the response comes separately; the caller's deadline bounds it
        self._waiting_separate = True
        self.endpoint.stats["separate"] += 1

    def _on_response(self, msg: Message, now: float) -> None:
        code = msg.code
        if code == Code.CONTINUE:
            echo = msg.block(Opt.BLOCK1)
            if echo is None:
                return self._fail("protocol", "2.31 Continue without a Block1 option")
            self.szx = min(self.szx, echo.szx)
            offset = (echo.num + 1) * echo.size
            if offset >= len(self.body):
                return self._fail("protocol", "2.31 Continue after the last block")
            return self._send_block1(offset, now)
        if code >> 5 != 2:
            text = msg.payload[:120].decode("utf-8", "replace")
            detail = f": {text}" if text else ""
            return self._fail(f"coap_{code_text(code)}", f"CoAP {code_text(code)}{detail}")
        block2 = msg.block(Opt.BLOCK2)
        if block2 is None:
            if self.response:
                return self._fail("protocol", "a Block2 transfer ended without a Block2 option")
            return self._finish(code, msg, msg.payload)
        etag = msg.option(Opt.ETAG)
        if block2.num == 0:
            self.etag = etag
        elif etag != self.etag:
            return self._fail("protocol", "the response changed during its Block2 transfer (ETag)")
        if block2.offset != len(self.response):
            return self._fail("protocol", f"Block2 {block2.num} does not follow the bytes received")
        if block2.more and len(msg.payload) != block2.size:
            return self._fail("protocol", f"Block2 {block2.num} is not of its full size")
        self.response += msg.payload
        limit = self.endpoint.max_response
        if len(self.response) > limit:
            return self._fail("too_large", f"response exceeds the limit of {limit} bytes")
        if block2.more:
            szx = min(block2.szx, self.szx)
            return self._send_block2(len(self.response) >> (szx + 4), szx, now)
        return self._finish(code, msg, bytes(self.response))

    def _finish(self, code: int, msg: Message, payload: bytes) -> None:
        fmt = msg.option(Opt.CONTENT_FORMAT)
        self.result = CoapResult(code, None if fmt is None else int.from_bytes(fmt, "big"), payload)
        self.next_at = None
        self.outgoing = None
        self.endpoint._forget(self)

    def cancel(self) -> None:
        """The caller gave up (its deadline): forget the exchange."""
        if not self.finished:
            self._fail("cancelled", "abandoned by the caller")


class ClientEndpoint:
    """The state of one client socket: message IDs, tokens and the exchanges in flight."""

    def __init__(
        self,
        *,
        timing: CoapTiming | None = None,
        szx: int = 6,
        max_response: int = 1 << 20,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 <= szx <= 6:
            raise ValueError(f"szx must be 0..6, got {szx}")
        self.timing = timing or CoapTiming()
        self.szx = szx
        self.max_response = max_response
        self.rng = rng or random.Random()
        self._mid = self.rng.randrange(0x10000)
        self._token_prefix = self.rng.randrange(1 << 24)
        self._token = 0
        self._by_mid: dict[int, ClientExchange] = {}
        self._by_token: dict[bytes, ClientExchange] = {}
        self._recent: OrderedDict[bytes, None] = OrderedDict()  # finished tokens: ACK duplicates
        self.stats: Counter[str] = Counter()

    def start(self, body: bytes, path: tuple[str, ...], now: float) -> ClientExchange:
        return ClientExchange(self, body, path, now)

    @property
    def in_flight(self) -> int:
        return len(self._by_token)

    def receive(self, data: bytes, now: float) -> tuple[list[bytes], list[ClientExchange]]:
        """(datagrams to send back, exchanges whose state changed)."""
        try:
            msg = decode(data)
        except CoapFormatError:
            self.stats["malformed"] += 1
            return [], []
        if msg.mtype in (ACK, RST):
            exchange = self._by_mid.get(msg.mid)
            if exchange is None:
                self.stats["stray"] += 1
                return [], []
            if msg.mtype == RST:
                exchange._fail("reset", "the server reset the request (it could not process it)")
                return [], [exchange]
            if msg.code == Code.EMPTY:
                if not exchange._waiting_separate:
                    exchange._on_empty_ack()
                return [], [exchange]
            if msg.token != exchange.token:
                self.stats["stray"] += 1
                return [], []
            exchange._on_response(msg, now)
            return [], [exchange]
        if not msg.is_response:
            # A request or a ping to a client: Reset it (RFC 7252 §4.2, §4.3).
            return ([encode(Message(RST, 0, msg.mid))] if msg.mtype == CON else []), []
        exchange = self._by_token.get(msg.token)
        ack = [encode(Message(ACK, 0, msg.mid))] if msg.mtype == CON else []
        if exchange is None:
            if msg.token in self._recent:
                self.stats["duplicate"] += 1
                return ack, []
            self.stats["stray"] += 1
            return ([encode(Message(RST, 0, msg.mid))] if msg.mtype == CON else []), []
        exchange._on_response(msg, now)
        return ack, [exchange]

    def fail_all(self, kind: str, problem: str) -> list[ClientExchange]:
        """End every exchange in flight (the peer is known unreachable); those ended."""
        ended = list(self._by_token.values())
        for exchange in ended:
            exchange._fail(kind, problem)
        return ended

    def _new_mid(self) -> int:
        for _ in range(0x10000):
            self._mid = (self._mid + 1) & 0xFFFF
            if self._mid not in self._by_mid:
                return self._mid
        raise RuntimeError("every message ID is in use")

    def _new_token(self) -> bytes:
        self._token = (self._token + 1) & 0xFFFFFFFFFF
        return (self._token_prefix << 40 | self._token).to_bytes(8, "big")

    def _new_tag(self) -> bytes:
        return self.rng.getrandbits(64).to_bytes(8, "big")

    def _track(self, exchange: ClientExchange) -> None:
        self._by_mid[exchange.mid] = exchange
        self._by_token[exchange.token] = exchange

    def _forget(self, exchange: ClientExchange) -> None:
        if self._by_mid.get(exchange.mid) is exchange:
            del self._by_mid[exchange.mid]
        if self._by_token.pop(exchange.token, None) is not None:
            self._recent[exchange.token] = None
            if len(self._recent) > 4096:
                self._recent.popitem(last=False)
