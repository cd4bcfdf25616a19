"""Message protection: PasswordBasedMac (RFC 9810 §5.1.3.1), PBMAC1 (RFC 9481 §6.1) and signatures.

A ``Protector`` produces the protectionAlg, senderKID and the protection bits for outgoing
messages. ``verify_mac`` and ``verify_signature`` check incoming ones over the exact received
ProtectedPart. Derived MAC keys are cached per (secret, salt, algorithm, iterations) because
derivation runs hundreds of hash rounds and every device repeats it for each message.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import field
from functools import lru_cache
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.serialization import Encoding

from fleet.cmp import der, oids
from fleet.cmp.der import DerError
from fleet.cmp.errors import CmpError
from fleet.cmp.iterated_hash import iterated_digest
from fleet.records import record

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


class ProtectionError(CmpError):
    """Protection that is missing, malformed, of a refused algorithm, or does not verify."""

    kind = "bad_protection"


class BadMac(ProtectionError):
    """The MAC does not verify with the shared secret."""

    kind = "bad_mac"


class BadSignature(ProtectionError):
    """The signature does not verify with the signer's public key."""

    kind = "bad_signature"


class UnsupportedAlgorithm(ProtectionError):
    """An algorithm fleet does not implement or refuses (e.g. MD5, or a CPU-abusive count)."""

    kind = "bad_alg"


_HASH_BY_OID = {
    oids.SHA1: "sha1",
    oids.SHA224: "sha224",
    oids.SHA256: "sha256",
    oids.SHA384: "sha384",
    oids.SHA512: "sha512",
}
HASH_OID_BY_NAME = {name: dotted for dotted, name in _HASH_BY_OID.items()}

_HMAC_BY_OID = {
    oids.HMAC_SHA1: "sha1",
    oids.HMAC_WITH_SHA1: "sha1",
    oids.HMAC_WITH_SHA224: "sha224",
    oids.HMAC_WITH_SHA256: "sha256",
    oids.HMAC_WITH_SHA384: "sha384",
    oids.HMAC_WITH_SHA512: "sha512",
}
HMAC_OID_BY_NAME = {
    "sha1": oids.HMAC_SHA1,
    "sha224": oids.HMAC_WITH_SHA224,
    "sha256": oids.HMAC_WITH_SHA256,
    "sha384": oids.HMAC_WITH_SHA384,
    "sha512": oids.HMAC_WITH_SHA512,
}

# Caps against CPU abuse by a hostile peer (checklist item 17); ``max_iterations`` replaces both.
# PasswordBasedMac: OpenSSL refuses counts above 100,000 (OSSL_CRMF_PBM_MAX_ITERATION_COUNT), so no
# server that OpenSSL clients can talk to sends more. PBMAC1: PBKDF2 guidance is in the hundreds of
# thousands now (600,000 for HMAC-SHA256 in OWASP's 2023 table; servers send 2**18), so the cap
# admits 1,000,000: a derivation at the cap is paid once per device and server salt (derived keys
# are cached), while a count meant to stall a client for seconds is refused.
DEFAULT_MAX_PBM_ITERATIONS = 100_000
DEFAULT_MAX_PBMAC1_ITERATIONS = 1_000_000
DEFAULT_MAX_ITERATIONS = DEFAULT_MAX_PBM_ITERATIONS  # the PasswordBasedMac cap, as before
MAX_SALT_BYTES = 256


# ---------------------------------------------------------------------------------------------
# Key derivation (cached)


@lru_cache(maxsize=65_536)
def pbm_key(secret: bytes, salt: bytes, owf: str, iterations: int) -> bytes:
    """RFC 9810 §5.1.3.1: hash (secret || salt) ``iterations`` times with the one-way function."""
    return iterated_digest(owf, secret + salt, iterations)


@lru_cache(maxsize=65_536)
def pbkdf2_key(secret: bytes, salt: bytes, prf: str, iterations: int, length: int) -> bytes:
    """PBKDF2 (RFC 8018) through cryptography, whose bundled OpenSSL runs it faster than
    ``hashlib.pbkdf2_hmac`` does on an OpenSSL 3.0 system library (about half the time
    measured): it matters at the hundreds of thousands of iterations servers ask for."""
    return PBKDF2HMAC(_HASH_OBJ[prf](), length, salt, iterations).derive(secret)


# ---------------------------------------------------------------------------------------------
# Algorithm identifiers


def _alg(node: der.Tlv) -> tuple[str, der.Tlv | None]:
    parts = node.expect(der.SEQUENCE, "AlgorithmIdentifier").children()
    if not parts or len(parts) > 2:
        raise DerError("AlgorithmIdentifier must have an OID and at most one parameter")
    params = parts[1] if len(parts) == 2 and parts[1].tag != der.NULL else None
    return parts[0].as_oid(), params


@lru_cache(maxsize=1024)
def parse_algorithm(alg_der: bytes) -> tuple[str, der.Tlv | None]:
    """(OID, parameters or None) of an encoded AlgorithmIdentifier (cached: a few distinct ones
    are seen over and over)."""
    return _alg(der.parse(alg_der))


@record
class PbmParams:
    salt: bytes
    owf: str  # hashlib name
    iterations: int
    mac: str  # hashlib name of the HMAC hash

    def encode(self) -> bytes:
        return der.algorithm_identifier(
            oids.PASSWORD_BASED_MAC,
            der.sequence(der.octet_string(self.salt), _pbm_fixed_fields(self.owf, self.iterations, self.mac)),
        )


@lru_cache(maxsize=64)
def _pbm_fixed_fields(owf: str, iterations: int, mac: str) -> bytes:
    """PBMParameter's owf, iterationCount and mac: the same for every device of a run."""
    return (
        der.algorithm_identifier(HASH_OID_BY_NAME[owf])
        + der.integer(iterations)
        + der.algorithm_identifier(HMAC_OID_BY_NAME[mac])
    )


@record
class Pbmac1Params:
    salt: bytes
    iterations: int
    key_length: int
    prf: str  # hashlib name of PBKDF2's HMAC
    mac: str  # hashlib name of the message HMAC

    def encode(self) -> bytes:
        kdf = der.algorithm_identifier(
            oids.PBKDF2,
            der.sequence(
                der.octet_string(self.salt),
                der.integer(self.iterations),
                der.integer(self.key_length),
                der.algorithm_identifier(HMAC_OID_BY_NAME[self.prf], der.NULL_DER),
            ),
        )
        scheme = der.algorithm_identifier(HMAC_OID_BY_NAME[self.mac], der.NULL_DER)
        return der.algorithm_identifier(oids.PBMAC1, der.sequence(kdf, scheme))


def _hash_name(alg: der.Tlv, table: dict[str, str], what: str) -> str:
    dotted, _ = _alg(alg)
    try:
        return table[dotted]
    except KeyError:
        raise UnsupportedAlgorithm(f"unsupported {what} algorithm {dotted}") from None


class IterationCountRefused(UnsupportedAlgorithm):
    """An iteration count outside 1..cap (the caller's ``max_iterations``, else the default)."""


@lru_cache(maxsize=4096)
def parse_mac_params(
    alg_der: bytes, *, max_iterations: int | None = None
) -> PbmParams | Pbmac1Params:
    """Parse PBM or PBMAC1 parameters, refusing counts above ``max_iterations`` (None: the
    algorithm's default cap, ``DEFAULT_MAX_PBM_ITERATIONS`` or ``DEFAULT_MAX_PBMAC1_ITERATIONS``).

    Cached: a CA answers thousands of devices with a handful of distinct parameter sets."""
    try:
        dotted, params = parse_algorithm(alg_der)
        if params is None:
            raise UnsupportedAlgorithm(f"MAC algorithm {dotted} lacks parameters")
        parts = params.expect(der.SEQUENCE, "MAC parameters").children()
        if dotted == oids.PASSWORD_BASED_MAC:
            if len(parts) != 4:
                raise DerError("PBMParameter must have 4 fields")
            result: PbmParams | Pbmac1Params = PbmParams(
                salt=parts[0].expect(der.OCTET_STRING, "salt").content,
                owf=_hash_name(parts[1], _HASH_BY_OID, "PBM one-way function"),
                iterations=parts[2].expect(der.INTEGER, "iterationCount").as_int(),
                mac=_hash_name(parts[3], _HMAC_BY_OID, "PBM MAC"),
            )
        elif dotted == oids.PBMAC1:
            if len(parts) != 2:
                raise DerError("PBMAC1-params must have 2 fields")
            kdf_oid, kdf = _alg(parts[0])
            if kdf_oid != oids.PBKDF2 or kdf is None:
                raise UnsupportedAlgorithm(f"PBMAC1 key derivation {kdf_oid} is not PBKDF2")
            k = kdf.expect(der.SEQUENCE, "PBKDF2-params").children()
            if len(k) < 2:
                raise DerError("PBKDF2-params lacks salt or iterationCount")
            key_length = None
            prf = "sha1"  # PBKDF2 default
            for extra in k[2:]:
                if extra.tag == der.INTEGER:
                    key_length = extra.as_int()
                else:
                    prf = _hash_name(extra, _HMAC_BY_OID, "PBKDF2 PRF")
            mac = _hash_name(parts[1], _HMAC_BY_OID, "PBMAC1 MAC")
            result = Pbmac1Params(
                salt=k[0].expect(der.OCTET_STRING, "salt").content,
                iterations=k[1].expect(der.INTEGER, "iterationCount").as_int(),
                key_length=key_length or hashlib.new(mac).digest_size,
                prf=prf,
                mac=mac,
            )
            if not 1 <= result.key_length <= 128:
                raise UnsupportedAlgorithm(f"PBKDF2 key length {result.key_length} is out of range")
        else:
            raise UnsupportedAlgorithm(f"protection algorithm {dotted} is not a MAC")
    except DerError as exc:
        raise ProtectionError(f"malformed MAC parameters: {exc}") from exc
    pbmac1 = isinstance(result, Pbmac1Params)
    cap = max_iterations or (DEFAULT_MAX_PBMAC1_ITERATIONS if pbmac1 else DEFAULT_MAX_PBM_ITERATIONS)
    if not 1 <= result.iterations <= cap:
        raise IterationCountRefused(
            f"{'PBMAC1' if pbmac1 else 'PasswordBasedMac'} iteration count {result.iterations} is outside 1..{cap}"
        )
    if len(result.salt) > MAX_SALT_BYTES:
        raise UnsupportedAlgorithm(f"salt of {len(result.salt)} bytes is too long")
    return result


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


@lru_cache(maxsize=65_536)
def _hmac_pads(key: bytes, name: str) -> tuple[Any, Any]:
    """HMAC's inner and outer hash states after the padded key (RFC 2104), made once per key."""
    new = getattr(hashlib, name)
    block = new().block_size
    if len(key) > block:
        key = new(key).digest()
    key = key.ljust(block, b"\0")
    return new(key.translate(_IPAD)), new(key.translate(_OPAD))


def hmac_digest(key: bytes, data: bytes, name: str) -> bytes:
    """HMAC from copies of the key's precomputed states, cheaper than ``hmac.digest`` (OpenSSL 3
    sets up its MAC afresh each call). A device MACs with one key 2-4 times."""
    inner, outer = _hmac_pads(key, name)
    inner = inner.copy()
    inner.update(data)
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.digest()


def compute_mac(params: PbmParams | Pbmac1Params, secret: bytes, data: bytes) -> bytes:
    if isinstance(params, PbmParams):
        key = pbm_key(secret, params.salt, params.owf, params.iterations)
    else:
        key = pbkdf2_key(secret, params.salt, params.prf, params.iterations, params.key_length)
    return hmac_digest(key, data, params.mac)


def check_mac(params: PbmParams | Pbmac1Params, protected_part: bytes, protection: bytes, secret: bytes) -> None:
    """Raise ``BadMac`` unless ``protection`` is the MAC of ``protected_part`` under ``params``."""
    if not hmac.compare_digest(compute_mac(params, secret, protected_part), protection):
        raise BadMac("MAC protection does not verify with the shared secret")


def verify_mac(
    alg_der: bytes,
    protected_part: bytes,
    protection: bytes,
    secret: bytes,
    *,
    max_iterations: int | None = None,
) -> PbmParams | Pbmac1Params:
    """Check a MAC over the received ProtectedPart; returns the parameters used."""
    params = parse_mac_params(alg_der, max_iterations=max_iterations)
    check_mac(params, protected_part, protection, secret)
    return params


@lru_cache(maxsize=1024)
def is_mac_algorithm(alg_der: bytes) -> bool:
    try:
        dotted, _ = parse_algorithm(alg_der)
    except DerError:
        return False
    return dotted in (oids.PASSWORD_BASED_MAC, oids.PBMAC1)


# ---------------------------------------------------------------------------------------------
# Signatures

_ECDSA_BY_HASH = {"sha256": oids.ECDSA_SHA256, "sha384": oids.ECDSA_SHA384, "sha512": oids.ECDSA_SHA512}
_RSA_BY_HASH = {"sha256": oids.RSA_SHA256, "sha384": oids.RSA_SHA384, "sha512": oids.RSA_SHA512}
_HASH_OBJ: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
# The hash is None only for EdDSA; every "ecdsa" and "rsa" entry names one.
_SIG_HASH: dict[str, tuple[str, str | None]] = {
    oids.ECDSA_SHA256: ("ecdsa", "sha256"),
    oids.ECDSA_SHA384: ("ecdsa", "sha384"),
    oids.ECDSA_SHA512: ("ecdsa", "sha512"),
    oids.RSA_SHA256: ("rsa", "sha256"),
    oids.RSA_SHA384: ("rsa", "sha384"),
    oids.RSA_SHA512: ("rsa", "sha512"),
    oids.ED25519: ("ed25519", None),
    oids.ED448: ("ed448", None),
}


_ECDSA = {name: ec.ECDSA(_HASH_OBJ[name]()) for name in ("sha256", "sha384", "sha512")}


@lru_cache(maxsize=1024)
def is_signature_algorithm(alg_der: bytes) -> bool:
    """Whether ``verify_signature`` knows this AlgorithmIdentifier's OID (the key may still not fit)."""
    try:
        dotted, _ = parse_algorithm(alg_der)
    except DerError:
        return False
    return dotted in _SIG_HASH or dotted == oids.RSASSA_PSS


@lru_cache(maxsize=64)
def _key_family(key_type: type) -> str:
    """"ec", "rsa" or "other" for a key class: one subclass check per class, where ``isinstance``
    against cryptography's abstract key classes costs an ABC check on every call."""
    if issubclass(key_type, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ec"
    if issubclass(key_type, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa"
    return "other"


def default_hash(key: PrivateKey | PublicKey) -> str | None:
    """The hash RFC 9481 pairs with a key: by curve size for ECDSA, SHA-256 for RSA, none for EdDSA."""
    family = _key_family(type(key))
    if family == "ec":
        size = key.curve.key_size  # type: ignore[union-attr]
        return "sha256" if size <= 256 else "sha384" if size <= 384 else "sha512"
    return "sha256" if family == "rsa" else None


def _pss_params(hash_name: str) -> bytes:
    hash_alg = der.algorithm_identifier(HASH_OID_BY_NAME[hash_name])
    return der.sequence(
        der.explicit(0, hash_alg),
        der.explicit(1, der.algorithm_identifier(oids.MGF1, hash_alg)),
        der.explicit(2, der.integer(hashlib.new(hash_name).digest_size)),
    )


@lru_cache(maxsize=64)
def _signature_algorithm(key_type: type, hash_name: str | None, pss: bool) -> bytes:
    """The AlgorithmIdentifier a key of ``key_type`` signs with; one encoding per combination
    (a fleet makes a ``Signer`` for every request's POP)."""
    rsa_key = issubclass(key_type, rsa.RSAPrivateKey)
    if (issubclass(key_type, ec.EllipticCurvePrivateKey) or rsa_key) and hash_name not in _ECDSA_BY_HASH:
        # RFC 9481 §3: SHA-256/384/512 (the RSA and ECDSA tables name the same three).
        raise UnsupportedAlgorithm(f"cannot sign with {'RSA' if rsa_key else 'ECDSA'} and {hash_name}")
    if issubclass(key_type, ec.EllipticCurvePrivateKey):
        return der.algorithm_identifier(_ECDSA_BY_HASH[hash_name])  # type: ignore[index]
    if issubclass(key_type, rsa.RSAPrivateKey):
        if pss:
            return der.algorithm_identifier(oids.RSASSA_PSS, _pss_params(hash_name))  # type: ignore[arg-type]
        return der.algorithm_identifier(_RSA_BY_HASH[hash_name], der.NULL_DER)  # type: ignore[index]
    if issubclass(key_type, ed25519.Ed25519PrivateKey):
        return der.algorithm_identifier(oids.ED25519)
    if issubclass(key_type, ed448.Ed448PrivateKey):
        return der.algorithm_identifier(oids.ED448)
    raise UnsupportedAlgorithm(f"cannot sign with a {key_type.__name__}")


@record
class Signer:
    """Signs with one private key; ``algorithm`` is the encoded AlgorithmIdentifier it uses."""

    key: PrivateKey
    hash_name: str | None = None
    pss: bool = False
    algorithm: bytes = field(init=False)

    def __post_init__(self) -> None:
        hash_name = self.hash_name or default_hash(self.key)
        object.__setattr__(self, "hash_name", hash_name)
        object.__setattr__(self, "algorithm", _signature_algorithm(type(self.key), hash_name, self.pss))

    def sign(self, data: bytes) -> bytes:
        key = self.key
        family = _key_family(type(key))
        # _key_family stands in for isinstance (an ABC check on every call), so mypy
        # cannot narrow ``key`` from it; __post_init__ set hash_name for every EC and RSA key.
        if family == "ec":
            return key.sign(data, _ECDSA[self.hash_name])  # type: ignore[call-arg, arg-type, index]
        if family == "rsa":
            h = _HASH_OBJ[self.hash_name]()  # type: ignore[index]
            if self.pss:
                pad = padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
                return key.sign(data, pad, h)  # type: ignore[call-arg, arg-type]
            return key.sign(data, padding.PKCS1v15(), h)  # type: ignore[call-arg, arg-type]
        return key.sign(data)  # type: ignore[call-arg]  # EdDSA

    def __repr__(self) -> str:
        return f"Signer({type(self.key).__name__}, {self.hash_name}, pss={self.pss})"


def _parse_pss(params: der.Tlv | None) -> str:
    if params is None:
        return "sha1"
    hash_name = "sha1"
    for p in params.children():
        if p.tag == 0xA0:
            hash_name = _hash_name(p.unwrap(), _HASH_BY_OID, "RSASSA-PSS hash")
    return hash_name


@lru_cache(maxsize=256)
def key_is(kind: type, abstract: type) -> bool:
    """``isinstance(key, abstract)`` asked of ``type(key)``, cached by class: cryptography's key
    classes are ABCs, whose ``isinstance`` goes through ``ABCMeta.__instancecheck__`` (dear next
    to a cache hit) on checks the CA makes for every request's key."""
    return issubclass(kind, abstract)


def verify_signature(alg_der: bytes, public_key: PublicKeyTypes, data: bytes, signature: bytes) -> str:
    """Verify ``signature`` over ``data``; returns the hash name used (None-safe label for EdDSA).

    The algorithm must match the key type: a signature algorithm OID cannot pick a weaker check.
    Any loaded public key is accepted (DSA, X25519, DH, ...); one that cannot sign is a mismatch.
    """
    try:
        dotted, params = parse_algorithm(alg_der)
    except DerError as exc:
        raise ProtectionError(f"malformed signature algorithm: {exc}") from exc
    try:
        if dotted == oids.RSASSA_PSS:
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise BadSignature("RSASSA-PSS signature from a non-RSA key")
            pss_hash = _parse_pss(params)
            if pss_hash == "sha1":
                raise UnsupportedAlgorithm("RSASSA-PSS with SHA-1 is refused")
            h = _HASH_OBJ[pss_hash]()
            public_key.verify(signature, data, padding.PSS(padding.MGF1(h), padding.PSS.AUTO), h)
            return pss_hash
        kind: str | None
        hash_name: str | None
        kind, hash_name = _SIG_HASH.get(dotted, (None, None))  # hash_name is a str for ecdsa and rsa
        if kind == "ecdsa" and key_is(type(public_key), ec.EllipticCurvePublicKey):
            # key_is stands in for isinstance (cached by class), so mypy cannot narrow from it
            ec_key = cast(ec.EllipticCurvePublicKey, public_key)
            ec_key.verify(signature, data, _ECDSA[hash_name])  # type: ignore[index]
        elif kind == "rsa" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), _HASH_OBJ[hash_name]())  # type: ignore[index]
        elif kind == "ed25519" and isinstance(public_key, ed25519.Ed25519PublicKey) or kind == "ed448" and isinstance(public_key, ed448.Ed448PublicKey):
            public_key.verify(signature, data)
        elif kind is None:
            raise UnsupportedAlgorithm(f"unsupported signature algorithm {dotted}")
        else:
            raise BadSignature(f"signature algorithm {dotted} does not match the signer's key type")
        return hash_name or kind
    except InvalidSignature:
        raise BadSignature("signature does not verify with the signer's public key") from None


# ---------------------------------------------------------------------------------------------
# Protectors for outgoing messages


class MacProtector:
    """PasswordBasedMac or PBMAC1 with one shared secret; a fresh salt per protector.

    Reusing one salt across a device's messages is what makes the derived-key cache pay off;
    RFC 9481 asks only that salts be random, not per message.

    ``reference`` is the senderKID that names the shared secret; ``sender_name`` (an encoded Name)
    the header's sender, when it is not the default the client derives from the reference.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        reference: bytes | None = None,
        pbmac1: bool = False,
        iterations: int | None = None,
        owf: str = "sha256",
        mac: str = "sha256",
        salt: bytes | None = None,
        sender_name: bytes | None = None,
    ) -> None:
        self._secret = secret
        self.sender_kid = reference
        self.sender_name = sender_name
        salt = salt if salt is not None else os.urandom(16)
        self.params: PbmParams | Pbmac1Params
        if pbmac1:
            self.params = Pbmac1Params(
                salt, iterations or 10_000, hashlib.new(mac).digest_size, prf=mac, mac=mac
            )
        else:
            self.params = PbmParams(salt, owf, iterations or 500, mac)
        self.algorithm = self.params.encode()

    def with_secret(self, secret: bytes, reference: bytes | None, sender_name: bytes | None = None) -> MacProtector:
        """A protector with this one's parameters (salt, iterations, algorithms, and their
        encoded AlgorithmIdentifier) and another secret, reference and sender name: what the
        constructor gives for the same arguments, without encoding the parameters again. This
        protector is unchanged; a fleet builds one per worker and one of these per device."""
        twin = object.__new__(MacProtector)
        twin.__dict__.update(self.__dict__)
        twin._secret = secret
        twin.sender_kid = reference
        twin.sender_name = sender_name
        return twin

    def protect(self, protected_part: bytes) -> bytes:
        return compute_mac(self.params, self._secret, protected_part)

    @property
    def secret(self) -> bytes:
        return self._secret

    def __repr__(self) -> str:
        kind = "PBMAC1" if isinstance(self.params, Pbmac1Params) else "PBM"
        return f"MacProtector({kind}, reference={self.sender_kid!r}, secret=<hidden>)"


def parse_reference(text: str) -> bytes:
    """A reference (senderKID) as users write it: its UTF-8 text, or ``hex:0a1b...`` for a binary
    one. ValueError names the problem."""
    if text.lower().startswith("hex:"):
        try:
            value = bytes.fromhex(text[4:])
        except ValueError:
            raise ValueError(f"reference {text!r} is not hex after 'hex:'") from None
    else:
        value = text.encode("utf-8")
    if not value:
        raise ValueError("reference is empty")
    return value


def sender_for_reference(reference: bytes) -> bytes:
    """The sender Name (DER) that names the same entity as the senderKID ``reference``, for MAC
    protection: the reference itself when it spells a distinguished name ("CN=fleet-test",
    "CN=a,O=b", "/CN=a/O=b"), else CN=<reference> ("dev-00000001" gives CN=dev-00000001; a
    reference that is not UTF-8 gives CN=<its hex>). A name is never prefixed twice: "CN=x"
    never becomes CN=CN=x."""
    try:
        text = reference.decode("utf-8")
    except UnicodeDecodeError:
        return _common_name(reference.hex())
    if "=" in text:
        spelled = _spelled_name(text)
        if spelled is not None:
            return spelled
    return _common_name(text)


def _common_name(value: str) -> bytes:
    """Name CN=value as cryptography encodes it (UTF8String), written directly: no length limit,
    and no ``x509.Name`` built per device (short names, the usual case, byte by byte)."""
    octets = value.encode("utf-8")
    n = len(octets)
    if n < 117:  # every length below fits in one octet
        atv = 7 + n  # SEQUENCE { OID (5 octets), UTF8String }
        return bytes((0x30, atv + 4, 0x31, atv + 2, 0x30, atv)) + _CN_OID + bytes((0x0C, n)) + octets
    return der.sequence(der.set_of(der.sequence(_CN_OID, der.utf8_string(value))))


_CN_OID = der.oid("2.5.4.3")  # id-at-commonName
_NAME_KEYWORDS = {
    "SERIALNUMBER": x509.NameOID.SERIAL_NUMBER, "EMAILADDRESS": x509.NameOID.EMAIL_ADDRESS,
    "GN": x509.NameOID.GIVEN_NAME, "SN": x509.NameOID.SURNAME, "TITLE": x509.NameOID.TITLE,
}
_RFC4514_SPECIAL = str.maketrans({c: "\\" + c for c in ',+"\\<>;'})


@lru_cache(maxsize=1024)
def _spelled_name(text: str) -> bytes | None:
    """The DER of the Name ``text`` spells (RFC 4514, or OpenSSL's /A=x/B=y), or None."""
    rfc4514 = text
    if text.startswith("/"):
        parts = [part.partition("=") for part in text[1:].split("/") if part]
        if not parts or not all(sep for _, sep, _ in parts):
            return None
        rfc4514 = ",".join(f"{key.strip().upper()}={value.translate(_RFC4514_SPECIAL)}"
                           for key, _, value in reversed(parts))
    try:
        name = x509.Name.from_rfc4514_string(rfc4514, _NAME_KEYWORDS)
    except ValueError:
        key, _, value = rfc4514.partition("=")
        if key.strip().upper() == "CN" and value and not any(c in value for c in ',+"\\<>;='):
            return _common_name(value)  # a single CN too long for cryptography: still no CN=CN=
        return None
    return name.public_bytes() if len(name) else None


class SignatureProtector:
    """Signs with a key whose certificate goes first in extraCerts, its chain after it."""

    def __init__(
        self,
        key: PrivateKey,
        certificate: x509.Certificate,
        chain: list[x509.Certificate] | tuple[x509.Certificate, ...] = (),
        *,
        hash_name: str | None = None,
        pss: bool = False,
    ) -> None:
        self.signer = Signer(key, hash_name, pss)
        self.certificate = certificate
        self.algorithm = self.signer.algorithm
        self.sender_kid = subject_key_id(certificate)
        self.extra_certs: tuple[bytes, ...] = tuple(
            c.public_bytes(Encoding.DER) for c in [certificate, *chain]
        )
        self.sender_name = certificate.subject.public_bytes()

    def protect(self, protected_part: bytes) -> bytes:
        return self.signer.sign(protected_part)

    def __repr__(self) -> str:
        return f"SignatureProtector({self.certificate.subject.rfc4514_string()!r})"


Protector = MacProtector | SignatureProtector



@lru_cache(maxsize=4096)
def subject_key_id(cert: x509.Certificate) -> bytes | None:
    """The SubjectKeyIdentifier, kept per certificate: read several times per signed message."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None
