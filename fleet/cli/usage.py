"""What every command shares: numeric flags checked by the profiles' ``Bound`` rules (a flag and
the profile key for the same value are refused with the same words, exit 2), and the examples
that end each command's help."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet.bounds import Bound
from fleet.secrets import read_secret
from fleet.tls import TlsClient


def bounded(bound: Bound) -> Callable[[Any], Any]:
    """A typer option callback refusing values outside ``bound`` as a usage error."""

    def check(value: Any) -> Any:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            problem = None if item is None else bound.problem(item)
            if problem:
                raise typer.BadParameter(problem)
        return value

    return check


def examples(*commands: str) -> str:
    """A help epilog listing runnable ``commands`` verbatim (``\\b`` keeps click from rewrapping
    them). Keep lines within 76 characters so the help fits 80 columns uncut (a test checks)."""
    body = "\n".join("  " + line for c in commands for line in c.splitlines())
    return "\b\nExamples:\n" + body


# --proxy, the same for every command that talks to a CA.
ProxyOpt = Annotated[str | None, typer.Option("--proxy", metavar="URL", help='http://[user:password@]host:port proxy to reach the CA through (CONNECT for https://); default $HTTPS_PROXY/$HTTP_PROXY unless $NO_PROXY lists the host; "" for none.')]
# PKCS#11: device keys kept in a token (fleet.pkcs11), the same for fleet provision and fleet cmp.
Pkcs11Module = Annotated[Path | None, typer.Option("--pkcs11-module", metavar="LIB", help="PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so): new device keys are made and kept in its token, non-extractable; the certificate is written back to it.")]
Pkcs11Token = Annotated[str | None, typer.Option("--pkcs11-token", metavar="LABEL", help="Label of the PKCS#11 token.")]
Pkcs11Pin = Annotated[str | None, typer.Option("--pkcs11-pin", metavar="SECRET", help="User PIN of the token: env:VAR, file:PATH or pass:TEXT.")]
# TLS towards the CA (fleet.tls), the same for every command that talks to one, as curl/openssl:
# without --tls-trusted the system's store, SSL_CERT_FILE/SSL_CERT_DIR honoured.
TlsTrusted = Annotated[Path | None, typer.Option("--tls-trusted", metavar="PEM", help="https: CA certificates to verify the server with (default: the system's store; $SSL_CERT_FILE and $SSL_CERT_DIR are honoured).")]
TlsCert = Annotated[Path | None, typer.Option("--tls-cert", metavar="PEM", help="https: client certificate for mutual TLS (PEM, chain after it).")]
TlsKey = Annotated[Path | None, typer.Option("--tls-key", metavar="PEM", help="https: key of --tls-cert.")]
TlsKeyPass = Annotated[str | None, typer.Option("--tls-key-pass", metavar="SECRET", help="Passphrase of --tls-key: pass:, env: or file:.")]


def tls_client(trusted: Path | None, cert: Path | None, key: Path | None, key_pass: str | None) -> TlsClient | None:
    """The --tls-* options as one ``TlsClient``, None when none is given (the client's default
    context: the system's store)."""
    if trusted is None and cert is None and key is None and key_pass is None:
        return None
    return TlsClient(trusted, cert, key, read_secret(key_pass) if key_pass is not None else None)


__all__ = ["Pkcs11Module", "Pkcs11Pin", "Pkcs11Token", "ProxyOpt", "TlsCert", "TlsKey", "TlsKeyPass", "TlsTrusted",
           "bounded", "examples", "tls_client"]
