"""HTTP proxies for the CMP client, as curl and most HTTP tools use them.

Which proxy: an explicit ``--proxy URL`` (``""`` for none), else ``HTTPS_PROXY`` for https://
CAs and ``HTTP_PROXY`` for http:// ones (lower-case names first, as curl reads them; ``ALL_PROXY``
as the fallback), never for a host ``NO_PROXY`` lists (``*``, host names and domain suffixes,
``.example.com`` or ``example.com``, addresses, optionally with ``:port``).

How: an http:// request goes to the proxy in absolute form (``POST http://ca/path HTTP/1.1``);
an https:// one is tunnelled with ``CONNECT host:port`` and TLS runs end to end with the CA, so
the proxy sees neither the request nor the certificates. ``user:password@`` in the proxy URL
becomes ``Proxy-Authorization: Basic`` (percent-decoded; never logged: errors name the proxy
without it).
"""

from __future__ import annotations

import base64
import ipaddress
import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import trio

from fleet.http.errors import ConnectError, InvalidUrl
from fleet.http.wire import MAX_HEAD_BYTES, WireError, parse_head

__all__ = ["Proxy", "choose_proxy", "tunnel"]


@dataclass(frozen=True)
class Proxy:
    """Where to connect instead of the CA, and the header that authenticates us there."""

    host: str
    port: int
    authorization: bytes | None = None  # the Proxy-Authorization header value

    @property
    def label(self) -> str:
        """The proxy as errors name it (no credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"proxy {host}:{self.port}"


def parse_proxy(url: str) -> Proxy:
    """A proxy URL: http://[user:password@]host[:port] (a bare host:port means http://)."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        raise InvalidUrl(f"proxy URL must be http:// (TLS runs through the tunnel), got {parts.scheme}://")
    try:
        port = parts.port or 1080  # as curl
    except ValueError:
        raise InvalidUrl("proxy URL has an invalid port") from None
    if not parts.hostname:
        raise InvalidUrl("proxy URL has no host")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = b"Basic " + base64.b64encode(credentials)
    return Proxy(parts.hostname, port, authorization)


def _env(*names: str) -> str | None:
    for name in names:
        for variant in (name.lower(), name.upper()):
            value = os.environ.get(variant)
            if value:
                return value
    return None


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (comma or space separated) lists ``host``."""
    host = host.lower().strip("[]")
    for entry in no_proxy.replace(",", " ").split():
        entry = entry.lower()
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port.isdigit() and int(entry_port) != port:
            continue
        name = name.strip("[]")
        try:
            if "/" in name:
                if ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False):
                    return True
                continue
        except ValueError:
            continue
        name = name.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def choose_proxy(scheme: str, host: str, port: int, explicit: str | None) -> Proxy | None:
    """The proxy for a CA URL: ``explicit`` when given (``""``: none), else the environment's."""
    url = explicit if explicit is not None else _env(f"{scheme}_proxy", "all_proxy")
    if not url:
        return None
    if bypassed(host, port, _env("no_proxy") or ""):
        return None
    return parse_proxy(url)


async def tunnel(stream: trio.SocketStream, proxy: Proxy, host: str, port: int, where: str) -> None:
    """``_tunnel``, a connection the proxy drops named as the proxy's doing."""
    try:
        await _tunnel(stream, proxy, host, port, where)
    except trio.BrokenResourceError:
        raise ConnectError(where, f"{proxy.label} dropped the connection during CONNECT", kind="proxy") from None


async def _tunnel(stream: trio.SocketStream, proxy: Proxy, host: str, port: int, where: str) -> None:
    """Ask ``proxy`` over ``stream`` for a tunnel to host:port (CONNECT, RFC 9110 §9.3.6); raise
    ``ConnectError`` (kind ``proxy``) naming the proxy's refusal. Nothing of the CA's answer is
    read past the proxy's head: TLS starts on the same stream afterwards."""
    authority = (f"[{host}]" if ":" in host else host).encode("idna") + b":%d" % port
    head = [b"CONNECT " + authority + b" HTTP/1.1", b"Host: " + authority]
    if proxy.authorization is not None:
        head.append(b"Proxy-Authorization: " + proxy.authorization)
    await stream.send_all(b"\r\n".join(head) + b"\r\n\r\n")
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD_BYTES:
            raise ConnectError(where, f"{proxy.label} sent an oversized answer to CONNECT", kind="proxy")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise ConnectError(where, f"{proxy.label} closed the connection instead of answering CONNECT",
                               kind="proxy")
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    try:
        answer = parse_head(buffer[: end - 4])
    except WireError as exc:
        raise ConnectError(where, f"{proxy.label} answered CONNECT with malformed HTTP: {exc}", kind="proxy") from None
    if not 200 <= answer.status < 300:
        hint = " (give user:password@ in the proxy URL)" if answer.status == 407 else ""
        raise ConnectError(where, f"{proxy.label} refused CONNECT {authority.decode()}: HTTP {answer.status}{hint}",
                           kind="proxy")
    if end != len(buffer):  # a tunnel starts with the CA's TLS bytes, which we have not asked for yet
        raise ConnectError(where, f"{proxy.label} sent data after its CONNECT answer", kind="proxy")
