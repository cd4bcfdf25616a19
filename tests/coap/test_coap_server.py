"""The sans-I/O CoAP server: block-wise transfer both ways, duplicates answered from memory,
separate responses retransmitted, and hostile input (malformed datagrams, blocks out of order
or never finished, oversized totals, floods of new tokens) refused in bounded memory while
other clients keep being served."""

from __future__ import annotations

import random

from fleet.coap.client import ClientEndpoint, ClientExchange
from fleet.coap.message import (
    ACK,
    CON,
    NON,
    RST,
    Block,
    Code,
    Message,
    Opt,
    decode,
    encode,
    uint_bytes,
)
from fleet.coap.server import CoapServer, Incoming, ServerLimits
from fleet.coap.timing import CoapTiming

PATH = [(Opt.URI_PATH, b".well-known"), (Opt.URI_PATH, b"cmp"), (Opt.CONTENT_FORMAT, b"\x01\x03")]


def server(**limits: object) -> CoapServer:
    return CoapServer(limits=ServerLimits(**limits), rng=random.Random(1))  # type: ignore[arg-type]


def post(mid: int, token: bytes, payload: bytes, *extra: tuple[int, bytes], mtype: int = CON) -> bytes:
    return encode(Message(mtype, Code.POST, mid, token, [*PATH, *extra], payload))


def block1(num: int, more: bool, szx: int = 2) -> tuple[int, bytes]:
    return Opt.BLOCK1, Block(num, more, szx).encode()


def answer(srv: CoapServer, data: bytes, peer: object = "a", now: float = 0.0) -> tuple[Message | None, Incoming | None]:
    out, incoming = srv.receive(data, peer, now)
    assert len(out) <= 1
    return (decode(out[0][0]) if out else None), incoming


def run(client: ClientEndpoint, exchange: ClientExchange, srv: CoapServer, reply: bytes) -> int:
    """Carry datagrams between the two until the exchange ends; how many requests it took."""
    requests = 0
    while not exchange.finished:
        data, exchange.outgoing = exchange.outgoing, None
        assert data is not None
        requests += 1
        out, incoming = srv.receive(data, "c", 0.0)
        if incoming is not None:
            out = srv.respond(incoming, Code.CHANGED, reply, 0.0)
        for datagram, _ in out:
            client.receive(datagram, 0.0)
    return requests


def test_block1_then_block2_carry_messages_larger_than_a_block_both_ways() -> None:
    srv = server(szx=2)  # 64-byte response blocks
    client = ClientEndpoint(szx=1, rng=random.Random(2))  # 32-byte request blocks
    body, reply = bytes(range(200)), bytes(range(255, 0, -1)) * 2
    exchange = client.start(body, (".well-known", "cmp"), 0.0)
    requests = run(client, exchange, srv, reply)
    assert exchange.result is not None and exchange.result.payload == reply
    assert exchange.result.content_format == 259
    # ceil(200/32) Block1 requests, the last answered with the first 64-byte Block2; the
    # client asks the remaining 446 bytes in its own 32-byte blocks (RFC 7959 §2.4)
    assert requests == 7 + 14
    assert srv.stats["block1_continue"] == 6 and srv.stats["block2_served"] == 14


def test_a_retransmitted_request_is_answered_from_memory_not_handled_twice() -> None:
    srv = server()
    request = post(10, b"tk", b"cmp body")
    first, incoming = answer(srv, request)
    assert first is None and incoming is not None
    # the client retransmits before the application answered: ignored, the answer follows
    assert answer(srv, request) == (None, None)
    (datagram, _), = srv.respond(incoming, Code.CHANGED, b"ip", 0.0)
    again, handled = answer(srv, request)
    assert handled is None and again is not None and encode(again) == datagram
    assert srv.stats["duplicate"] == 2 and srv.stats["requests"] == 1
    # the same message ID with another token is a new request (a reused ID, not a duplicate)
    _, other = answer(srv, post(10, b"t2", b"other"))
    assert other is not None and other.payload == b"other"


def test_a_slow_answer_becomes_a_separate_response_retransmitted_until_acknowledged() -> None:
    srv = CoapServer(timing=CoapTiming(ack_timeout=1.0, max_retransmit=2), rng=random.Random(3))
    _, incoming = answer(srv, post(1, b"tok", b"x"))
    assert incoming is not None
    (ack, _), = srv.acknowledge(incoming)
    assert decode(ack) == Message(ACK, Code.EMPTY, 1)
    (sep, _), = srv.respond(incoming, Code.CHANGED, b"late", 0.0)
    response = decode(sep)
    assert response.mtype == CON and response.token == b"tok" and response.payload == b"late"
    assert srv.poll(0.5) == []
    assert [d for d, _ in srv.poll(1.6)] == [sep]  # first timeout within [1, 1.5] s
    srv.receive(encode(Message(ACK, 0, response.mid)), "a", 2.0)
    assert srv.poll(100.0) == [] and srv.stats["separate_acked"] == 1


def test_an_unacknowledged_separate_response_is_given_up_after_max_retransmit() -> None:
    srv = CoapServer(timing=CoapTiming(ack_timeout=1.0, max_retransmit=2), rng=random.Random(3))
    _, incoming = answer(srv, post(1, b"tok", b"x"))
    assert incoming is not None
    srv.acknowledge(incoming)
    srv.respond(incoming, Code.CHANGED, b"late", 0.0)
    sent = sum(len(srv.poll(t)) for t in range(1, 30))
    assert sent == 2 and srv.stats["separate_timeout"] == 1 and srv.memory()["pending"] == 0


def test_malformed_datagrams_get_a_reset_when_confirmable_and_nothing_else() -> None:
    srv = server()
    reply, incoming = answer(srv, b"\x40\x02\x00\x07\xf1")  # CON with a reserved nibble
    assert incoming is None and reply == Message(RST, 0, 7)
    assert answer(srv, b"\x50\x02\x00\x07\xf1") == (None, None)  # NON: silently dropped
    assert answer(srv, b"\x01") == (None, None)
    assert srv.stats["malformed"] == 3
    _, ok = answer(srv, post(8, b"t", b"fine"))  # and the next client is served
    assert ok is not None


def test_an_unknown_critical_option_is_refused_with_4_02() -> None:
    reply, incoming = answer(server(), post(1, b"t", b"x", (9, b"?")))
    assert incoming is None and reply is not None and reply.code == Code.BAD_OPTION


def test_block1_out_of_order_or_unknown_gets_4_08_and_the_transfer_restarts() -> None:
    srv = server()
    reply, _ = answer(srv, post(1, b"a", bytes(64), block1(1, True)))
    assert reply is not None and reply.code == Code.REQUEST_ENTITY_INCOMPLETE
    reply, _ = answer(srv, post(2, b"b", bytes(64), block1(0, True)))
    assert reply is not None and reply.code == Code.CONTINUE
    assert reply.block(Opt.BLOCK1) == Block(0, True, 2)
    reply, _ = answer(srv, post(3, b"c", bytes(64), block1(2, True)))  # skips block 1
    assert reply is not None and reply.code == Code.REQUEST_ENTITY_INCOMPLETE
    assert srv.memory()["partials"] == 0
    reply, _ = answer(srv, post(4, b"d", bytes(10), block1(0, True)))  # short non-final block
    assert reply is not None and reply.code == Code.BAD_REQUEST


def test_oversized_totals_are_refused_with_4_13_declared_or_accumulated() -> None:
    srv = server(max_body=256)
    reply, _ = answer(srv, post(1, b"a", bytes(64), block1(0, True), (Opt.SIZE1, uint_bytes(10**6))))
    assert reply is not None and reply.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert reply.uint_option(Opt.SIZE1) == 256
    for num in range(4):
        reply, _ = answer(srv, post(10 + num, b"b", bytes(64), block1(num, True)))
        assert reply is not None and reply.code == Code.CONTINUE
    reply, _ = answer(srv, post(20, b"b", bytes(64), block1(4, False)))
    assert reply is not None and reply.code == Code.REQUEST_ENTITY_TOO_LARGE
    reply, _ = answer(srv, post(21, b"c", bytes(300)))
    assert reply is not None and reply.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert srv.memory()["partials"] == 0 and srv.memory()["partial_bytes"] == 0


def test_never_finished_transfers_expire_and_a_flood_of_tokens_stays_bounded() -> None:
    srv = server(max_partials=100, max_partial_bytes=100 * 64, max_dedup=500)
    for i in range(5_000):  # each a new token, Request-Tag and first block, never finished
        srv.receive(post(i & 0xFFFF, i.to_bytes(4, "big"), bytes(64), block1(0, True),
                         (Opt.REQUEST_TAG, i.to_bytes(4, "big"))), ("flood", 1), 0.0)
        memory = srv.memory()
        assert memory["partials"] <= 100 and memory["dedup"] <= 500
    assert srv.stats["block1_evicted"] == 4_900
    # another client is served meanwhile, block-wise
    client = ClientEndpoint(szx=2, rng=random.Random(4))
    exchange = client.start(bytes(300), (".well-known", "cmp"), 0.0)
    run(client, exchange, srv, b"ok")
    assert exchange.result is not None and exchange.result.payload == b"ok"
    # and what was left unfinished expires
    srv.poll(srv.timing.exchange_lifetime + 1)
    assert srv.memory() == {"dedup": 0, "partials": 0, "partial_bytes": 0, "block2": 0, "pending": 0,
                            "peers": 0}


def test_a_block2_follow_up_without_a_kept_response_gets_4_08() -> None:
    reply, _ = answer(server(), post(1, b"a", b"", (Opt.BLOCK2, Block(3, False, 2).encode())))
    assert reply is not None and reply.code == Code.REQUEST_ENTITY_INCOMPLETE


def test_non_confirmable_requests_are_answered_non_confirmable_and_pings_reset() -> None:
    srv = server()
    _, incoming = answer(srv, post(5, b"n", b"x", mtype=NON))
    assert incoming is not None
    (datagram, _), = srv.respond(incoming, Code.CHANGED, b"y", 0.0)
    assert decode(datagram).mtype == NON
    reply, _ = answer(srv, encode(Message(CON, Code.EMPTY, 9)))
    assert reply == Message(RST, 0, 9)
