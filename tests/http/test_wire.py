"""fleet.http.wire's chunked decoder, shared by the client (responses) and the server (requests)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.http.wire import ChunkedDecoder, WireError


def feed_all(data: bytes, limit: int = 1 << 20, step: int | None = None) -> tuple[bytes, bytes]:
    """(body, bytes after it) of ``data`` fed whole or ``step`` bytes at a time."""
    decoder = ChunkedDecoder(limit)
    step = step or len(data) or 1
    rest = b""
    for i in range(0, len(data), step):
        rest = decoder.feed(data[i : i + step])
        if decoder.done:
            rest += data[i + step :]
            break
    assert decoder.done
    return decoder.body(), rest


@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    step=st.integers(min_value=1, max_value=17),
)
def test_any_split_decodes_the_same(chunks: list[bytes], step: int) -> None:
    data = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-T: v\r\n\r\nNEXT"
    assert feed_all(data, step=step) == (b"".join(chunks), b"NEXT")


@pytest.mark.parametrize("size", [b"100000000000000000000", b"FFFFFFFFFFFFFFFFFFFF", b"401"])
def test_declared_size_over_the_limit_fails_on_its_size_line(size: bytes) -> None:
    """No chunk data needed: the size line alone decides (a 2**80 chunk is not waited for)."""
    decoder = ChunkedDecoder(1024)
    with pytest.raises(OverflowError):
        decoder.feed(size + b"\r\n")


def test_sizes_add_up_against_the_limit() -> None:
    decoder = ChunkedDecoder(1024)
    decoder.feed(b"200\r\n" + b"a" * 0x200 + b"\r\n")
    with pytest.raises(OverflowError):
        decoder.feed(b"201\r\n")


@pytest.mark.parametrize(
    "data",
    [
        b"3\nabc\r\n",  # bare LF ending a size line
        b"3\r\nabc\r\n0\n",  # ... the last chunk's
        b"3\r\nabc\r\n0\r\nX: y\n",  # ... a trailer line
        b"0x3\r\n",
        b"+3\r\n",
        b"-3\r\n",
        b"1_0\r\n",
        b" 3\r\n",
        b";ext\r\n",
        b"3;a\x00b\r\n",
        b"3\rX\r\n",
        b"3\r\nabcX\r\n",
        b"3\r\nabc\nX",
        b"3\r\nabc\r\n0\r\nno colon\r\n",
        b"3\r\nabc\r\n0\r\n folded: x\r\n",
    ],
)
def test_malformed_framing_fails_at_once(data: bytes) -> None:
    with pytest.raises(WireError) as info:
        ChunkedDecoder(1 << 20).feed(data)
    assert info.value.status == 400


def test_long_lines_fail_without_waiting_for_their_end() -> None:
    with pytest.raises(WireError, match="too long"):
        ChunkedDecoder(1 << 20).feed(b"1;" + b"e" * 5000)
    with pytest.raises(WireError) as info:
        ChunkedDecoder(1 << 20).feed(b"0\r\n" + b"X-Trailer: many\r\n" * 2000)
    assert info.value.status == 431


def test_trailing_whitespace_after_the_size_is_tolerated() -> None:
    assert feed_all(b"3 \t\r\nabc\r\n0 ; last\r\n\r\n") == (b"abc", b"")
