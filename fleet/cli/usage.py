"""What every command shares: numeric flags checked by the profiles' ``Bound`` rules (a flag and
the profile key for the same value are refused with the same words, exit 2), and the examples
that end each command's help."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet.bounds import Bound


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

__all__ = ["Pkcs11Module", "Pkcs11Pin", "Pkcs11Token", "ProxyOpt", "bounded", "examples"]
