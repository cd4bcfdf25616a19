"""Central key generation (RFC 9483 §4.1.6) for both roles, without I/O.

The end entity names the key type it wants as an AlgorithmIdentifier in an otherwise empty
certTemplate publicKey (``key_algorithm``), or omits the publicKey, and opens the key the KGA
delivered with what protected its request (``recipient_for``: the shared secret, or the
signer's EC or RSA key and certificate).

The server role asks a ``KeyGenerator`` (``CentralKeyGenerator`` here) for a key of the
requested type and for the EncryptedKey that delivers it: signed by the KGA certificate (cmKGA
extended key usage) and encrypted as the request was protected (PWRI for MAC, KARI for an EC
signer, KTRI for an RSA signer). What cannot be served is refused with the failInfo RFC 9483
names: badCertTemplate for a key type the KGA does not generate, notAuthorized for a MAC-protected
request when password-based delivery is disabled, badAlg for a signer key that can neither agree
(EC) nor transport (RSA) keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleet.cmp import der, oids
from fleet.cmp.backend import Rejected
from fleet.cmp.cms import (
    DEFAULT_KEK_CACHE_ENTRIES,
    DEFAULT_PWRI_ITERATIONS,
    PwriKeyCache,
    Recipient,
)
from fleet.cmp.keypackage import ID_KP_CM_KGA, seal_key
from fleet.cmp.messages import CertTemplate, FailInfo
from fleet.cmp.protection import MacProtector, PrivateKey, Protector, SignatureProtector, Signer

__all__ = [
    "CentralKeyGenerator",
    "KeyGenerator",
    "generate_key",
    "key_algorithm",
    "recipient_for",
    "requested_spec",
    "serve_central",
    "spec_of",
]

# Key types in fleet's spelling (fleet.keytypes, which the core does not import).
_CURVE_OIDS = {"P-256": "1.2.840.10045.3.1.7", "P-384": "1.3.132.0.34", "P-521": "1.3.132.0.35"}
_CURVE_BY_OID = {v: k for k, v in _CURVE_OIDS.items()}
_CURVES: dict[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
_CURVE_BY_NAME = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
GENERATED_TYPES = "ec:P-256, ec:P-384, ec:P-521, rsa:<bits>, ed25519"


def key_algorithm(spec: str) -> bytes:
    """The AlgorithmIdentifier that asks a KGA for a key of type ``spec`` (``ec:P-256``,
    ``rsa:2048``, ``ed25519`` ...; RSA: the size is the KGA's choice, an algorithm identifier
    cannot carry it). ValueError for a type no KGA is asked for here."""
    algorithm, _, param = spec.partition(":")
    if algorithm == "ec" and param in _CURVE_OIDS:
        return der.algorithm_identifier(oids.EC_PUBLIC_KEY, der.oid(_CURVE_OIDS[param]))
    if algorithm == "rsa":
        return der.algorithm_identifier(oids.RSA_ENCRYPTION, der.NULL_DER)
    if spec == "ed25519":
        return der.algorithm_identifier(oids.ED25519)
    raise ValueError(f"central key generation of {spec} is not supported ({GENERATED_TYPES} are)")


def generate_key(spec: str) -> PrivateKey:
    """A new key of a type ``requested_spec`` names."""
    algorithm, _, param = spec.partition(":")
    if algorithm == "ec":
        return ec.generate_private_key(_CURVES[param]())
    if algorithm == "rsa":
        return rsa.generate_private_key(65537, int(param))
    return ed25519.Ed25519PrivateKey.generate()


def spec_of(key: PrivateKey) -> str:
    """The type of a generated key, as the records name it."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"ec:{_CURVE_BY_NAME.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"rsa:{key.key_size}"
    return "ed25519"


def requested_spec(spki: bytes | None, default: str, rsa_bits: int = 2048) -> str:
    """The key type a central-generation template asks for: ``default`` without a publicKey,
    else the algorithm of its algorithm-only SubjectPublicKeyInfo. Rejected (badCertTemplate)
    for a type the KGA does not generate."""
    if spki is None:
        return default
    try:
        parts = der.parse(spki).children()
        alg = parts[0].children()
        dotted = alg[0].as_oid()
        params = alg[1] if len(alg) > 1 else None
        if dotted == oids.EC_PUBLIC_KEY and params is not None and params.tag == der.OID:
            curve = _CURVE_BY_OID.get(params.as_oid())
            if curve is not None:
                return f"ec:{curve}"
        elif dotted == oids.RSA_ENCRYPTION:
            return f"rsa:{rsa_bits}"
        elif dotted == oids.ED25519:
            return "ed25519"
    except (der.DerError, IndexError):
        raise Rejected("central key generation: malformed publicKey algorithm", FailInfo.badCertTemplate) from None
    raise Rejected(f"central key generation of algorithm {dotted} is not supported ({GENERATED_TYPES} are)",
                   FailInfo.badCertTemplate)


def is_central_request(spki: bytes | None, has_pop: bool) -> bool:
    """Whether a certTemplate asks for central key generation: no POP and no publicKey, or
    one whose subjectPublicKey BIT STRING is empty (RFC 9483 §4.1.6)."""
    if has_pop:
        return False
    if spki is None:
        return True
    try:
        parts = der.parse(spki).children()
        return len(parts) == 2 and parts[1].tag == der.BIT_STRING and len(parts[1].content) <= 1
    except der.DerError:
        return False


# The end entity's PBKDF2 results of password-based delivery: a KGA that keeps a device's salt
# (fleet's does) costs that device no PBKDF2 from its second central key on.
DEVICE_KEK_CACHE = PwriKeyCache()


def recipient_for(protector: Protector) -> Recipient:
    """How the end entity opens the delivered key: the recipient info that matches how its
    request was protected."""
    if isinstance(protector, MacProtector):
        return Recipient(password=protector.secret, kek_cache=DEVICE_KEK_CACHE)
    assert isinstance(protector, SignatureProtector)
    key = protector.signer.key
    if isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        return Recipient(key=key, cert=protector.certificate)
    return Recipient()  # an EdDSA signer can receive no key: every envelope is "not for us"


class KeyGenerator(Protocol):
    """The KGA behind the server role: a key of a requested type, and its delivery."""

    chain: tuple[bytes, ...]  # the certificates above the KGA's, in its signed key packages (DER)

    def generate(self, spki: bytes | None) -> PrivateKey:
        """A new key of the type the template's publicKey asks for (raises ``Rejected``)."""
        ...

    def seal(self, key: PrivateKey, *, password: bytes | None, signer: x509.Certificate | None) -> bytes:
        """The EncryptedKey delivering ``key`` (raises ``Rejected`` where it cannot)."""
        ...


class CentralKeyGenerator:
    """A KGA: generates keys (RSA from ``rsa_pool`` when given, so RSA is servable at rate),
    signs them with its cmKGA certificate and encrypts them for the requester. ``kek_cache``
    devices keep their PWRI salt and key-encryption key (``cms.PwriKeyCache``; 0: none)."""

    def __init__(
        self,
        key: PrivateKey,
        cert: x509.Certificate,
        chain: Sequence[bytes] = (),
        *,
        default: str = "ec:P-256",
        rsa_bits: int = 2048,
        rsa_pool: Callable[[int], rsa.RSAPrivateKey] | None = None,
        password_delivery: bool = True,
        pwri_iterations: int = DEFAULT_PWRI_ITERATIONS,
        kek_cache: int = DEFAULT_KEK_CACHE_ENTRIES,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = None
        if usages is None or x509.ObjectIdentifier(ID_KP_CM_KGA) not in usages:
            raise ValueError("the KGA certificate must carry the cmKGA extended key usage")
        self._key = key
        self._signer = Signer(key)
        self.cert = cert
        self.chain = tuple(chain)
        key_algorithm(default)  # a type it generates, or ValueError
        self.default = default
        self.rsa_bits = rsa_bits
        self._rsa_pool = rsa_pool
        self.password_delivery = password_delivery
        self.pwri_iterations = pwri_iterations
        self._kek_cache = PwriKeyCache(kek_cache) if kek_cache > 0 else None
        self._random = random

    def __repr__(self) -> str:  # never show the key
        return f"CentralKeyGenerator({self.cert.subject.rfc4514_string()!r}, default={self.default})"

    def generate(self, spki: bytes | None) -> PrivateKey:
        spec = requested_spec(spki, self.default, self.rsa_bits)
        if spec.startswith("rsa:") and self._rsa_pool is not None:
            return self._rsa_pool(int(spec[4:]))
        return generate_key(spec)

    def seal(self, key: PrivateKey, *, password: bytes | None, signer: x509.Certificate | None) -> bytes:
        if signer is None:
            if password is None:
                raise Rejected("central key generation needs a protected request", FailInfo.notAuthorized)
            if not self.password_delivery:
                raise Rejected("central key generation for MAC-protected requests (password-based"
                               " delivery) is disabled", FailInfo.notAuthorized)
            return seal_key(key, self._key, self.cert, self.chain, password=password,
                            iterations=self.pwri_iterations, signer=self._signer, random=self._random,
                            kek_cache=self._kek_cache)
        public = signer.public_key()
        if not isinstance(public, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
            raise Rejected(f"central key generation cannot encrypt for a {type(public).__name__} signer"
                           " (key agreement needs EC, key transport RSA)", FailInfo.badAlg)
        return seal_key(key, self._key, self.cert, self.chain, recipient_cert=signer,
                        signer=self._signer, random=self._random)


def serve_central(
    kga: KeyGenerator, template: CertTemplate, *, secret: bytes | None, signer: x509.Certificate | None
) -> tuple[CertTemplate, bytes, tuple[str, str]]:
    """The server role's part of a central-generation request: a new key of the requested type,
    the template with its public key filled in, the EncryptedKey for the response, and what the
    CA records about it (key type, delivery; never the key). Raises ``Rejected``."""
    key = kga.generate(template.public_key)
    sealed = kga.seal(key, password=secret if signer is None else None, signer=signer)
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if signer is None:
        delivery = "pwri"
    else:
        delivery = "kari" if isinstance(signer.public_key(), ec.EllipticCurvePublicKey) else "ktri"
    return replace(template, public_key=spki), sealed, (spec_of(key), delivery)
