"""fleet's HTTP layer for CMP (RFC 9811, RFC 9483 §6.1): a pooled h11 client and an h11 server."""

from fleet.http.client import (
    CMP_CONTENT_TYPE,
    CMP_OPERATIONS,
    CmpHttpClient,
    CmpHttpResponse,
    PoolStatistics,
    cmp_path,
    default_ssl_context,
)
from fleet.http.errors import (
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    HttpStatusError,
    InvalidUrl,
    ProtocolError,
    ReadTimeout,
    ResponseTooLarge,
    TransportError,
)
from fleet.http.server import Handler, HttpRequest, HttpResponse, HttpServerStats, serve_http

__all__ = [
    "CMP_CONTENT_TYPE",
    "CMP_OPERATIONS",
    "CmpHttpClient",
    "CmpHttpResponse",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "Handler",
    "HttpRequest",
    "HttpResponse",
    "HttpServerStats",
    "HttpStatusError",
    "InvalidUrl",
    "PoolStatistics",
    "ProtocolError",
    "ReadTimeout",
    "ResponseTooLarge",
    "TransportError",
    "cmp_path",
    "default_ssl_context",
    "serve_http",
]
