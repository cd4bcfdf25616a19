"""Secret sources in the style of ``openssl -passin``: ``pass:TEXT``, ``env:VAR``, ``file:PATH``.

Secrets are returned as bytes and never echoed: error messages name the source, not the value.
"""

from __future__ import annotations

import os
from pathlib import Path

from fleet.errors import FleetError


class SecretError(FleetError):
    """A secret source that cannot be read."""


def read_secret(spec: str) -> bytes:
    """Resolve ``pass:``, ``env:`` or ``file:`` (first line of the file, without its newline)."""
    kind, sep, rest = spec.partition(":")
    if not sep:
        raise SecretError("secret must be given as pass:TEXT, env:VAR or file:PATH")
    if kind == "pass":
        value = rest
    elif kind == "env":
        if rest not in os.environ:
            raise SecretError(f"environment variable {rest!r} for the secret is not set")
        value = os.environ[rest]
    elif kind == "file":
        try:
            text = Path(rest).read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(f"cannot read secret file {rest!r}: {exc.strerror}") from None
        value = text.splitlines()[0] if text else ""
    else:
        raise SecretError(f"unknown secret source {kind!r}: use pass:, env: or file:")
    if not value:
        raise SecretError(f"secret from {kind}: is empty")
    return value.encode("utf-8")
