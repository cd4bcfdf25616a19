"""fleet's one key-type grammar: the text that names a key type, and the key it generates.

Device key pools (``fleet keys``, profiles' ``key_types``, manifests' ``key_type``), the CMP
client's ``--newkey-type`` and the embedded CA's ``--key-type`` all parse key types here, so a
type one of them accepts the others accept too, spelled alike. Every type here can sign, so
each can be a device key and a CA key.

Canonical spellings (case-insensitive; curve aliases such as ``secp256r1`` or ``prime256v1``
are accepted): ``ec:P-256``, ``ec:P-384``, ``ec:P-521``, ``ed25519``, ``ed448``, ``rsa:2048``,
``rsa:3072``, ``rsa:4096``, ``rsa:8192``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from fleet.errors import FleetError

__all__ = [
    "ALLOWED_SPECS",
    "RSA_PUBLIC_EXPONENT",
    "KeySpec",
    "KeySpecError",
    "PrivateKey",
    "PublicKey",
]

PrivateKey = (
    ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | rsa.RSAPrivateKey
)
PublicKey = (
    ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | rsa.RSAPublicKey
)

RSA_PUBLIC_EXPONENT = 65537


class KeySpecError(FleetError):
    """A key type string that fleet does not know."""


_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1,
}  # fmt: skip
_CURVE_ALIASES = {
    "p-256": "P-256", "p256": "P-256", "secp256r1": "P-256", "prime256v1": "P-256",
    "p-384": "P-384", "p384": "P-384", "secp384r1": "P-384",
    "p-521": "P-521", "p521": "P-521", "secp521r1": "P-521",
}  # fmt: skip
_CURVE_BY_OPENSSL_NAME = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_RSA_BITS = (2048, 3072, 4096, 8192)
_EDWARDS = ("ed25519", "ed448")
ALLOWED_SPECS = (
    "ec:P-256", "ec:P-384", "ec:P-521", "ed25519", "ed448",
    "rsa:2048", "rsa:3072", "rsa:4096", "rsa:8192",
)  # fmt: skip

# Rough single-core cost of generating one key and encoding it as DER, in seconds (measured on
# the project machine; RSA is a median, its tail is three times longer). Used only to decide
# between in-process and worker-process generation and to size chunks.
_COST_SECONDS = {
    "ec:P-256": 25e-6, "ec:P-384": 220e-6, "ec:P-521": 200e-6, "ed25519": 40e-6, "ed448": 150e-6,
    "rsa:2048": 0.040, "rsa:3072": 0.15, "rsa:4096": 0.45, "rsa:8192": 6.0,
}  # fmt: skip


@dataclass(frozen=True)
class KeySpec:
    """A key type: ``algorithm`` is ``"ec"``, ``"ed25519"``, ``"ed448"`` or ``"rsa"``; ``ec`` has
    a ``curve`` (``"P-256"``/``"P-384"``/``"P-521"``), ``rsa`` has ``bits``. ``str()`` is the
    canonical text."""

    algorithm: Literal["ec", "ed25519", "ed448", "rsa"]
    curve: str | None = None
    bits: int | None = None

    def __post_init__(self) -> None:
        if str(self) not in ALLOWED_SPECS:
            raise KeySpecError(f"unsupported key type {str(self)!r}; {_allowed_text()}")

    def __str__(self) -> str:
        if self.algorithm == "ec":
            return f"ec:{self.curve}"
        if self.algorithm == "rsa":
            return f"rsa:{self.bits}"
        return self.algorithm

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        """Parse one of ``ALLOWED_SPECS`` (case-insensitive; curve aliases such as ``secp256r1``
        are accepted). ``KeySpecError`` names the allowed types."""
        raw = text.strip()
        algorithm, sep, param = raw.partition(":")
        algorithm = algorithm.lower()
        if algorithm in _EDWARDS and not sep:
            return cls(algorithm)  # type: ignore[arg-type]
        if algorithm == "ec" and param.lower() in _CURVE_ALIASES:
            return cls("ec", curve=_CURVE_ALIASES[param.lower()])
        if algorithm == "rsa" and re.fullmatch(r"[0-9]{1,6}", param) and int(param) in _RSA_BITS:
            return cls("rsa", bits=int(param))
        raise KeySpecError(f"unknown key type {text!r}; {_allowed_text()}")

    @classmethod
    def of(cls, key: PrivateKey | PublicKey) -> KeySpec:
        """Name the type of an existing private or public key."""
        if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
            curve = _CURVE_BY_OPENSSL_NAME.get(key.curve.name)
            if curve is None:
                raise KeySpecError(f"unsupported EC curve {key.curve.name}; {_allowed_text()}")
            return cls("ec", curve=curve)
        if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
            return cls("ed25519")
        if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
            return cls("ed448")
        if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
            if key.key_size not in _RSA_BITS:
                raise KeySpecError(f"unsupported RSA key size {key.key_size}; {_allowed_text()}")
            return cls("rsa", bits=key.key_size)
        raise KeySpecError(f"unsupported key class {type(key).__name__}; {_allowed_text()}")

    @property
    def is_cheap(self) -> bool:
        """True for EC and EdDSA: fast enough to generate during a run (RSA is not)."""
        return self.algorithm != "rsa"

    @property
    def estimated_seconds_per_key(self) -> float:
        """Rough single-core generation cost, for planning (not a measurement of this host)."""
        return _COST_SECONDS[str(self)]

    @property
    def file_stem(self) -> str:
        """The pool's file name without extension: ``rsa-2048``, ``ec-P-256``, ``ed25519``."""
        return str(self).replace(":", "-")

    def generate(self) -> PrivateKey:
        """A new private key of this type (RSA with public exponent 65537)."""
        if self.algorithm == "ec":
            assert self.curve is not None
            return ec.generate_private_key(_CURVES[self.curve]())
        if self.algorithm == "rsa":
            assert self.bits is not None
            return rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=self.bits)
        if self.algorithm == "ed448":
            return ed448.Ed448PrivateKey.generate()
        return ed25519.Ed25519PrivateKey.generate()

    def generate_der(self) -> bytes:
        """A new private key of this type as unencrypted PKCS#8 DER."""
        return self.generate().private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _allowed_text() -> str:
    return "allowed: " + ", ".join(ALLOWED_SPECS)
