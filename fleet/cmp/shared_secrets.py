"""Shared secrets for MAC-protected CMP: the per-device derivation both sides agree on, and the
CA's look-up.

A fleet of devices and its CA agree on each device's secret without a table: it is derived
from one master secret and the device's reference (its senderKID), ``derive_device_secret``.
``DeviceSecrets`` makes the same secrets for many devices at a lower cost per device (the load
generator asks for one per enrollment); ``SharedSecrets`` is the CA's ``SecretLookup``: a table,
then the master, then a default.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["DeviceSecrets", "SecretLookup", "SharedSecrets", "derive_device_secret"]


def derive_device_secret(master: bytes, reference: bytes) -> bytes:
    """The per-device MAC secret fleet's devices and CA agree on without a table.

    ``secret = lower-case hex of HMAC-SHA256(master, reference)`` as ASCII (64 octets), where
    ``reference`` is the device's senderKID octets (e.g. ``b"device-000042"``). Hex rather than
    raw bytes so the same secret can be typed into ``openssl cmp -secret pass:<hex>``.
    """
    return hmac.digest(master, reference, "sha256").hex().encode("ascii")  # one-shot: cheaper than hmac.new


class DeviceSecrets:
    """``derive_device_secret(master, reference)`` for many references under one master.

    The SHA-256 states after HMAC's inner and outer key pads are computed once; each secret then
    costs two copies and two short updates instead of a whole HMAC. The states are used only if
    they give ``derive_device_secret``'s answer on a probe; otherwise every call is the
    reference function.
    """

    __slots__ = ("_master", "_pads")

    def __init__(self, master: bytes) -> None:
        self._master = master
        self._pads = _pads(master)

    def __call__(self, reference: bytes) -> bytes:
        pads = self._pads
        if pads is None:
            return derive_device_secret(self._master, reference)
        inner, outer = pads[0].copy(), pads[1].copy()
        inner.update(reference)
        outer.update(inner.digest())
        return outer.hexdigest().encode("ascii")

    def __repr__(self) -> str:
        return "DeviceSecrets(master=set)"  # the master never appears in logs


def _pads(master: bytes) -> tuple[Any, Any] | None:
    """SHA-256 states after HMAC's inner and outer pads of ``master`` (RFC 2104), or None when
    they do not reproduce ``derive_device_secret`` on a probe."""
    key = hashlib.sha256(master).digest() if len(master) > 64 else master
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    probe = b"dev-probe"
    i, o = inner.copy(), outer.copy()
    i.update(probe)
    o.update(i.digest())
    return (inner, outer) if o.hexdigest().encode("ascii") == derive_device_secret(master, probe) else None


SecretLookup = Callable[[bytes | None], bytes | None]
"""senderKID (the reference, or None when absent) -> the shared secret, or None if unknown."""


class SharedSecrets:
    """MAC secrets by reference: a table, then a master-derived secret, then a default.

    ``default`` answers requests whose reference is absent or not in ``table`` when no
    ``master`` is set (``fleet ca serve --secret`` without ``--ref``). With ``master``, every
    reference not in the table gets ``derive_device_secret(master, reference)``.
    """

    def __init__(
        self,
        table: Mapping[bytes, bytes] | None = None,
        *,
        default: bytes | None = None,
        master: bytes | None = None,
    ) -> None:
        self._table = dict(table or {})
        self._default = default
        self._master = master
        self._derive = DeviceSecrets(master) if master is not None else None

    def __call__(self, reference: bytes | None) -> bytes | None:
        if reference is not None:
            secret = self._table.get(reference)
            if secret is not None:
                return secret
            if self._derive is not None:
                return self._derive(reference)
        return self._default

    def __repr__(self) -> str:
        return (
            f"SharedSecrets(references={len(self._table)}, default={'set' if self._default else 'none'}, "
            f"master={'set' if self._master else 'none'})"
        )
