"""Minimal DER: a writer for the shapes CMP needs and a strict TLV reader.

pyasn1 costs orders of magnitude more per CMP message than these helpers (bench/codec_speed.py
measures both). They know nothing of CMP: ``messages`` composes them. The reader is strict
(definite lengths that fit their parent, minimal length octets, bounded nesting) because it reads
bytes from hostile peers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from types import ModuleType

from fleet.cmp import _accel
from fleet.errors import FleetError

# Universal tags used by CMP.
BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
ENUMERATED = 0x0A
UTF8_STRING = 0x0C
SEQUENCE = 0x30
SET = 0x31
PRINTABLE_STRING = 0x13
IA5_STRING = 0x16
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18

NULL_DER = b"\x05\x00"


class DerError(FleetError):
    """Bytes that are not the DER we expect; the message says where and what."""


# ---------------------------------------------------------------------------------------------
# Writer


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes, /) -> bytes:
    """One TLV with a single-octet tag (all tags CMP uses fit in one octet).

    Positional-only, like read_tlv and the C versions that may replace all three."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    return bytes((tag,)) + _length(n) + content


def sequence(*parts: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(parts))


def set_of(*parts: bytes) -> bytes:
    return tlv(SET, b"".join(sorted(parts)))


def explicit(number: int, content: bytes) -> bytes:
    """``[number] EXPLICIT``: a constructed context tag around a whole TLV."""
    return tlv(0xA0 | number, content)


def explicit_octets(number: int, value: bytes) -> bytes:
    """``[number] EXPLICIT OCTET STRING`` (header nonces, IDs, KIDs); both headers in one go for
    the usual short values."""
    n = len(value)
    if n < 126:
        return bytes((0xA0 | number, n + 2, OCTET_STRING, n)) + value
    return explicit(number, octet_string(value))


def implicit(number: int, tlv_bytes: bytes, *, constructed: bool) -> bytes:
    """``[number] IMPLICIT``: replace the tag octet of an already encoded TLV."""
    tag = (0xA0 if constructed else 0x80) | number
    return bytes((tag,)) + tlv_bytes[1:]


def integer(value: int) -> bytes:
    if value == 0:
        return b"\x02\x01\x00"
    # Room for the sign bit. For negatives, ~value (= -value - 1) gives the magnitude bits, so
    # -128 is one octet (0x80), not the non-minimal 0xff80 the strict reader rejects.
    length = ((value if value >= 0 else ~value).bit_length() + 8) // 8
    return tlv(INTEGER, value.to_bytes(length, "big", signed=True))


def octet_string(value: bytes) -> bytes:
    return tlv(OCTET_STRING, value)


def bit_string(value: bytes, unused_bits: int = 0) -> bytes:
    return tlv(BIT_STRING, bytes((unused_bits,)) + value)


def named_bits(bits: int) -> bytes:
    """A BIT STRING of named bits (bit 0 first), DER-minimal: trailing zero bits removed."""
    if bits == 0:
        return b"\x03\x01\x00"
    nbits = bits.bit_length()
    nbytes = (nbits + 7) // 8
    value = 0
    for i in range(nbits):  # bit i of the ASN.1 string is the most significant first
        if bits >> i & 1:
            value |= 1 << (nbytes * 8 - 1 - i)
    return bit_string(value.to_bytes(nbytes, "big"), nbytes * 8 - nbits)


def utf8_string(value: str) -> bytes:
    return tlv(UTF8_STRING, value.encode("utf-8"))


def boolean(value: bool) -> bytes:
    return b"\x01\x01\xff" if value else b"\x01\x01\x00"


@lru_cache(maxsize=8)
def generalized_time(value: datetime) -> bytes:
    """GeneralizedTime in UTC, whole seconds (DER forbids fractional zeros and offsets).

    Cached: every message of a second carries the same messageTime."""
    value = value.astimezone(UTC)
    # f"{year:04d}", not strftime("%Y"), which writes years before 1000 with fewer digits.
    text = f"{value.year:04d}{value:%m%d%H%M%S}Z"
    return tlv(GENERALIZED_TIME, text.encode("ascii"))


@lru_cache(maxsize=512)
def oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER TLV; cached because CMP repeats a handful of OIDs."""
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
        raise ValueError(f"not an OID: {dotted!r}")
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return tlv(OID, bytes(out))


def algorithm_identifier(dotted: str, parameters: bytes | None = None) -> bytes:
    """AlgorithmIdentifier; ``parameters`` is an encoded TLV (``NULL_DER`` where required)."""
    return sequence(oid(dotted), parameters or b"")


# ---------------------------------------------------------------------------------------------
# Reader

MAX_DEPTH = 32
# No CMP structure needs more elements; a hostile message of millions of empty ones would cost
# seconds and hundreds of MB to materialise.
MAX_CHILDREN = 4096


class Tlv:
    """One decoded TLV: a view of ``data[start:end]`` whose content is ``data[cstart:end]``.

    Slices are taken only on request, so walking a 1 KB message allocates little.
    """

    __slots__ = ("cstart", "data", "depth", "end", "start", "tag")

    def __init__(self, data: bytes, tag: int, start: int, cstart: int, end: int, depth: int):
        self.data = data
        self.tag = tag
        self.start = start
        self.cstart = cstart
        self.end = end
        self.depth = depth

    @property
    def raw(self) -> bytes:
        """The whole TLV as received (what signatures and MACs are computed over)."""
        return self.data[self.start : self.end]

    @property
    def content(self) -> bytes:
        return self.data[self.cstart : self.end]

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)

    def children(self) -> list[Tlv]:
        """The TLVs inside a constructed TLV, in order."""
        if not self.tag & 0x20:
            raise DerError(f"expected a constructed value, got tag 0x{self.tag:02x}")
        depth = self.depth + 1
        if depth > MAX_DEPTH:
            raise DerError("nesting deeper than CMP ever needs")
        data, pos, end, read = self.data, self.cstart, self.end, read_tlv
        out = []
        while pos < end:
            tag, cstart, cend = read(data, pos, end)
            out.append(Tlv(data, tag, pos, cstart, cend, depth))
            pos = cend
            if len(out) > MAX_CHILDREN:
                raise DerError(f"more than {MAX_CHILDREN} values in one structure")
        return out

    def expect(self, tag: int, what: str) -> Tlv:
        if self.tag != tag:
            raise DerError(f"{what}: expected tag 0x{tag:02x}, got 0x{self.tag:02x}")
        return self

    def unwrap(self) -> Tlv:
        """The single TLV inside an EXPLICIT tag."""
        data, cs, end = self.data, self.cstart, self.end
        # Fast path: one short-form TLV filling the content exactly (nonces, IDs, times, ...).
        if (
            self.tag & 0x20
            and cs + 2 <= end
            and data[cs + 1] + cs + 2 == end
            and data[cs + 1] < 0x80
            and data[cs] & 0x1F != 0x1F
            and self.depth < MAX_DEPTH
        ):
            return Tlv(data, data[cs], cs, cs + 2, end, self.depth + 1)
        inner = self.children()
        if len(inner) != 1:
            raise DerError(f"explicit tag 0x{self.tag:02x} must hold exactly one value")
        return inner[0]

    def as_int(self) -> int:
        c = self.content
        if not c or (len(c) > 1 and ((c[0] == 0 and c[1] < 0x80) or (c[0] == 0xFF and c[1] >= 0x80))):
            raise DerError("INTEGER is empty or not minimally encoded")
        if len(c) > 64:
            raise DerError("INTEGER longer than 512 bits")
        return int.from_bytes(c, "big", signed=True)

    def as_bits(self) -> tuple[bytes, int]:
        c = self.content
        if not c or c[0] > 7 or (len(c) == 1 and c[0] != 0):
            raise DerError("malformed BIT STRING")
        if c[-1] & ((1 << c[0]) - 1):  # X.690 11.2.1
            raise DerError("BIT STRING has unused bits that are not zero")
        return c[1:], c[0]

    def as_named_bits(self) -> int:
        """A named-bit BIT STRING as an int whose bit i is ASN.1 bit i."""
        value, unused = self.as_bits()
        nbits = len(value) * 8 - unused
        if not nbits:
            return 0
        # Reverse the bit order through a binary string: linear time. Summing 1 << i per set bit
        # was quadratic, so a 30 KB failInfo from a hostile peer cost over a second.
        as_int = int.from_bytes(value, "big") >> unused
        return int(format(as_int, f"0{nbits}b")[::-1], 2)

    def as_oid(self) -> str:
        return decode_oid(self.expect(OID, "OBJECT IDENTIFIER").content)

    def as_text(self) -> str:
        try:
            return self.content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DerError("string is not valid UTF-8") from exc

    def as_time(self) -> datetime:
        return time_value(self.tag, self.content)


_TIME_SIZES = {GENERALIZED_TIME: 15, UTC_TIME: 13}


@lru_cache(maxsize=256)
def time_value(tag: int, c: bytes) -> datetime:
    """GeneralizedTime ``YYYYMMDDHHMMSSZ`` or UTCTime ``YYMMDDHHMMSSZ``, the only DER forms.

    Cached (datetimes are immutable): the messageTime of every message within one second is the
    same value, so a busy peer parses it about once a second instead of 2,000 times.

    The length and digit checks matter: ``strptime`` alone takes ``2024111...`` (one-digit
    fields). UTCTime years 50-99 are 19xx (RFC 5280 §4.1.2.5.1), not Python's 69 pivot.
    """
    size = _TIME_SIZES.get(tag)
    if size is not None and len(c) == size and c[-1:] == b"Z" and c[:-1].isdigit():
        # int() on fixed slices, not strptime (far slower, and on every message's messageTime);
        # datetime() still rejects out-of-range fields.
        try:
            if tag == GENERALIZED_TIME:
                year, rest = int(c[0:4]), 4
            else:
                year, rest = int(c[0:2]), 2
                year += 1900 if year >= 50 else 2000
            return datetime(
                year, int(c[rest:rest + 2]), int(c[rest + 2:rest + 4]), int(c[rest + 4:rest + 6]),
                int(c[rest + 6:rest + 8]), int(c[rest + 8:rest + 10]), tzinfo=UTC,
            )
        except ValueError:
            pass
    raise DerError(f"malformed time value {c.decode('ascii', 'replace')[:32]!r}")


MAX_OID_ARC_OCTETS = 20  # 140 bits: room for 2.25.<UUID> arcs (128 bits)


def decode_oid(content: bytes) -> str:
    if not content or content[-1] & 0x80:
        raise DerError("malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    octets = 0  # octets in the arc being read
    for byte in content:
        if octets == 0 and byte == 0x80:
            raise DerError("OBJECT IDENTIFIER arc is not minimally encoded")
        octets += 1
        if octets > MAX_OID_ARC_OCTETS:  # bounds int->str work (and Python's 4300-digit limit)
            raise DerError("OBJECT IDENTIFIER arc is absurdly long")
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
            octets = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(map(str, head + arcs[1:]))


def read_tlv(data: bytes, pos: int, end: int, /) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at ``pos``, bounded by ``end``.

    Lengths below 64 KiB are read inline; anything else, and every error, goes through the
    general reader, so both accept and reject exactly the same input.
    """
    if pos + 2 <= end:
        tag = data[pos]
        if tag & 0x1F != 0x1F:
            first = data[pos + 1]
            if first < 0x80:
                cend = pos + 2 + first
                if cend <= end:
                    return tag, pos + 2, cend
            elif first == 0x81:
                if pos + 3 <= end:
                    n = data[pos + 2]
                    cend = pos + 3 + n
                    if n >= 0x80 and cend <= end:
                        return tag, pos + 3, cend
            elif first == 0x82 and pos + 4 <= end:
                n = data[pos + 2] << 8 | data[pos + 3]
                cend = pos + 4 + n
                if n >= 0x100 and cend <= end:
                    return tag, pos + 4, cend
    return _read_header(data, pos, end)


def _read_header(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Return (tag, content start, content end) of the TLV at ``pos``, bounded by ``end``."""
    if pos + 2 > end:
        raise DerError(f"truncated TLV at offset {pos}")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError(f"multi-octet tag at offset {pos} is not used by CMP")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError(f"indefinite length at offset {pos - 2} is not DER")
    else:
        n = first & 0x7F
        if n > 4:
            raise DerError(f"length field of {n} octets at offset {pos - 2} is absurd")
        if pos + n > end:
            raise DerError(f"truncated length at offset {pos - 2}")
        length = int.from_bytes(data[pos : pos + n], "big")
        if length < 0x80 or data[pos] == 0:
            raise DerError(f"length at offset {pos - 2} is not minimally encoded")
        pos += n
    if pos + length > end:
        raise DerError(f"value at offset {pos} claims {length} bytes but only {end - pos} remain")
    return tag, pos, pos + length


def parse(data: bytes) -> Tlv:
    """Parse exactly one TLV that spans all of ``data``."""
    if not isinstance(data, bytes):
        data = bytes(data)
    tag, cstart, cend = read_tlv(data, 0, len(data))
    if cend != len(data):
        raise DerError(f"{len(data) - cend} trailing bytes after the message")
    return Tlv(data, tag, 0, cstart, cend, 0)


# ---------------------------------------------------------------------------------------------
# The optional C versions of the three busiest functions (fleet/cmp/_der.c)

python_read_tlv, python_tlv, python_sequence = read_tlv, tlv, sequence  # the references


def _probe(ext: ModuleType) -> bool:
    """Whether ``_der`` answers as the Python functions on probes that cover each branch. It
    hands the uncommon cases (and every error) to the Python functions given to ``install``."""
    ext.install(python_read_tlv, python_tlv, python_sequence)
    probes = [b"\x30\x03\x02\x01\x05", b"\x04\x81\x80" + bytes(128), b"\x30\x82\x01\x00" + bytes(256)]
    contents = [b"", b"x" * 127, b"x" * 128, b"x" * 255, b"x" * 256, b"x" * 70_000]
    return (
        all(ext.read_tlv(p, 0, len(p)) == python_read_tlv(p, 0, len(p)) for p in probes)
        and all(ext.tlv(0xA3, c) == python_tlv(0xA3, c) for c in contents)
        and ext.sequence(*contents) == python_sequence(*contents)
        and ext.sequence() == python_sequence()
    )


def _install(ext: ModuleType) -> None:
    """Bind the C functions here. Every caller looks them up in this module at call time (or
    imports them after it has loaded), so the swap is complete."""
    global read_tlv, tlv, sequence
    read_tlv, tlv, sequence = ext.read_tlv, ext.tlv, ext.sequence


IMPLEMENTATION = _accel.accelerate("_der", _probe, _install)
