"""HTTP/1.x framing without I/O: the CMP client's response head parser, and a chunked decoder
that the client (responses) and the server (request bodies) share.

h11 cost ~70-80 µs of client CPU per request (measured by the http tests' bench); a CMP client
needs only one request shape and one response shape, so it frames them itself. The server keeps
h11 for request heads outside its fast path, where inputs are hostile and varied; chunked bodies
are decoded here because h11 does not say a chunk's declared size before its data arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

MAX_HEAD_BYTES = 16384

_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class WireError(Exception):
    """Malformed HTTP framing: the client turns it into ``ProtocolError``, the server answers
    ``status`` (400, or 431 for an oversized trailer section)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ResponseHead:
    version: bytes  # b"1.1" or b"1.0"
    status: int
    content_type: bytes | None
    content_length: int | None
    chunked: bool
    connection: frozenset[bytes]  # lower-case tokens of the Connection header
    media_type: bytes | None = field(default=None, compare=False)  # Content-Type without parameters, lower-case
    persistent: bool = field(default=False, compare=False)  # the server keeps the connection open
    bodiless: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        media = self.content_type.partition(b";")[0].strip().lower() if self.content_type is not None else None
        object.__setattr__(self, "media_type", media)
        persistent = b"close" not in self.connection and (
            self.version == b"1.1" or b"keep-alive" in self.connection
        )
        object.__setattr__(self, "persistent", persistent)
        object.__setattr__(self, "bodiless", self.status in (204, 304) or 100 <= self.status < 200)

@lru_cache(maxsize=256)
def parse_head(head: bytes) -> ResponseHead:
    """Parse a status line and headers (without the final CRLF CRLF).

    Cached: one server's answers repeat a few heads (the same length, the same second's Date),
    and a ``ResponseHead`` is immutable. Malformed heads raise, so they are never cached.
    """
    lines = head.split(b"\r\n")
    status_line = lines[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or parts[0][5:] not in (b"1.1", b"1.0"):
        raise WireError(f"bad status line {status_line[:60]!r}")
    if len(parts[1]) != 3 or not parts[1].isdigit():
        raise WireError(f"bad status code {parts[1][:10]!r}")
    content_type = None
    content_length: int | None = None
    chunked = False
    connection: set[bytes] = set()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or not _TOKEN_CHARS.issuperset(name):
            raise WireError(f"bad header line {line[:60]!r}")
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"content-length":
            if not value.isdigit() or len(value) > 15:
                raise WireError(f"bad Content-Length {value[:20]!r}")
            length = int(value)
            if content_length is not None and content_length != length:
                raise WireError("conflicting Content-Length headers")
            content_length = length
        elif name == b"content-type":
            content_type = value
        elif name == b"transfer-encoding":
            codings = [c.strip().lower() for c in value.split(b",")]
            if codings[-1] != b"chunked" or any(c not in (b"chunked", b"identity") for c in codings):
                raise WireError(f"unsupported Transfer-Encoding {value[:40]!r}")
            chunked = True
        elif name == b"connection":
            connection.update(t.strip().lower() for t in value.split(b","))
    if chunked:
        content_length = None  # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length
    return ResponseHead(
        parts[0][5:], int(parts[1]), content_type, content_length, chunked, frozenset(connection)
    )


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# Control characters other than HTAB (and DEL): never valid in a chunk extension or trailer value.
_CTL = frozenset(range(0x20)) - {0x09} | {0x7F}
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions


class ChunkedDecoder:
    """Feed bytes, collect the body; ``done`` once the last chunk and its trailers were read.

    Strict, because the same bytes must never frame differently here and in a proxy (RFC 9112
    §7.1): chunk sizes are hex digits only, every line ends in CRLF (a bare LF is an error at
    once rather than a wait for a CRLF that may never come), chunk data is followed by CRLF.
    Sizes are checked when declared, so a 2**80-byte chunk fails on its size line.

    Raises ``WireError`` on bad framing (``status`` 431 when the trailer section passes
    ``max_trailer_bytes``) and ``OverflowError`` once the declared body passes ``limit``.
    """

    def __init__(self, limit: int, max_trailer_bytes: int = MAX_HEAD_BYTES) -> None:
        self.limit = limit
        self.max_trailer_bytes = max_trailer_bytes
        self.size = 0
        self.parts: list[bytes] = []
        self.done = False
        self._buf = b""
        self._remaining: int | None = None  # chunk data still expected; None: a line is next
        self._trailers = False
        self._trailer_bytes = 0

    def feed(self, data: bytes | bytearray) -> bytes:
        """Consume ``data``; once done, returns the bytes after the body (else b"")."""
        buf = self._buf + data
        pos = 0
        while not self.done:
            if self._remaining is None:  # a chunk-size line, or a trailer line
                max_line = self.max_trailer_bytes - self._trailer_bytes if self._trailers else MAX_CHUNK_LINE
                end = buf.find(b"\n", pos)
                if end < 0 or end - pos > max_line:
                    if len(buf) - pos > max_line:
                        if self._trailers:
                            raise WireError("trailer section too large", 431)
                        raise WireError("chunk size line too long")
                    break
                if end == pos or buf[end - 1] != 0x0D:
                    raise WireError("bare LF in chunked framing")
                line = buf[pos : end - 1]
                pos = end + 1
                if self._trailers:
                    self._trailer_bytes += len(line) + 2
                    if line:
                        _check_trailer(line)
                    else:
                        self.done = True
                    continue
                size = _chunk_size(line)
                if size == 0:
                    self._trailers = True
                else:
                    self.size += size
                    if self.size > self.limit:
                        raise OverflowError(self.size)
                    self._remaining = size
            else:
                take = min(self._remaining, len(buf) - pos)
                if take:
                    self.parts.append(buf[pos : pos + take])
                    self._remaining -= take
                    pos += take
                if self._remaining or len(buf) - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise WireError("chunk data not followed by CRLF")
                pos += 2
                self._remaining = None
        self._buf = buf[pos:]
        if self.done:
            rest, self._buf = self._buf, b""
            return rest
        return b""

    def body(self) -> bytes:
        return b"".join(self.parts)


def _chunk_size(line: bytes) -> int:
    """The size of a chunk-size line (``1*HEXDIG [ chunk-ext ]``; extensions are ignored)."""
    size_text, _, extensions = line.partition(b";")
    size_text = size_text.rstrip(b" \t")  # BWS before the extensions; some senders pad
    if not size_text or not _HEX_DIGITS.issuperset(size_text):
        raise WireError(f"bad chunk size {size_text[:20]!r}")
    if not _CTL.isdisjoint(extensions):
        raise WireError("control character in a chunk extension")
    return int(size_text, 16)


def _check_trailer(line: bytes) -> None:
    name, sep, value = line.partition(b":")
    if not sep or not name or not _TOKEN_CHARS.issuperset(name) or not _CTL.isdisjoint(value):
        raise WireError(f"bad trailer line {line[:60]!r}")
