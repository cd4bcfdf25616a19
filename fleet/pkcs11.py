"""Device keys kept in a PKCS#11 token (an HSM, a smart card, SoftHSM2) instead of key files.

Keys are generated inside the token as token objects, private, sensitive and non-extractable,
labelled with the device's name (CKA_LABEL and CKA_ID): a rerun after a crash finds the key by its
label and reuses it rather than making a second one. ``TokenEcKey`` is a cryptography
``EllipticCurvePrivateKey`` whose ``sign`` asks the token (CKM_ECDSA over the digest), and
``TokenRsaKey`` an ``RSAPrivateKey`` signing there too (CKM_RSA_PKCS over the DigestInfo, or
CKM_RSA_PKCS_PSS over the digest for RSASSA-PSS), so the POP and the CMP signature protection
work unchanged. Key types are spelled as fleet's key specs: ec:P-256, ec:P-384, ec:P-521,
rsa:2048, rsa:3072, rsa:4096. The issued certificate goes back into the token
as a certificate object with the same label and ID.

The binding is python-pkcs11 (maintained, typed objects and attribute templates, no hand-built
CK_ATTRIBUTE arrays); it is imported only when a module is given.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from fleet.errors import FleetError
from fleet.secrets import read_secret

__all__ = ["Token", "TokenEcKey", "TokenError", "TokenRsaKey", "token_key_spec"]

_CURVES = {"P-256": "secp256r1", "P-384": "secp384r1", "P-521": "secp521r1"}
_RSA_BITS = (2048, 3072, 4096)
_SPECS = ", ".join([*(f"ec:{c}" for c in _CURVES), *(f"rsa:{b}" for b in _RSA_BITS)])
# DigestInfo prefixes (RFC 8017 §9.2 note 1): CKM_RSA_PKCS signs DigestInfo || digest.
_DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}


class TokenError(FleetError):
    """The token cannot be used as asked (module, label, PIN, key type); the message says why."""


# python-pkcs11 calls C_Initialize(NULL): the module may then assume one thread at a time (SoftHSM2
# turns its own mutexes off and crashes otherwise), and the binding drops the GIL in every call. So
# every call into the module, attribute reads included, holds this one process-wide lock.
_MODULE_LOCK = threading.RLock()


class Token:
    """One logged-in read-write session on the token labelled ``label``; thread-safe (every call
    into the PKCS#11 module holds one process-wide lock)."""

    def __init__(self, module: Path, label: str, pin: str) -> None:
        """``pin`` as fleet takes secrets: ``pass:``, ``env:`` or ``file:`` (never printed)."""
        try:
            import pkcs11
        except ImportError:
            raise TokenError("--pkcs11-module needs python-pkcs11: pip install 'fleet[hsm]'") from None
        self._p = pkcs11
        with _MODULE_LOCK:
            self._open(module, label, pin)
        self.label = label
        self._lock = _MODULE_LOCK

    def _open(self, module: Path, label: str, pin: str) -> None:
        pkcs11 = self._p
        try:
            lib = pkcs11.lib(str(module))
        except (OSError, RuntimeError, pkcs11.PKCS11Error) as exc:
            raise TokenError(f"cannot load PKCS#11 module {str(module)!r}: {type(exc).__name__}") from None
        try:
            token = lib.get_token(token_label=label)
        except pkcs11.NoSuchToken:
            raise TokenError(f"no PKCS#11 token labelled {label!r} in {module.name}") from None
        except pkcs11.MultipleTokensReturned:
            raise TokenError(f"several PKCS#11 tokens are labelled {label!r}") from None
        try:
            self._session = token.open(user_pin=read_secret(pin).decode(), rw=True)
        except pkcs11.PinIncorrect:
            raise TokenError(f"wrong PIN for PKCS#11 token {label!r}") from None
        except pkcs11.PKCS11Error as exc:
            raise TokenError(f"cannot log in to PKCS#11 token {label!r}: {type(exc).__name__}") from None

    def close(self) -> None:
        with self._lock:
            self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _one(self, object_class: Any, label: str) -> Any | None:
        p = self._p
        found = list(self._session.get_objects({p.Attribute.CLASS: object_class, p.Attribute.LABEL: label}))
        if len(found) > 1:
            raise TokenError(f"the token holds {len(found)} objects labelled {label!r} of one class; remove the extra ones")
        return found[0] if found else None

    def key(self, label: str) -> TokenEcKey | TokenRsaKey | None:
        """The key pair labelled ``label``, or None."""
        p = self._p
        from pkcs11.util.ec import encode_ec_public_key

        with self._lock:  # attribute reads are calls into the module too
            private = self._one(p.ObjectClass.PRIVATE_KEY, label)
            public = self._one(p.ObjectClass.PUBLIC_KEY, label)
            if private is None:
                return None
            if public is None:
                raise TokenError(f"the token holds private key {label!r} without its public key")
            if private.key_type == p.KeyType.EC:
                spki = encode_ec_public_key(public)
                return TokenEcKey(self, private, serialization.load_der_public_key(spki))  # type: ignore[arg-type]
            if private.key_type == p.KeyType.RSA:
                numbers = rsa.RSAPublicNumbers(int.from_bytes(public[p.Attribute.PUBLIC_EXPONENT], "big"),
                                               int.from_bytes(public[p.Attribute.MODULUS], "big"))
                return TokenRsaKey(self, private, numbers.public_key())
            raise TokenError(f"token key {label!r} is neither EC nor RSA (fleet signs with EC and RSA keys from tokens)")

    def key_or_new(self, label: str, spec: str = "ec:P-256") -> TokenEcKey | TokenRsaKey:
        """The key labelled ``label``, generated in the token as ``spec`` (``token_key_spec``)
        when it has none (so a rerun after a crash reuses the key it made, never a second one)."""
        try:
            return self._key_or_new(label, spec)
        except self._p.PKCS11Error as exc:
            raise TokenError(f"PKCS#11 token {self.label!r}: cannot make key {label!r}: {type(exc).__name__}") from None

    def _key_or_new(self, label: str, spec: str) -> TokenEcKey | TokenRsaKey:
        found = self.key(label)
        if found is not None:
            return found
        algorithm, _, param = spec.partition(":")
        if not ((algorithm == "ec" and param in _CURVES) or (algorithm == "rsa" and param.isdigit()
                                                               and int(param) in _RSA_BITS)):
            raise TokenError(f"token keys are {_SPECS}, not {spec}")
        p = self._p
        private_template = {p.Attribute.EXTRACTABLE: False, p.Attribute.SENSITIVE: True,
                            p.Attribute.PRIVATE: True, p.Attribute.SIGN: True}
        with self._lock:
            if algorithm == "rsa":
                self._session.generate_keypair(p.KeyType.RSA, int(param), store=True, label=label, id=label.encode(),
                                               private_template=private_template)
            else:
                from pkcs11.util.ec import encode_named_curve_parameters

                params = self._session.create_domain_parameters(
                    p.KeyType.EC, {p.Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVES[param])}, local=True,
                )
                params.generate_keypair(store=True, label=label, id=label.encode(), private_template=private_template)
        made = self.key(label)
        assert made is not None
        return made

    def store_certificate(self, label: str, cert_der: bytes) -> None:
        """Put the certificate into the token under ``label`` (replacing an older one)."""
        p = self._p
        cert = x509.load_der_x509_certificate(cert_der)
        with self._lock:
            old = self._one(p.ObjectClass.CERTIFICATE, label)
            if old is not None:
                old.destroy()
            self._session.create_object({
                p.Attribute.CLASS: p.ObjectClass.CERTIFICATE,
                p.Attribute.CERTIFICATE_TYPE: p.CertificateType.X_509,
                p.Attribute.TOKEN: True,
                p.Attribute.LABEL: label,
                p.Attribute.ID: label.encode(),
                p.Attribute.SUBJECT: cert.subject.public_bytes(),
                p.Attribute.ISSUER: cert.issuer.public_bytes(),
                p.Attribute.SERIAL_NUMBER: _der_integer(cert.serial_number),
                p.Attribute.VALUE: cert_der,
            })

    def certificate(self, label: str) -> bytes | None:
        p = self._p
        with self._lock:
            found = self._one(p.ObjectClass.CERTIFICATE, label)
            return None if found is None else bytes(found[p.Attribute.VALUE])

    def count(self, object_class: str, label: str) -> int:
        """How many objects of ``object_class`` ("private_key", "certificate"...) carry ``label``."""
        p = self._p
        with self._lock:
            cls = getattr(p.ObjectClass, object_class.upper())
            return len(list(self._session.get_objects({p.Attribute.CLASS: cls, p.Attribute.LABEL: label})))

    def _sign_digest(self, private: Any, digest: bytes) -> bytes:
        with self._lock:
            return bytes(private.sign(digest, mechanism=self._p.Mechanism.ECDSA))

    def _sign_rsa(self, private: Any, digest: bytes, hash_name: str, pss_salt: int | None) -> bytes:
        """PKCS#1 v1.5 over the DigestInfo, or PSS (MGF1 with the same hash) over the digest."""
        p = self._p
        with self._lock:
            if pss_salt is None:
                return bytes(private.sign(_DIGEST_INFO[hash_name] + digest, mechanism=p.Mechanism.RSA_PKCS))
            mech = getattr(p.Mechanism, hash_name.upper())
            mgf = getattr(p.MGF, hash_name.upper())
            return bytes(private.sign(digest, mechanism=p.Mechanism.RSA_PKCS_PSS, mechanism_param=(mech, mgf, pss_salt)))


def token_key_spec(key_type: object) -> str:
    """The token key type for a ``KeySpec`` (ec:P-256, rsa:2048 and the like, as fleet spells
    them); TokenError for types a token does not make here (EdDSA)."""
    spec = str(key_type)
    algorithm, _, param = spec.partition(":")
    if (algorithm == "ec" and param in _CURVES) or (algorithm == "rsa" and param.isdigit() and int(param) in _RSA_BITS):
        return spec
    raise TokenError(f"token keys are {_SPECS}, not {spec}")


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return bytes((0x02, len(body))) + body


class TokenEcKey(ec.EllipticCurvePrivateKey):
    """An EC private key that never leaves the token: ``sign`` is done there, everything that
    would export it raises."""

    def __init__(self, token: Token, private: Any, public: ec.EllipticCurvePublicKey) -> None:
        self._token = token
        self._private = private
        self._public = public
        self.label = str(private[token._p.Attribute.LABEL])

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(
        self, data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, Prehashed):
            digest = bytes(data)  # python-pkcs11 reads a non-bytes argument as an iterable of parts
        else:
            h = hashes.Hash(algorithm)
            h.update(data)
            digest = h.finalize()
        raw = self._token._sign_digest(self._private, digest)
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise TokenError("token keys only sign")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise TokenError(f"token key {self.label!r} is not extractable")

    def private_bytes(self, encoding: Any, format: Any, encryption_algorithm: Any) -> bytes:
        raise TokenError(f"token key {self.label!r} is not extractable")

    def __copy__(self) -> TokenEcKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> TokenEcKey:
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenEcKey) and other._private == self._private

    def __hash__(self) -> int:
        return hash(self.label)

    def __repr__(self) -> str:
        return f"<TokenEcKey {self.label!r} in token {self._token.label!r}>"


def _digest(data: bytes, algorithm: Any) -> tuple[bytes, hashes.HashAlgorithm]:
    if isinstance(algorithm, Prehashed):
        return data, algorithm._algorithm  # the hash the caller applied
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize(), algorithm


class TokenRsaKey(rsa.RSAPrivateKey):
    """An RSA private key that never leaves the token: ``sign`` (PKCS#1 v1.5 or PSS with
    SHA-256/384/512) is done there, everything that would export or decrypt with it raises."""

    def __init__(self, token: Token, private: Any, public: rsa.RSAPublicKey) -> None:
        self._token = token
        self._private = private
        self._public = public
        self.label = str(private[token._p.Attribute.LABEL])

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def sign(self, data: bytes, padding_: padding.AsymmetricPadding, algorithm: Any) -> bytes:
        digest, hash_algorithm = _digest(data, algorithm)
        if hash_algorithm.name not in _DIGEST_INFO:
            raise TokenError(f"token key {self.label!r} signs with SHA-256, SHA-384 or SHA-512, not {hash_algorithm.name}")
        if isinstance(padding_, padding.PKCS1v15):
            return self._token._sign_rsa(self._private, digest, hash_algorithm.name, None)
        if isinstance(padding_, padding.PSS):
            salt = padding_._salt_length  # cryptography keeps it so; DIGEST_LENGTH is the RFC 9481 choice
            if isinstance(salt, padding._DigestLength):
                salt = hash_algorithm.digest_size
            if not isinstance(salt, int):
                raise TokenError(f"token key {self.label!r}: PSS salt length must be a number of bytes")
            return self._token._sign_rsa(self._private, digest, hash_algorithm.name, salt)
        raise TokenError(f"token key {self.label!r} signs with PKCS#1 v1.5 or PSS padding, not {padding_.name}")

    def decrypt(self, ciphertext: bytes, padding_: padding.AsymmetricPadding) -> bytes:
        raise TokenError("token keys only sign")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise TokenError(f"token key {self.label!r} is not extractable")

    def private_bytes(self, encoding: Any, format: Any, encryption_algorithm: Any) -> bytes:
        raise TokenError(f"token key {self.label!r} is not extractable")

    def __copy__(self) -> TokenRsaKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> TokenRsaKey:
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenRsaKey) and other._private == self._private

    def __hash__(self) -> int:
        return hash(self.label)

    def __repr__(self) -> str:
        return f"<TokenRsaKey {self.label!r} in token {self._token.label!r}>"
