"""Loopback servers for the HTTP tests: fleet's own server, and raw trio servers that misbehave."""

from __future__ import annotations

import datetime
import ipaddress
import re
import select
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.http import Handler, HttpServerStats, serve_http


@asynccontextmanager
async def http_server(
    handler: Handler, **options: object
) -> AsyncIterator[tuple[int, HttpServerStats]]:
    """fleet's server on 127.0.0.1:<free port>; yields (port, live stats)."""
    stats = HttpServerStats()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            partial(serve_http, handler, "127.0.0.1", 0, stats=stats, **options)  # type: ignore[arg-type]
        )
        yield port, stats
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw_server(
    serve: Callable[[trio.SocketStream], Awaitable[None]],
) -> AsyncIterator[int]:
    """A bare trio TCP server calling ``serve(stream)`` per connection; yields its port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def run_one(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await serve(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, run_one, listeners))  # type: ignore[arg-type]
        yield port
        nursery.cancel_scope.cancel()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A P-256 certificate for 127.0.0.1 and its key (0600) in ``tmp_path``: (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet test CA server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def fleet_ca(folder: Path, *extra: str) -> Iterator[str]:
    """``fleet ca serve`` as a real subprocess on a free loopback port; yields its base URL
    (``http://127.0.0.1:P``, or https with ``--tls-cert``/``--tls-key`` in ``extra``)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli.main", "ca", "serve", "--dir", str(folder), "--port", "0",
         "--master-secret", "pass:http-tests", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else "(no output within 60 s)"
        match = re.search(r"listening on (https?://127\.0\.0\.1:\d+)", line)
        assert match, line
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(10)


class RawReader:
    """Read HTTP/1.x messages from a raw stream, to check exactly what a server sent."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def read_head(self) -> bytes:
        """Everything up to the blank line; raises EOFError if the peer closes first."""
        while b"\r\n\r\n" not in self.buffer:
            if not await self._fill():
                raise EOFError(bytes(self.buffer))
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        return head

    async def read_response(self) -> tuple[int, dict[bytes, bytes], bytes, bytes]:
        """(status, lower-case headers, body, status line) of one Content-Length response."""
        head = await self.read_head()
        status_line, *lines = head.split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buffer) < length:
            if not await self._fill():
                raise EOFError("body cut short")
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return int(status_line.split()[1]), headers, body, status_line

    async def at_eof(self) -> bool:
        """True when the peer closed (after any buffered bytes)."""
        if self.buffer:
            return False
        return not await self._fill()


async def read_request(reader: RawReader) -> bytes:
    """Read one request with a Content-Length body from a raw server's stream; return its body."""
    head = await reader.read_head()
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(reader.buffer) < length:
        if not await reader._fill():
            raise EOFError("request body cut short")
    body = bytes(reader.buffer[:length])
    del reader.buffer[:length]
    return body


def cmp_response(body: bytes, status: int = 200) -> bytes:
    return (
        b"HTTP/1.1 %d X\r\nContent-Type: application/pkixcmp\r\nContent-Length: %d\r\n\r\n"
        % (status, len(body))
        + body
    )
