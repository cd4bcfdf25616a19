"""Transport errors of fleet's CMP-over-HTTP client: the HTTP members of ``fleet.transport``'s
``TransportError`` family (re-exported here).

Every error names the URL (without any userinfo) as its ``peer`` and the problem in one line,
never a message body. Each carries a short stable ``kind`` that metrics use as a bounded label
value: the set of kinds is fixed (``http_<status>`` is bounded by the three-digit status codes).
Both timeouts are ``TransportTimeout``s.
"""

from __future__ import annotations

from fleet.errors import FleetError
from fleet.transport import TransportError, TransportTimeout

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "HttpStatusError",
    "InvalidUrl",
    "ProtocolError",
    "ReadTimeout",
    "ResponseTooLarge",
    "TransportError",
    "TransportTimeout",
]


class InvalidUrl(FleetError, ValueError):
    """The CA URL given to the client cannot be used (bad scheme, no host, bad port)."""


class ConnectError(TransportError):
    """No connection could be made: refused, unreachable, unresolvable, or TLS handshake failed."""

    kind = "connect"


class ConnectTimeout(TransportTimeout):
    """The TCP connect (and TLS handshake) did not finish within the connect timeout."""

    kind = "connect_timeout"


class ReadTimeout(TransportTimeout):
    """No complete response arrived within the request timeout."""

    kind = "timeout"


class ConnectionLost(TransportError):
    """The server closed or reset the connection before the response was complete."""

    kind = "connection_lost"


class HttpStatusError(TransportError):
    """The server answered without a CMP body (e.g. 503 text/html from a proxy)."""

    def __init__(self, url: str, status: int, content_type: str | None) -> None:
        self.status = status
        self.content_type = content_type
        kind = f"http_{status}" if 100 <= status <= 599 else "http_other"
        ctype = content_type if content_type is not None else "no Content-Type"
        super().__init__(url, f"HTTP {status} with {ctype}, not a CMP response", kind=kind)


class ResponseTooLarge(TransportError):
    """The response body exceeds the client's limit; it was not read in full."""

    kind = "too_large"

    def __init__(self, url: str, limit: int, declared: int | None = None) -> None:
        self.limit = limit
        self.declared = declared
        if declared is not None:
            problem = f"response of {declared} bytes exceeds the limit of {limit} bytes"
        else:
            problem = f"response exceeds the limit of {limit} bytes"
        super().__init__(url, problem)


class ProtocolError(TransportError):
    """The server's bytes are not valid HTTP/1.1."""

    kind = "protocol"
