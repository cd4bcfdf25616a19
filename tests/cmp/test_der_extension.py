"""fleet/cmp/_der.c: the C read_tlv, tlv and sequence answer exactly what der's Python functions
answer, results and errors alike, on valid, hostile and odd input."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.cmp import _accel, der

_der = pytest.importorskip("fleet.cmp._der")


def _outcome(func, *args):  # type: ignore[no-untyped-def]
    try:
        return ("ok", func(*args))
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome compared
        return ("raised", type(exc), str(exc))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CI builds the extension on Linux")
def test_the_extension_is_built_and_installed() -> None:
    assert der.IMPLEMENTATION == "extension" == _accel.implementation()["_der"]
    assert der.read_tlv is _der.read_tlv and der.tlv is _der.tlv and der.sequence is _der.sequence
    assert der._probe(_der)  # the probe the loader ran still holds


_headers = st.sampled_from(
    [b"", b"\x30", b"\x1f\x01", b"\x30\x80", b"\x30\x81", b"\x30\x81\x7f", b"\x30\x81\x80", b"\x30\x82\x00\x80",
     b"\x30\x82\x01\x00", b"\x30\x83\x01\x00\x00", b"\x30\x84\xff\xff\xff\xff", b"\x30\x85\x01\x00\x00\x00\x00",
     b"\xa0\x05", b"\x04\x00"]
)


@settings(max_examples=1500, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=40),
        st.tuples(_headers, st.binary(max_size=300)).map(lambda t: t[0] + t[1]),
    ),
    pos=st.integers(-3, 45),
    end_offset=st.integers(-5, 5),
)
def test_read_tlv_agrees(data: bytes, pos: int, end_offset: int) -> None:
    end = len(data) + end_offset
    assert _outcome(_der.read_tlv, data, pos, end) == _outcome(der.python_read_tlv, data, pos, end)


def test_read_tlv_hands_other_types_and_huge_numbers_to_python() -> None:
    data = b"\x04\x01x"
    assert _der.read_tlv(bytearray(data), 0, 3) == der.python_read_tlv(bytearray(data), 0, 3) == (4, 2, 3)
    assert _outcome(_der.read_tlv, data, 0, 2**70) == _outcome(der.python_read_tlv, data, 0, 2**70)
    assert _outcome(_der.read_tlv, data, 0) == ("raised", TypeError, _outcome(der.python_read_tlv, data, 0)[2])


@settings(max_examples=300, deadline=None)
@given(
    tag=st.one_of(st.integers(0, 255), st.integers(-5, 1000)),
    content=st.one_of(
        st.binary(max_size=300),
        st.integers(0, 70_000).map(bytes),
        st.binary(max_size=10).map(bytearray),
    ),
)
def test_tlv_agrees(tag: int, content: bytes) -> None:
    assert _outcome(_der.tlv, tag, content) == _outcome(der.python_tlv, tag, content)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.one_of(st.binary(max_size=200), st.integers(0, 40_000).map(bytes), st.binary(max_size=5).map(bytearray)),
        max_size=6,
    )
)
def test_sequence_agrees(parts: list[bytes]) -> None:
    assert _outcome(_der.sequence, *parts) == _outcome(der.python_sequence, *parts)


def test_sequence_of_non_bytes_raises_as_python_does() -> None:
    assert _outcome(_der.sequence, b"a", "text") == _outcome(der.python_sequence, b"a", "text")
    assert _outcome(_der.tlv, 4, None) == _outcome(der.python_tlv, 4, None)
