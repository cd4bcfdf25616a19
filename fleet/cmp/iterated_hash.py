"""H^count(data): the PasswordBasedMac base key, with the loop run inside OpenSSL when possible.

PBM (RFC 9810 §5.1.3.1) hashes secret || salt and then the digest again, ``iterations`` times.
In Python each round costs ~0.5 µs (a hash object per round), so 500 rounds cost ~255 µs: once
the largest single cost of a new device's enrollment. In order of preference:

1. the optional C extension ``fleet.cmp._iterated_hash`` (OpenSSL's low-level digest on a stack
   context): ~29 µs for 500 rounds of SHA-256; built at install time where a compiler and
   OpenSSL's headers exist;
2. ``EVP_BytesToKey`` through ctypes, for SHA-256 and SHA-384: ~55 µs. OpenSSL has no "iterated
   digest" call, but documents that function's first block as exactly
   ``D_1 = HASH^count(data || salt)``, filling key then IV from D_1, D_2, ... With no salt, a
   digest whose size equals the cipher's key + IV length yields D_1 alone: SHA-256 with
   AES-256-ECB (32 + 0 bytes), SHA-384 with AES-256-CBC (32 + 16). The library is the
   libcrypto Python's own ``_hashlib`` already loaded (found in /proc/self/maps);
3. the Python loop, which stays the reference: every other implementation is checked against it
   at import and used only if it agrees.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
from collections.abc import Callable

__all__ = ["implementation", "iterated_digest", "python_iterated_digest"]

_CONSTRUCTORS = {name: getattr(hashlib, name) for name in ("sha1", "sha224", "sha256", "sha384", "sha512")}

# digest name -> (OpenSSL digest name, cipher constructor whose key + IV length = digest size)
_CIPHER_FOR = {"sha256": (b"SHA256", "EVP_aes_256_ecb"), "sha384": (b"SHA384", "EVP_aes_256_cbc")}


def python_iterated_digest(name: str, data: bytes, count: int) -> bytes:
    """The reference: ``count`` rounds of the hash, the first over ``data``."""
    new = _CONSTRUCTORS[name]  # the direct constructor: hashlib.new() costs 3x per call
    digest = new(data).digest()
    for _ in range(count - 1):
        digest = new(digest).digest()
    return digest


def _libcrypto_path() -> str | None:
    import _hashlib  # noqa: F401  (makes sure Python's libcrypto is mapped)

    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").rpartition(" ")[2]
                if "/libcrypto.so" in path:
                    return path
    except OSError:
        return None
    return None


def _openssl_digests() -> dict[str, Callable[[bytes, int], bytes]]:
    path = _libcrypto_path()
    if path is None:
        return {}
    try:
        lib = ctypes.CDLL(path)
        fetch = lib.EVP_MD_fetch  # OpenSSL 3: an explicitly fetched digest keeps each round cheap
        bytes_to_key = lib.EVP_BytesToKey
    except (OSError, AttributeError):
        return {}
    fetch.restype = ctypes.c_void_p
    fetch.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    bytes_to_key.restype = ctypes.c_int
    bytes_to_key.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
        ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip

    table: dict[str, Callable[[bytes, int], bytes]] = {}
    for name, (md_name, cipher_name) in _CIPHER_FOR.items():
        md = fetch(None, md_name, None)
        cipher_fn = getattr(lib, cipher_name, None)
        if not md or cipher_fn is None:
            continue
        cipher_fn.restype = ctypes.c_void_p
        cipher = cipher_fn()
        size = _CONSTRUCTORS[name]().digest_size

        def digest(data: bytes, count: int, md: int = md, cipher: int = cipher, size: int = size) -> bytes:
            out = ctypes.create_string_buffer(size)
            key, iv = ctypes.addressof(out), ctypes.addressof(out) + 32
            if bytes_to_key(cipher, md, None, data, len(data), count, key, iv) != 32:
                raise RuntimeError("EVP_BytesToKey failed")
            return out.raw

        if _agrees(name, digest):
            table[name] = digest
    return table


def _extension_digests() -> dict[str, Callable[[bytes, int], bytes]]:
    try:
        from fleet.cmp._iterated_hash import iterated_digest as compiled
    except ImportError:
        return {}
    table: dict[str, Callable[[bytes, int], bytes]] = {}
    for name in _CONSTRUCTORS:
        digest = functools.partial(compiled, name)
        if _agrees(name, digest):
            table[name] = digest
    return table


def _agrees(name: str, digest: Callable[[bytes, int], bytes]) -> bool:
    """Self-test against the reference before trusting an implementation."""
    sample = b"fleet iterated digest self-test"
    try:
        return all(digest(sample, n) == python_iterated_digest(name, sample, n) for n in (1, 2, 500))
    except (RuntimeError, ValueError, ctypes.ArgumentError):
        return False


_EXTENSION = _extension_digests()
_EVP = {} if set(_EXTENSION) == set(_CONSTRUCTORS) else _openssl_digests()
_ACCELERATED = {**_EVP, **_EXTENSION}


def implementation(name: str) -> str:
    """Which implementation runs ``name``: "extension", "evp_bytes_to_key" or "python"."""
    return "extension" if name in _EXTENSION else "evp_bytes_to_key" if name in _EVP else "python"


def iterated_digest(name: str, data: bytes, count: int) -> bytes:
    """``count`` rounds of hash ``name`` (hashlib name), the first over ``data``; count >= 1."""
    if count < 1:
        raise ValueError("iteration count must be at least 1")
    fast = _ACCELERATED.get(name)
    if fast is not None and count <= 0x7FFFFFFF:
        return fast(data, count)
    return python_iterated_digest(name, data, count)
