"""The CoAP codec (RFC 7252 §3) and Block values (RFC 7959 §2.2): round trips, the RFC's
encodings byte for byte, and every malformed header or option refused with one line."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.coap.message import (
    ACK,
    CON,
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


def test_a_post_with_path_content_format_and_payload_is_encoded_as_the_rfc_says() -> None:
    msg = Message(CON, Code.POST, 0x1234, b"\x01\x02",
                  [(Opt.URI_PATH, b".well-known"), (Opt.URI_PATH, b"cmp"),
                   (Opt.CONTENT_FORMAT, uint_bytes(259))], b"\x30\x00")
    data = encode(msg)
    # ver 1, CON, TKL 2 | POST | MID | token | Uri-Path delta 11 len 11 | delta 0 len 3 |
    # Content-Format delta 1 len 2 (259) | payload marker | payload
    assert data == (b"\x42\x02\x12\x34\x01\x02" + b"\xbb.well-known" + b"\x03cmp"
                    + b"\x12\x01\x03" + b"\xff\x30\x00")
    assert decode(data) == msg
    assert decode(data).path() == (".well-known", "cmp")


def test_extended_deltas_and_lengths_round_trip() -> None:
    big = bytes(300)
    msg = Message(ACK, Code.CHANGED, 7, b"", [(Opt.URI_PATH, b"x" * 20), (Opt.REQUEST_TAG, b"t"),
                                              (2000, big)], b"p")
    assert decode(encode(msg)) == msg


@given(
    mtype=st.integers(0, 2), mid=st.integers(0, 0xFFFF), token=st.binary(max_size=8),
    options=st.lists(st.tuples(st.integers(1, 3000), st.binary(max_size=300)), max_size=10),
    payload=st.binary(max_size=200),
)
def test_any_message_round_trips(mtype: int, mid: int, token: bytes,
                                 options: list[tuple[int, bytes]], payload: bytes) -> None:
    msg = Message(mtype, Code.POST if mtype != ACK else Code.CHANGED, mid, token,
                  sorted(options, key=lambda o: o[0]), payload)
    assert decode(encode(msg)) == msg


@given(st.binary(max_size=64))
def test_random_bytes_either_decode_or_raise_the_format_error(data: bytes) -> None:
    try:
        decode(data)
    except CoapFormatError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x40\x02", "shorter than the 4-byte"),
        (b"\x80\x02\x00\x01", "version 2"),
        (b"\x49\x02\x00\x01" + bytes(9), "token length 9"),
        (b"\x44\x02\x00\x01\x01", "ends inside the token"),
        (b"\x40\x02\x00\x01\xff", "payload marker followed by no payload"),
        (b"\x40\x02\x00\x01\xd1", "ends inside an extended option delta"),
        (b"\x40\x02\x00\x01\xe1\x00", "ends inside an extended option delta"),
        (b"\x40\x02\x00\x01\xf1", "nibble 15 is reserved"),
        (b"\x40\x02\x00\x01\x1f", "nibble 15 is reserved"),
        (b"\x40\x02\x00\x01\x15ab", "ends inside an option value"),
        (b"\x40\x00\x00\x01\x11", "Empty message"),
        (b"\x40\x20\x00\x01", "reserved class"),
        (b"\x60\x02\x00\x01", "ACK carrying a request code"),
        (b"\x70\x44\x00\x01", "Reset message with a non-empty code"),
        (b"\x40\x02\x00\x01\x0e\xff\xff" + bytes(10), "option of"),
        (b"\x40\x02\x00\x01" + b"\x01a" * 65, "more than 64 options"),
    ],
)
def test_malformed_datagrams_are_refused_with_one_line(data: bytes, words: str) -> None:
    with pytest.raises(CoapFormatError, match=words) as caught:
        decode(data)
    assert "\n" not in str(caught.value)


def test_block_values_follow_rfc_7959() -> None:
    assert Block(0, True, 6).encode() == b"\x0e"
    assert Block(1, False, 2).encode() == b"\x12"
    assert Block.decode(b"\x0e") == Block(0, True, 6)
    assert Block(5, False, 2).offset == 5 * 64
    assert Block.decode(Block(70000, True, 3).encode()) == Block(70000, True, 3)
    with pytest.raises(CoapFormatError, match="SZX 7"):
        Block.decode(b"\x0f")
    with pytest.raises(CoapFormatError, match="at most 3"):
        Block.decode(b"\x00\x00\x00\x01")
    with pytest.raises(ValueError):
        Block(0, False, 7).encode()


def test_codes_are_written_as_the_rfc_writes_them() -> None:
    assert code_text(Code.CHANGED) == "2.04"
    assert code_text(Code.CONTINUE) == "2.31"
    assert code_text(Code.REQUEST_ENTITY_INCOMPLETE) == "4.08"
    assert code_text(Code.REQUEST_ENTITY_TOO_LARGE) == "4.13"
