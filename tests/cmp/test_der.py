"""fleet.cmp.der: the DER writer against pyasn1, and the strict reader's rejections."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import univ

from fleet.cmp import der
from fleet.errors import FleetError

from . import strategies as S

# ---------------------------------------------------------------------------------------------
# INTEGER


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "020100"),
        (1, "020101"),
        (127, "02017f"),
        (128, "02020080"),
        (255, "020200ff"),
        (256, "02020100"),
        (-1, "0201ff"),
        (-127, "020181"),
        (-128, "020180"),
        (-129, "0202ff7f"),
        (-256, "0202ff00"),
        (-32768, "02028000"),
        (-32769, "0203ff7fff"),
        (2**64, "0209010000000000000000"),
        (-(2**63), "02088000000000000000"),
    ],
)
def test_integer_encoding(value: int, encoded: str) -> None:
    assert der.integer(value).hex() == encoded
    assert der.parse(der.integer(value)).as_int() == value


@given(st.integers(-(2**511), 2**511 - 1))
def test_integer_round_trip_and_pyasn1(value: int) -> None:
    data = der.integer(value)
    assert der.parse(data).as_int() == value
    assert int(decoder.decode(data, asn1Spec=univ.Integer())[0]) == value
    if S._pyasn1_safe(value):
        assert encoder.encode(univ.Integer(value)) == data


@pytest.mark.parametrize("value", [-128, -32768, -(2**23), -(2**63)])
def test_pyasn1_writes_some_negatives_non_minimally(value: int) -> None:
    """pyasn1 0.6.5 pads -2**(8k-1) with 0xff; fleet writes (and demands) the DER form."""
    theirs = encoder.encode(univ.Integer(value))
    assert theirs[2] == 0xFF and len(theirs) == len(der.integer(value)) + 1
    with pytest.raises(der.DerError, match="minimally"):
        der.parse(theirs).as_int()


@pytest.mark.parametrize("content", ["", "0001", "007f", "ffff", "ff80"])
def test_integer_rejects_empty_and_non_minimal(content: str) -> None:
    with pytest.raises(der.DerError):
        der.parse(der.tlv(der.INTEGER, bytes.fromhex(content))).as_int()


def test_integer_rejects_over_512_bits() -> None:
    with pytest.raises(der.DerError, match="512"):
        der.parse(der.tlv(der.INTEGER, b"\x01" + bytes(64))).as_int()


# ---------------------------------------------------------------------------------------------
# OBJECT IDENTIFIER


@given(S.dotted_oids())
def test_oid_round_trip_and_pyasn1(dotted: str) -> None:
    data = der.oid(dotted)
    assert der.parse(data).as_oid() == dotted
    assert encoder.encode(univ.ObjectIdentifier(dotted)) == data


def test_oid_uuid_arc() -> None:
    dotted = f"2.25.{2**128 - 1}"
    assert der.parse(der.oid(dotted)).as_oid() == dotted


@pytest.mark.parametrize("bad", ["1", "3.1", "1.40", "0.99", "x.1"])
def test_oid_writer_refuses_non_oids(bad: str) -> None:
    with pytest.raises(ValueError):
        der.oid(bad)


@pytest.mark.parametrize(
    "content",
    [
        b"",  # empty
        b"\x2a\x86",  # last arc unterminated
        b"\x2a\x80\x01",  # non-minimal arc (leading 0x80)
        b"\x80\x2a",  # non-minimal first arc
        b"\x2a" + b"\xff" * 3000 + b"\x01",  # 21,000-bit arc: once a ValueError from int->str
    ],
)
def test_oid_reader_rejects(content: bytes) -> None:
    with pytest.raises(der.DerError):
        der.parse(der.tlv(der.OID, content)).as_oid()


# ---------------------------------------------------------------------------------------------
# BIT STRING of named bits


@given(st.integers(0, 2**80))
def test_named_bits_round_trip(bits: int) -> None:
    data = der.named_bits(bits)
    node = der.parse(data)
    assert node.as_named_bits() == bits
    value, unused = node.as_bits()
    if bits:  # DER: no trailing zero bits, so the last used bit is set
        assert value[-1] >> unused & 1
    pyasn1_bits = decoder.decode(data, asn1Spec=univ.BitString())[0]
    assert sum(b << i for i, b in enumerate(pyasn1_bits)) == bits
    assert encoder.encode(pyasn1_bits) == data


def test_named_bits_examples() -> None:
    assert der.named_bits(0) == b"\x03\x01\x00"
    assert der.named_bits(1) == b"\x03\x02\x07\x80"  # bit 0 only: badAlg
    assert der.named_bits(1 << 9) == b"\x03\x03\x06\x00\x40"  # badPOP


@pytest.mark.parametrize("content", ["", "08", "01", "0781"])
def test_bit_string_rejects(content: str) -> None:
    """Empty, more than 7 unused bits, unused bits with no octets, non-zero unused bits."""
    with pytest.raises(der.DerError):
        der.parse(der.tlv(der.BIT_STRING, bytes.fromhex(content))).as_bits()


# ---------------------------------------------------------------------------------------------
# Lengths


@pytest.mark.parametrize(
    ("n", "header"),
    [
        (0, "0400"),
        (127, "047f"),
        (128, "048180"),
        (255, "0481ff"),
        (256, "04820100"),
        (65535, "0482ffff"),
        (65536, "0483010000"),
    ],
)
def test_lengths(n: int, header: str) -> None:
    data = der.octet_string(b"x" * n)
    assert data[: len(header) // 2].hex() == header
    assert len(data) == len(header) // 2 + n
    assert data == encoder.encode(univ.OctetString(b"x" * n))
    node = der.parse(data)
    assert node.content == b"x" * n and node.raw == data


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("3080020100 0000", "indefinite"),
        ("308105 0203010001", "minimally"),  # short value in a long form
        ("30820005 0203010001", "minimally"),
        ("3082007f" + "00" * 127, "minimally"),  # leading zero octet
        ("308500000000050203010001", "absurd"),  # 5-octet length field
        ("3089" + "ff" * 9, "absurd"),
        ("30", "truncated"),
        ("", "truncated"),
        ("3082ff", "truncated"),
        ("3005020101", "claims"),
        ("3003020101 00", "trailing"),
        ("1f2200", "multi-octet tag"),
    ],
)
def test_reader_rejects(data: str, match: str) -> None:
    with pytest.raises(der.DerError, match=match):
        der.parse(bytes.fromhex(data.replace(" ", "")))


def test_child_may_not_overrun_parent() -> None:
    parent = der.parse(bytes.fromhex("3003020501"))  # the INTEGER claims 5 octets, 1 is left
    with pytest.raises(der.DerError, match="claims 5"):
        parent.children()


def _walk(node: der.Tlv) -> int:
    return 1 + max((_walk(c) for c in node.children() if c.constructed), default=0)


def test_depth_limit() -> None:
    ok = b"\x05\x00"
    for _ in range(der.MAX_DEPTH):
        ok = der.sequence(ok)
    assert _walk(der.parse(ok)) == der.MAX_DEPTH
    deep = der.sequence(ok)
    with pytest.raises(der.DerError, match="nesting"):
        _walk(der.parse(deep))


def test_thousands_deep_is_a_der_error_not_recursion() -> None:
    data = b"\x05\x00"
    for _ in range(3000):
        data = der.sequence(data)
    with pytest.raises(der.DerError):
        _walk(der.parse(data))


def test_children_of_primitive_and_unwrap() -> None:
    with pytest.raises(der.DerError, match="constructed"):
        der.parse(der.integer(5)).children()
    with pytest.raises(der.DerError, match="exactly one"):
        der.parse(der.explicit(0, der.integer(1) + der.integer(2))).unwrap()
    with pytest.raises(der.DerError, match="expected tag"):
        der.parse(der.integer(1)).expect(der.SEQUENCE, "x")


def test_writer_shapes() -> None:
    assert der.implicit(6, der.sequence(der.NULL_DER), constructed=True) == b"\xa6\x02\x05\x00"
    assert der.implicit(1, der.integer(5), constructed=False) == b"\x81\x01\x05"
    assert der.set_of(der.integer(2), der.integer(1)) == der.tlv(
        der.SET, der.integer(1) + der.integer(2)
    )
    assert der.boolean(True) == b"\x01\x01\xff" and der.boolean(False) == b"\x01\x01\x00"
    assert der.parse(der.utf8_string("Grüße")).as_text() == "Grüße"
    with pytest.raises(der.DerError, match="UTF-8"):
        der.parse(der.tlv(der.UTF8_STRING, b"\xff\xfe")).as_text()


# ---------------------------------------------------------------------------------------------
# Time


@given(S.times)
def test_generalized_time_round_trip(value: datetime) -> None:
    data = der.generalized_time(value)
    assert len(data) == 17
    assert der.parse(data).as_time() == value


@pytest.mark.parametrize(
    ("tag", "text", "expected"),
    [
        (der.UTC_TIME, "491231235959Z", datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)),
        (der.UTC_TIME, "500101000000Z", datetime(1950, 1, 1, tzinfo=UTC)),  # RFC 5280 pivot
        (der.UTC_TIME, "690101000000Z", datetime(1969, 1, 1, tzinfo=UTC)),
        (der.GENERALIZED_TIME, "20250101000000Z", datetime(2025, 1, 1, tzinfo=UTC)),
    ],
)
def test_time_values(tag: int, text: str, expected: datetime) -> None:
    assert der.parse(der.tlv(tag, text.encode())).as_time() == expected


@pytest.mark.parametrize(
    ("tag", "text"),
    [
        (der.GENERALIZED_TIME, "2025111000000Z"),  # one-digit month: strptime took it
        (der.GENERALIZED_TIME, "20250101000000"),  # no Z
        (der.GENERALIZED_TIME, "20250101000000+0100"),
        (der.GENERALIZED_TIME, "20250101000000.5Z"),
        (der.GENERALIZED_TIME, "20251301000000Z"),
        (der.GENERALIZED_TIME, "2025 101000000Z"),
        (der.UTC_TIME, "2501010000Z"),  # no seconds
        (der.UTC_TIME, "25010100000\xffZ"),
        (der.INTEGER, "20250101000000Z"),
    ],
)
def test_time_rejects(tag: int, text: str) -> None:
    with pytest.raises(der.DerError, match="time"):
        der.parse(der.tlv(tag, text.encode("latin-1"))).as_time()


def test_every_reader_error_is_a_fleet_error() -> None:
    assert issubclass(der.DerError, FleetError)


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_reader_on_random_bytes(data: bytes) -> None:
    """Walk everything and read every primitive every way: only DerError may escape."""
    try:
        root = der.parse(data)
        stack = [root]
        while stack:
            node = stack.pop()
            if node.constructed:
                stack.extend(node.children())
                continue
            for read in (
                node.as_int,
                node.as_bits,
                node.as_named_bits,
                node.as_oid,
                node.as_text,
                node.as_time,
            ):
                try:
                    read()
                except der.DerError:
                    pass
    except der.DerError:
        pass


def _outcome(fn, data: bytes, pos: int, end: int) -> object:  # type: ignore[no-untyped-def]
    try:
        return fn(data, pos, end)
    except der.DerError as exc:
        return ("error", str(exc))


@settings(max_examples=400, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=8),
        st.tuples(st.integers(0, 255), st.sampled_from([0x81, 0x82, 0x83, 0x80, 0x7F, 0x00]), st.binary(max_size=600)).map(
            lambda t: bytes([t[0], t[1]]) + t[2]
        ),
        st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=300)).map(
            lambda t: bytes([0x30, 0x82, t[0] >> 8, t[0] & 0xFF]) + t[1]
        ),
    ),
    cut=st.integers(0, 8),
)
def test_read_tlv_agrees_with_the_general_reader(data: bytes, cut: int) -> None:
    """The inline reader accepts and rejects exactly what the general one does."""
    end = max(0, len(data) - cut)
    assert _outcome(der.read_tlv, data, 0, end) == _outcome(der._read_header, data, 0, end)


@given(number=st.integers(0, 8), value=st.binary(max_size=300))
def test_explicit_octets_is_explicit_of_octet_string(number: int, value: bytes) -> None:
    assert der.explicit_octets(number, value) == der.explicit(number, der.octet_string(value))


def test_swappable_functions_refuse_keywords_whichever_is_installed() -> None:
    """The C read_tlv and tlv (fleet/cmp/_der.c) take positional arguments only; the Python
    references must too, or a keyword caller would work only where the extension is not built."""
    for read in (der.read_tlv, der.python_read_tlv):
        with pytest.raises(TypeError):
            read(data=b"\x04\x00", pos=0, end=2)  # type: ignore[call-arg]
    for write in (der.tlv, der.python_tlv):
        with pytest.raises(TypeError):
            write(tag=4, content=b"")  # type: ignore[call-arg]
    assert der.read_tlv(b"\x04\x00", 0, 2) == (4, 2, 2) and der.tlv(4, b"") == b"\x04\x00"
