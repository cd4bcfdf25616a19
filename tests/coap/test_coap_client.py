"""The sans-I/O CoAP client: RFC 7252 §4.2 retransmission timing, separate responses, Resets,
many exchanges on one endpoint told apart by message ID and token, bounded responses."""

from __future__ import annotations

import random

import pytest

from fleet.coap.client import ClientEndpoint
from fleet.coap.message import ACK, CON, NON, RST, Block, Code, Message, Opt, decode, encode
from fleet.coap.timing import CoapTiming

PATH = (".well-known", "cmp", "p", "iot")


def endpoint(**kw: object) -> ClientEndpoint:
    return ClientEndpoint(rng=random.Random(7), **kw)  # type: ignore[arg-type]


def test_the_request_carries_path_content_format_and_a_request_tag() -> None:
    exchange = endpoint().start(b"der", PATH, 0.0)
    assert exchange.outgoing is not None
    msg = decode(exchange.outgoing)
    assert (msg.mtype, msg.code, msg.payload) == (CON, Code.POST, b"der")
    assert msg.path() == PATH
    assert msg.uint_option(Opt.CONTENT_FORMAT) == 259
    assert msg.option(Opt.REQUEST_TAG) == exchange.request_tag and len(msg.token) == 8


def test_retransmissions_follow_ack_timeout_random_factor_and_max_retransmit() -> None:
    timing = CoapTiming(ack_timeout=2.0, ack_random_factor=1.5, max_retransmit=4)
    exchange = endpoint(timing=timing).start(b"x", PATH, 0.0)
    first = exchange.outgoing
    exchange.outgoing = None
    assert exchange.next_at is not None and 2.0 <= exchange.next_at <= 3.0
    waits = [exchange.next_at]
    now = exchange.next_at
    for _ in range(4):
        exchange.timeout(now)
        assert exchange.outgoing == first  # the same datagram: same message ID, same token
        exchange.outgoing = None
        assert exchange.next_at is not None
        waits.append(exchange.next_at - now)
        now = exchange.next_at
    assert [round(w / waits[0], 6) for w in waits] == [1, 2, 4, 8, 16]
    exchange.timeout(now)
    assert exchange.failure is not None and exchange.failure.kind == "timeout"
    assert exchange.retransmissions == 4 and exchange.endpoint.stats["gave_up"] == 1


def test_an_early_timeout_call_changes_nothing() -> None:
    exchange = endpoint().start(b"x", PATH, 0.0)
    exchange.outgoing = None
    exchange.timeout(0.5)
    assert exchange.outgoing is None and exchange.retransmissions == 0


def test_an_empty_ack_stops_retransmission_and_the_separate_response_is_acknowledged() -> None:
    ep = endpoint()
    exchange = ep.start(b"x", PATH, 0.0)
    request = decode(exchange.outgoing or b"")
    assert ep.receive(encode(Message(ACK, 0, request.mid)), 0.1) == ([], [exchange])
    assert exchange.next_at is None
    separate = Message(CON, Code.CHANGED, 999, request.token, [(Opt.CONTENT_FORMAT, b"\x01\x03")], b"ip")
    acks, changed = ep.receive(encode(separate), 5.0)
    assert [decode(a) for a in acks] == [Message(ACK, 0, 999)] and changed == [exchange]
    assert exchange.result is not None and exchange.result.payload == b"ip"
    # the server's retransmission of it (our ACK was lost) is acknowledged again, not processed
    acks, changed = ep.receive(encode(separate), 6.0)
    assert [decode(a) for a in acks] == [Message(ACK, 0, 999)] and changed == []
    # a separate response nobody asked for is reset
    stray = Message(CON, Code.CHANGED, 1000, b"unknown!", [], b"?")
    assert ep.receive(encode(stray), 6.0) == ([encode(Message(RST, 0, 1000))], [])


def test_many_exchanges_on_one_endpoint_get_their_own_answers() -> None:
    ep = endpoint()
    exchanges = [ep.start(i.to_bytes(2, "big"), PATH, 0.0) for i in range(1000)]
    assert len({e.mid for e in exchanges}) == len({e.token for e in exchanges}) == 1000
    assert ep.in_flight == 1000
    for exchange in reversed(exchanges):
        msg = decode(exchange.outgoing or b"")
        reply = Message(ACK, Code.CHANGED, msg.mid, msg.token, [(Opt.CONTENT_FORMAT, b"\x01\x03")],
                        msg.payload * 2)
        ep.receive(encode(reply), 1.0)
    assert [e.result.payload for e in exchanges if e.result] == [i.to_bytes(2, "big") * 2 for i in range(1000)]
    assert ep.in_flight == 0


def test_a_reset_an_error_code_and_a_bad_block2_end_the_exchange_with_their_kind() -> None:
    ep = endpoint()
    reset = ep.start(b"x", PATH, 0.0)
    ep.receive(encode(Message(RST, 0, decode(reset.outgoing or b"").mid)), 0.0)
    assert reset.failure is not None and reset.failure.kind == "reset"
    error = ep.start(b"x", PATH, 0.0)
    msg = decode(error.outgoing or b"")
    ep.receive(encode(Message(ACK, Code.SERVICE_UNAVAILABLE, msg.mid, msg.token, [], b"busy")), 0.0)
    assert error.failure is not None and error.failure.kind == "coap_5.03"
    assert error.failure.problem == "CoAP 5.03: busy"
    gap = ep.start(b"x", PATH, 0.0)
    msg = decode(gap.outgoing or b"")
    ep.receive(encode(Message(ACK, Code.CHANGED, msg.mid, msg.token,
                              [(Opt.BLOCK2, Block(2, True, 0).encode())], bytes(16))), 0.0)
    assert gap.failure is not None and "does not follow" in gap.failure.problem


def test_a_response_beyond_the_limit_is_refused_while_it_arrives() -> None:
    ep = endpoint(max_response=100)
    exchange = ep.start(b"x", PATH, 0.0)
    num = 0
    while not exchange.finished:
        msg = decode(exchange.outgoing or b"")
        ep.receive(encode(Message(ACK, Code.CHANGED, msg.mid, msg.token,
                                  [(Opt.BLOCK2, Block(num, True, 1).encode()), (Opt.ETAG, b"e")],
                                  bytes(32))), 0.0)
        num += 1
    assert exchange.failure is not None and exchange.failure.kind == "too_large" and num == 4


def test_a_response_on_another_token_or_a_non_confirmable_request_is_ignored() -> None:
    ep = endpoint()
    exchange = ep.start(b"x", PATH, 0.0)
    msg = decode(exchange.outgoing or b"")
    assert ep.receive(encode(Message(ACK, Code.CHANGED, msg.mid, b"other", [], b"?")), 0.0) == ([], [])
    assert ep.receive(encode(Message(NON, Code.POST, 1, b"", [], b"?")), 0.0) == ([], [])
    assert not exchange.finished and ep.stats["stray"] == 1


def test_szx_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="szx"):
        ClientEndpoint(szx=7)
