"""TLS for fleet's clients and servers, behaving as curl and openssl users expect.

Client side (``fleet cmp``, ``run``, ``provision``, ``doctor``, the RA's upstream leg): the
server is verified against ``--tls-trusted`` or else the system's store, which honours
``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` as curl and openssl do; ``--tls-cert``/``--tls-key``
present a client certificate, ``--tls-key-pass`` opens an encrypted key (a passphrase for a key
stored in the clear is ignored, as openssl does).

Server side (``fleet ca serve``, ``fleet ra serve``): ``--tls-client-ca`` requires a client
certificate that chains to it (mutual TLS). Under TLS 1.3 a client learns that its certificate
was refused only after its own handshake has completed, from the server's alert; trio drops the
alert OpenSSL wrote when a server handshake fails, so ``send_alert`` sends it, and a client turns
an alert it receives into one line with ``alert_problem``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import trio

from fleet.errors import FleetError
from fleet.files import load_certificates, load_private_key

__all__ = ["TlsClient", "TlsError", "alert_problem", "options_probe", "send_alert", "server_context"]

_SPKI_MISMATCH = "is not the key of"
_ALERT_SECONDS = 1.0  # bound on sending an alert and draining what the peer still sends
_DRAIN_BYTES = 64 * 1024


class TlsError(FleetError):
    """TLS credentials that cannot be used; the message names the option and file."""


@dataclass(frozen=True)
class TlsClient:
    """How a client verifies the server and which certificate it presents; picklable (a load
    run's worker processes each build their own context from it)."""

    trusted: Path | None = None  # None: the system's store (SSL_CERT_FILE/SSL_CERT_DIR honoured)
    cert: Path | None = None
    key: Path | None = None
    key_pass: bytes | None = field(default=None, repr=False)
    names: tuple[str, str, str] = ("--tls-trusted", "--tls-cert", "--tls-key")  # options, for errors

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise TlsError(f"{self.names[1]} and {self.names[2]} go together")
        if self.key_pass is not None and self.key is None:
            raise TlsError(f"{self.names[2]}-pass needs {self.names[2]}")

    def context(self) -> ssl.SSLContext:
        """A verifying client context; every file is read now, each problem one line."""
        trusted_opt, cert_opt, key_opt = self.names
        try:
            if self.trusted is not None:
                load_certificates(self.trusted)  # a clear error for an unreadable file
            context = ssl.create_default_context(cafile=str(self.trusted) if self.trusted else None)
        except (OSError, ssl.SSLError, FleetError) as exc:
            raise TlsError(f"{trusted_opt} {str(self.trusted)!r}: {_reason(exc)}") from None
        if self.cert is not None and self.key is not None:
            _load_pair(context, self.cert, self.key, self.key_pass, cert_opt, key_opt)
        return context


def server_context(cert: Path, key: Path, client_ca: Path | None = None, *,
                   names: tuple[str, str, str] = ("--tls-cert", "--tls-key", "--tls-client-ca")) -> ssl.SSLContext:
    """A server context for ``cert``/``key``; with ``client_ca``, clients must present a
    certificate chaining to it (refused with a TLS alert otherwise)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_pair(context, cert, key, None, names[0], names[1])
    if client_ca is not None:
        try:
            load_certificates(client_ca)
            context.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError, FleetError) as exc:
            raise TlsError(f"{names[2]} {str(client_ca)!r}: {_reason(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load_pair(context: ssl.SSLContext, cert: Path, key: Path, key_pass: bytes | None,
               cert_opt: str, key_opt: str) -> None:
    """Read the pair with fleet's readers first (one-line errors: encrypted without passphrase,
    wrong passphrase, not a key, not the certificate's key), then give it to OpenSSL."""
    try:
        leaf = load_certificates(cert)[0]
    except FleetError as exc:
        raise TlsError(f"{cert_opt}: {exc}") from None
    try:
        private = load_private_key(key, key_pass)
    except FleetError as exc:
        raise TlsError(f"{key_opt}: {exc}" + (f" (give {key_opt}-pass)" if "is encrypted" in str(exc) else "")) from None
    if leaf.public_key() != private.public_key():
        raise TlsError(f"{key_opt} {str(key)!r} {_SPKI_MISMATCH} {cert_opt} {str(cert)!r}")
    try:
        context.load_cert_chain(cert, key, password=key_pass or b"")
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"{cert_opt}/{key_opt}: OpenSSL cannot use them ({_reason(exc)}; PEM files expected)") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__


# Alerts about the client's certificate: the fix is the client's --tls-cert/--tls-key.
_CERTIFICATE_ALERTS = frozenset({
    "certificate required", "bad certificate", "unknown ca", "certificate unknown", "certificate expired",
    "certificate revoked", "unsupported certificate", "access denied",
})


def alert_problem(exc: BaseException) -> str | None:
    """One line for a TLS alert the peer sent (found along ``exc``'s causes), None for other
    failures. A refused client certificate says which option fixes it."""
    while exc.__cause__ is not None and not isinstance(exc, ssl.SSLError):
        exc = exc.__cause__
    reason = getattr(exc, "reason", None) if isinstance(exc, ssl.SSLError) else None
    if not reason or "ALERT_" not in reason:
        return None
    alert = reason.split("ALERT_", 1)[1].lower().replace("_", " ")
    if alert == "certificate required":
        return "the server requires a client certificate (TLS alert certificate required): give --tls-cert and --tls-key"
    if alert == "handshake failure":  # what a TLS 1.2 server sends for a missing client certificate
        return ("the server refused the TLS handshake (alert handshake failure): it may require a client "
                "certificate (--tls-cert and --tls-key) or share no protocol version or cipher")
    if alert in _CERTIFICATE_ALERTS:
        return f"the server refused the client certificate (TLS alert {alert}): check --tls-cert and --tls-key"
    return f"the server ended the TLS connection with alert {alert}"


async def send_alert(stream: trio.SSLStream[trio.abc.Stream]) -> None:
    """After a server handshake failed: send the alert OpenSSL wrote for the peer (trio's
    SSLStream keeps it in its outgoing buffer), then half-close and drain what the peer still
    sends, so that it reads the alert rather than a reset. Bounded; the peer's errors are
    ignored."""
    outgoing = getattr(stream, "_outgoing", None)  # trio's MemoryBIO towards the peer
    pending = outgoing.read() if isinstance(outgoing, ssl.MemoryBIO) else b""
    if not pending:
        return  # nothing to tell (the peer went away first): no lingering either
    transport = stream.transport_stream
    with trio.move_on_after(_ALERT_SECONDS):
        try:
            await transport.send_all(pending)
            if isinstance(transport, trio.SocketStream):
                await transport.send_eof()
            drained = 0
            while drained < _DRAIN_BYTES:
                data = await transport.receive_some(16384)
                if not data:
                    break
                drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def options_probe(stream: trio.abc.Stream, host: bytes) -> str | None:
    """Send ``OPTIONS *`` (RFC 9110 §9.3.7: about the server, no resource) on a fresh TLS
    connection and read the first bytes of the answer: None when the server answered anything,
    else why the connection is refused (an alert: a client certificate missing or not trusted).
    The caller bounds the time; a server that keeps quiet counts as reachable."""
    try:
        await stream.send_all(b"OPTIONS * HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        data = await stream.receive_some(1024)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        return alert_problem(exc) or f"the TLS connection broke right after the handshake ({_reason(_root(exc))})"
    if not data:
        return ("the server closed the TLS connection without answering "
                "(does it require a client certificate? give --tls-cert and --tls-key)")
    return None


def _root(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None and not isinstance(exc, (OSError, ssl.SSLError)):
        exc = exc.__cause__
    return exc
