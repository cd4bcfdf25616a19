"""Which transport a CA URL takes: ``http://``/``https://`` (RFC 9811) or ``coap://`` (RFC 9482).

The CLI, load runs and provisioning all open their client here, so a new scheme is one branch
in one place.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import trio

from fleet.coap.transport import CoapSettings, CoapTransport
from fleet.http.client import CmpHttpClient

__all__ = ["is_coap", "open_client", "probe"]


def is_coap(url: str) -> bool:
    return urlsplit(url).scheme.lower() in ("coap", "coaps")


def open_client(
    url: str,
    *,
    max_connections: int = 100,
    timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    coap: CoapSettings | None = None,
    proxy: str | None = None,
) -> CmpHttpClient | CoapTransport:
    """The client for ``url``: one UDP socket for coap:// (``coap`` tunes it), else a pool of
    ``max_connections`` HTTP connections (through ``proxy``, or the environment's proxy when
    None). Bad URLs raise the scheme's one-line error."""
    if is_coap(url):
        return (coap or CoapSettings()).transport(url)
    return CmpHttpClient(url, max_connections=max_connections, request_timeout=timeout,
                         ssl_context=ssl_context, proxy=proxy)


def probe(url: str, timeout: float, *, proxy: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
    """Whether an http(s):// CA can be connected to (TLS included, client certificate accepted),
    before a run or a provisioning batch starts; raises the client's ``TransportError``.
    Nothing CMP is sent. (UDP has no connection to try: a CoAP CA is not probed.)"""
    client = CmpHttpClient(url, connect_timeout=timeout, ssl_context=ssl_context, proxy=proxy)
    trio.run(client.probe)
