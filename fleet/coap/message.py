"""The CoAP message codec (RFC 7252 §3): header, token, options with delta/length encoding,
payload marker; plus the option values CMP over CoAP (RFC 9482) needs and the Block option
value (RFC 7959 §2.2). Pure functions over bytes: no sockets, no clock.

``decode`` refuses anything malformed with a ``CoapFormatError`` whose text is one line naming
the problem, so a hostile datagram costs one exception and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.errors import FleetError

__all__ = [
    "ACK",
    "CON",
    "NON",
    "RST",
    "Block",
    "CoapFormatError",
    "Code",
    "Message",
    "Opt",
    "code_text",
    "decode",
    "encode",
    "uint_bytes",
    "uint_value",
]

CON, NON, ACK, RST = 0, 1, 2, 3
TYPE_NAMES = ("CON", "NON", "ACK", "RST")

#: Media type of CMP messages (RFC 9482 §3, CoAP Content-Formats registry).
PKIXCMP = 259


class Code:
    """Codes as their single-byte value (class << 5 | detail)."""

    EMPTY = 0
    GET = 1
    POST = 2
    CREATED = 0x41  # 2.01
    CHANGED = 0x44  # 2.04
    CONTENT = 0x45  # 2.05
    CONTINUE = 0x5F  # 2.31 (RFC 7959)
    BAD_REQUEST = 0x80  # 4.00
    BAD_OPTION = 0x82  # 4.02
    NOT_FOUND = 0x84  # 4.04
    METHOD_NOT_ALLOWED = 0x85  # 4.05
    REQUEST_ENTITY_INCOMPLETE = 0x88  # 4.08
    REQUEST_ENTITY_TOO_LARGE = 0x8D  # 4.13
    UNSUPPORTED_CONTENT_FORMAT = 0x8F  # 4.15
    INTERNAL_SERVER_ERROR = 0xA0  # 5.00
    SERVICE_UNAVAILABLE = 0xA3  # 5.03


def code_text(code: int) -> str:
    """``2.04`` style, as RFC 7252 writes codes."""
    return f"{code >> 5}.{code & 0x1F:02d}"


class Opt:
    """Option numbers used here (RFC 7252 §5.10, RFC 7959 §2.1, RFC 9175 §3.2)."""

    IF_MATCH = 1
    URI_HOST = 3
    ETAG = 4
    OBSERVE = 6
    URI_PORT = 7
    URI_PATH = 11
    CONTENT_FORMAT = 12
    MAX_AGE = 14
    URI_QUERY = 15
    ACCEPT = 17
    BLOCK2 = 23
    BLOCK1 = 27
    SIZE2 = 28
    SIZE1 = 60
    REQUEST_TAG = 292

    #: Critical options this implementation understands (odd numbers are critical, §5.4.1).
    UNDERSTOOD_CRITICAL = frozenset({IF_MATCH, URI_HOST, URI_PORT, URI_PATH, URI_QUERY, ACCEPT,
                                     BLOCK2, BLOCK1, REQUEST_TAG})


class CoapFormatError(FleetError, ValueError):
    """A datagram that is not a valid CoAP message (one line naming the problem)."""


#: Bounds that keep one hostile datagram cheap: real messages stay far below them.
MAX_OPTIONS = 64
MAX_OPTION_LENGTH = 1034  # RFC 7252 §5.10: Proxy-Uri, the longest registered, is 1..1034


@dataclass(slots=True)
class Message:
    """One CoAP message. ``options`` is a list of (number, value) in ascending number order,
    repeated options adjacent (``encode`` sorts stably, so callers may append in any order)."""

    mtype: int
    code: int
    mid: int
    token: bytes = b""
    options: list[tuple[int, bytes]] = field(default_factory=list)
    payload: bytes = b""

    def option(self, number: int) -> bytes | None:
        """The first value of option ``number`` or None."""
        for n, value in self.options:
            if n == number:
                return value
        return None

    def option_all(self, number: int) -> list[bytes]:
        return [value for n, value in self.options if n == number]

    def uint_option(self, number: int) -> int | None:
        value = self.option(number)
        return None if value is None else uint_value(value)

    def path(self) -> tuple[str, ...]:
        """Uri-Path segments, decoded as UTF-8 (RFC 7252 §6.5: each a string option)."""
        try:
            return tuple(v.decode("utf-8") for v in self.option_all(Opt.URI_PATH))
        except UnicodeDecodeError:
            raise CoapFormatError("a Uri-Path option is not UTF-8") from None

    def block(self, number: int) -> Block | None:
        value = self.option(number)
        return None if value is None else Block.decode(value)

    @property
    def is_request(self) -> bool:
        return 1 <= self.code <= 31

    @property
    def is_response(self) -> bool:
        return self.code >= 64

    def describe(self) -> str:
        return f"{TYPE_NAMES[self.mtype]} {code_text(self.code)} mid={self.mid}"


def uint_bytes(value: int) -> bytes:
    """RFC 7252 §3.2 uint: the shortest big-endian form (0 is the empty string)."""
    if value < 0:
        raise ValueError("uint options are not negative")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def uint_value(data: bytes) -> int:
    if len(data) > 4:
        raise CoapFormatError(f"a uint option of {len(data)} bytes (at most 4)")
    return int.from_bytes(data, "big")


@dataclass(frozen=True, slots=True)
class Block:
    """A Block1/Block2 value (RFC 7959 §2.2): block ``num``, ``more`` flag, size 2**(szx+4)."""

    num: int
    more: bool
    szx: int

    @property
    def size(self) -> int:
        return 1 << (self.szx + 4)

    @property
    def offset(self) -> int:
        return self.num * self.size

    def encode(self) -> bytes:
        if not 0 <= self.szx <= 6:
            raise ValueError(f"SZX must be 0..6, got {self.szx}")
        if not 0 <= self.num < 1 << 20:
            raise ValueError(f"block number out of range: {self.num}")
        return uint_bytes(self.num << 4 | (8 if self.more else 0) | self.szx)

    @classmethod
    def decode(cls, data: bytes) -> Block:
        if len(data) > 3:
            raise CoapFormatError(f"a Block option of {len(data)} bytes (at most 3)")
        value = int.from_bytes(data, "big")
        szx = value & 7
        if szx == 7:
            raise CoapFormatError("Block option with SZX 7 (reserved; BERT is TCP only)")
        return cls(value >> 4, bool(value & 8), szx)


def encode(msg: Message) -> bytes:
    """The datagram for ``msg`` (RFC 7252 §3)."""
    token = msg.token
    if len(token) > 8:
        raise ValueError("token longer than 8 bytes")
    if not 0 <= msg.mid <= 0xFFFF:
        raise ValueError(f"message ID out of range: {msg.mid}")
    out = bytearray(
        (0x40 | msg.mtype << 4 | len(token), msg.code, msg.mid >> 8, msg.mid & 0xFF)
    )
    out += token
    last = 0
    for number, value in sorted(msg.options, key=lambda o: o[0]):
        delta = number - last
        last = number
        length = len(value)
        d, d_ext = _nibble(delta)
        n, n_ext = _nibble(length)
        out.append(d << 4 | n)
        out += d_ext
        out += n_ext
        out += value
    if msg.payload:
        out.append(0xFF)
        out += msg.payload
    return bytes(out)


def _nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    if value < 65805:
        return 14, (value - 269).to_bytes(2, "big")
    raise ValueError(f"option delta or length too large: {value}")


def decode(data: bytes) -> Message:
    """Parse one datagram; ``CoapFormatError`` names what is wrong."""
    size = len(data)
    if size < 4:
        raise CoapFormatError(f"datagram of {size} bytes is shorter than the 4-byte CoAP header")
    first = data[0]
    if first >> 6 != 1:
        raise CoapFormatError(f"CoAP version {first >> 6} (only version 1 exists)")
    mtype = first >> 4 & 3
    tkl = first & 0x0F
    if tkl > 8:
        raise CoapFormatError(f"token length {tkl} is reserved (at most 8)")
    code = data[1]
    if code >> 5 in (1, 6, 7):
        raise CoapFormatError(f"code {code_text(code)} is in a reserved class")
    mid = data[2] << 8 | data[3]
    pos = 4 + tkl
    if pos > size:
        raise CoapFormatError("datagram ends inside the token")
    token = bytes(data[4:pos])
    if code == Code.EMPTY:
        if size != 4 or tkl:
            raise CoapFormatError("an Empty message (code 0.00) has bytes after the header")
        return Message(mtype, code, mid)
    options: list[tuple[int, bytes]] = []
    number = 0
    payload = b""
    while pos < size:
        byte = data[pos]
        pos += 1
        if byte == 0xFF:
            if pos == size:
                raise CoapFormatError("payload marker followed by no payload")
            payload = bytes(data[pos:])
            break
        delta, pos = _extended(byte >> 4, data, pos, "delta")
        length, pos = _extended(byte & 0x0F, data, pos, "length")
        if length > MAX_OPTION_LENGTH:
            raise CoapFormatError(f"option of {length} bytes (at most {MAX_OPTION_LENGTH})")
        if pos + length > size:
            raise CoapFormatError("datagram ends inside an option value")
        number += delta
        if len(options) == MAX_OPTIONS:
            raise CoapFormatError(f"more than {MAX_OPTIONS} options")
        options.append((number, bytes(data[pos : pos + length])))
        pos += length
    if mtype == ACK and code != Code.EMPTY and 1 <= code <= 31:
        raise CoapFormatError("an ACK carrying a request code")
    if mtype == RST:
        raise CoapFormatError("a Reset message with a non-empty code")
    return Message(mtype, code, mid, token, options, payload)


def _extended(nibble: int, data: bytes, pos: int, what: str) -> tuple[int, int]:
    if nibble < 13:
        return nibble, pos
    if nibble == 13:
        if pos + 1 > len(data):
            raise CoapFormatError(f"datagram ends inside an extended option {what}")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 2 > len(data):
            raise CoapFormatError(f"datagram ends inside an extended option {what}")
        return (data[pos] << 8 | data[pos + 1]) + 269, pos + 2
    raise CoapFormatError(f"option {what} nibble 15 is reserved outside the payload marker")
