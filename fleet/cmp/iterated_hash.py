"""H^count(data): the PasswordBasedMac base key, with the loop in C when the extension is built.

PBM (RFC 9810 §5.1.3.1) hashes secret || salt and then the digest again, ``iterations`` times.
In Python each round builds a hash object, so 500 rounds were once the largest single cost of a
new device's enrollment (bench/README.md has the figures). Two implementations:

1. the optional C extension ``fleet.cmp._iterated_hash`` (OpenSSL's low-level digest on a stack
   context), built at install time where a compiler and OpenSSL's headers exist, and used for
   each digest only after ``fleet.cmp._accel`` has checked it against the reference;
2. the Python loop on ``hashlib``, which is the reference.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from types import ModuleType

from fleet.cmp import _accel

__all__ = ["implementation", "iterated_digest", "python_iterated_digest"]

_NAMES = ("sha1", "sha224", "sha256", "sha384", "sha512")
_CONSTRUCTORS = {name: getattr(hashlib, name) for name in _NAMES}


def python_iterated_digest(name: str, data: bytes, count: int) -> bytes:
    """The reference: ``count`` rounds of the hash, the first over ``data``."""
    new = _CONSTRUCTORS[name]  # the direct constructor: cheaper than hashlib.new() per call
    digest = new(data).digest()
    for _ in range(count - 1):
        digest = new(digest).digest()
    return digest


def _agrees(name: str, digest: Callable[[bytes, int], bytes]) -> bool:
    """Self-test against the reference before trusting an implementation."""
    sample = b"fleet iterated digest self-test"
    reference = python_iterated_digest
    try:
        return all(digest(sample, n) == reference(name, sample, n) for n in (1, 2, 500))
    except (RuntimeError, ValueError):
        return False


def extension_digests(ext: ModuleType) -> dict[str, Callable[[bytes, int], bytes]]:
    """The extension's digest for each hash name on which it agrees with the reference."""
    table: dict[str, Callable[[bytes, int], bytes]] = {}
    for name in _CONSTRUCTORS:
        digest = functools.partial(ext.iterated_digest, name)
        if _agrees(name, digest):
            table[name] = digest
    return table


_ACCELERATED: dict[str, Callable[[bytes, int], bytes]] = {}  # installed: hash name -> digest
_agreeing: dict[str, Callable[[bytes, int], bytes]] = {}  # what the probe found


def _probe(ext: ModuleType) -> bool:
    _agreeing.update(extension_digests(ext))
    return bool(_agreeing)


def _install(ext: ModuleType) -> None:
    _ACCELERATED.update(_agreeing)


_accel.accelerate("_iterated_hash", _probe, _install)


def implementation(name: str) -> str:
    """Which implementation runs ``name``: "extension" or "python"."""
    return "extension" if name in _ACCELERATED else "python"


def iterated_digest(name: str, data: bytes, count: int) -> bytes:
    """``count`` rounds of hash ``name`` (hashlib name), the first over ``data``; count >= 1."""
    if count < 1:
        raise ValueError("iteration count must be at least 1")
    fast = _ACCELERATED.get(name)
    if fast is not None and count <= 0x7FFFFFFF:
        return fast(data, count)
    return python_iterated_digest(name, data, count)
