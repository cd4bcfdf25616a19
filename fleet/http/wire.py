"""HTTP/1.x framing without I/O: the CMP client's response head parser, a chunked decoder that
the client (responses) and the server (request bodies) share, and the server's judgement of
request heads outside its fast path.

h11 costs a large share of a CMP client's CPU per request (bench/README.md); a CMP client
needs only one request shape and one response shape, so it frames them itself. The server keeps
h11 for request heads outside its fast path, where inputs are hostile and varied; chunked bodies
are decoded here because h11 does not say a chunk's declared size before its data arrives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import h11

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
                if self._trailers:
                    max_line = self.max_trailer_bytes - self._trailer_bytes
                else:
                    max_line = MAX_CHUNK_LINE
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


# -- request heads, for the server -------------------------------------------------------------

# A ClientHello's record type: a TLS client talking to a plain port.
_TLS_HANDSHAKE = 0x16
_TLS_ON_PLAIN_PORT = b"this is a plain HTTP server, not TLS: use http://, not https://\n"
# h11's request-line grammar: a complete first line that does not match can never be served.
_REQUEST_LINE_RE = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+ [\x21-\x7e]+ HTTP/[0-9]\.[0-9]")
# How every header line h11 accepts begins (obs-fold continuation lines aside).
_FIELD_NAME_RE = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+:")


def hopeless_request_head(
    buf: bytearray, checked: int, plain: bool
) -> tuple[tuple[int, bytes] | None, int]:
    """Judge the complete lines of an incomplete head from offset ``checked`` on: ((status,
    text) to refuse it with at once, or None to wait for more; the offset checked up to).

    Without this a request that can never be valid waits for its deadline: a TLS ClientHello
    (no CRLF CRLF ever comes), a request line without an HTTP version, a header line without
    a name. Only what h11 would refuse too is refused here; each byte is looked at once."""
    if checked == 0 and buf[0] not in _TOKEN_CHARS:
        return (400, _TLS_ON_PLAIN_PORT if buf[0] == _TLS_HANDSHAKE and plain else b""), 0
    while True:
        line_end = buf.find(b"\n", checked)
        if line_end < 0:
            return None, checked
        line = bytes(buf[checked : line_end - 1 if buf[line_end - 1] == 0x0D else line_end])
        if checked == 0:
            if _REQUEST_LINE_RE.fullmatch(line) is None:
                return (400, b""), checked
        elif not line:
            return None, checked  # the end of the head: the caller finds it
        elif line[0] not in b" \t" and _FIELD_NAME_RE.match(line) is None:
            return (400, b""), checked
        checked = line_end + 1


RequestHead = tuple[str, str, str, list[tuple[bytes, bytes]], int, bool, bool]


def parse_request_head_h11(buf: bytearray) -> RequestHead | int:
    """A complete head outside the fast path's shape, judged by a fresh h11 parser and removed
    from ``buf``: (method, target, version, headers, Content-Length, chunked, expects 100), or
    the error status to answer.

    On top of h11: a major version other than 1 gets 505, and Transfer-Encoding together with
    Content-Length, or in HTTP/1.0, gets 400 (RFC 9112 §6.1, §6.3: framing a proxy may read
    differently, the stuff of request smuggling)."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    data = bytes(buf)
    parser.receive_data(data)
    try:
        event = parser.next_event()
    except h11.RemoteProtocolError as exc:
        return exc.error_status_hint or 400
    if type(event) is not h11.Request:
        return 400  # (NEED_DATA cannot happen: ``buf`` holds the blank line)
    version = event.http_version
    if not version.startswith(b"1."):
        return 505
    chunked = False
    length: int | None = None
    for name, value in event.headers:
        if name == b"transfer-encoding":
            chunked = True  # h11 allows only "chunked", once
        elif name == b"content-length":
            length = int(value)  # h11 checked: digits, at most 20, one value
    if chunked and (length is not None or version == b"1.0"):
        return 400
    del buf[: len(data) - len(parser.trailing_data[0])]
    return (
        event.method.decode("ascii"),
        event.target.decode("ascii", "replace"),
        "1.0" if version == b"1.0" else "1.1",  # a later 1.x is answered as 1.1 (RFC 9110 §2.5)
        list(event.headers),
        length or 0,
        chunked,
        parser.client_is_waiting_for_100_continue,
    )
