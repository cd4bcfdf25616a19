"""CMS EnvelopedData (RFC 5652 §6) for centrally generated keys, without I/O.

A KGA (RFC 9483 §4.1.6) encrypts the key it generated for the requester with the recipient
info that matches how the request was protected:

* ``pwri`` (RFC 3211): a MAC-protected request; the key-encryption key is derived from the
  shared secret with PBKDF2 and wraps the content key with id-alg-PWRI-KEK (the wrap
  ``openssl cms -pwri_password`` reads and writes; AES key wrap is read too, RFC 9481 §4.4);
* ``kari`` (RFC 5753): a request signed with an EC key; ECDH between a fresh ephemeral key and
  the requester's certified key (dhSinglePass-stdDH-sha256kdf-scheme), the content key wrapped
  with AES key wrap (RFC 3394);
* ``ktri`` (RFC 8017): a request signed with an RSA key; RSAES-OAEP with SHA-256 (PKCS #1
  v1.5, what ``openssl cms`` writes by default, is read too).

The content is encrypted with AES-256-CBC (the EnvelopedData ciphers OpenSSL 3.0 reads).
Encoding uses ``fleet.cmp.der``; every primitive is ``cryptography``'s or ``hashlib``'s. Each
way an envelope cannot be opened is its own ``EnvelopeError`` subclass.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleet.cmp import der, oids
from fleet.cmp.errors import CmpError
from fleet.cmp.protection import subject_key_id

__all__ = [
    "EnvelopeError",
    "EnvelopeNotForUs",
    "EnvelopeTooLarge",
    "MalformedEnvelope",
    "PwriKeyCache",
    "Recipient",
    "UnsupportedEnvelope",
    "WrongPassword",
    "content_info",
    "envelope",
    "open_envelope",
    "read_content_info",
]

ID_DATA = "1.2.840.113549.1.7.1"
ID_SIGNED_DATA = "1.2.840.113549.1.7.2"
ID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
ID_ALG_PWRI_KEK = "1.2.840.113549.1.9.16.3.9"
RSAES_OAEP = "1.2.840.113549.1.1.7"
DH_SINGLE_PASS_STDDH_SHA256KDF = "1.3.132.1.11.1"
_KARI_KDF_HASH: dict[str, type[hashes.HashAlgorithm]] = {
    "1.3.133.16.840.63.0.2": hashes.SHA1,  # dhSinglePass-stdDH-sha1kdf-scheme
    "1.3.132.1.11.0": hashes.SHA224,
    DH_SINGLE_PASS_STDDH_SHA256KDF: hashes.SHA256,
    "1.3.132.1.11.2": hashes.SHA384,
    "1.3.132.1.11.3": hashes.SHA512,
}
AES_CBC = {"2.16.840.1.101.3.4.1.2": 16, "2.16.840.1.101.3.4.1.22": 24, "2.16.840.1.101.3.4.1.42": 32}
AES_WRAP = {"2.16.840.1.101.3.4.1.5": 16, "2.16.840.1.101.3.4.1.25": 24, "2.16.840.1.101.3.4.1.45": 32}
AES256_CBC = "2.16.840.1.101.3.4.1.42"
AES256_WRAP = "2.16.840.1.101.3.4.1.45"
_PRF_BY_OID = {
    oids.HMAC_WITH_SHA1: "sha1", oids.HMAC_WITH_SHA224: "sha224", oids.HMAC_WITH_SHA256: "sha256",
    oids.HMAC_WITH_SHA384: "sha384", oids.HMAC_WITH_SHA512: "sha512",
}
_PRF_HASH: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_HASH_BY_OID: dict[str, type[hashes.HashAlgorithm]] = {
    oids.SHA1: hashes.SHA1, oids.SHA224: hashes.SHA224, oids.SHA256: hashes.SHA256,
    oids.SHA384: hashes.SHA384, oids.SHA512: hashes.SHA512,
}

MAX_ENVELOPE_BYTES = 64 * 1024  # a key package with its KGA chain needs a few KiB
DEFAULT_PWRI_ITERATIONS = 2048  # what openssl cms writes; the secret is a device's random MAC key
MAX_PWRI_ITERATIONS = 1_000_000  # a KGA choosing more is refused (CPU abuse, as for PBMAC1)


class EnvelopeError(CmpError):
    """The privateKey EnvelopedData cannot be opened."""

    kind = "kga_envelope"


class MalformedEnvelope(EnvelopeError):
    kind = "kga_malformed"


class EnvelopeTooLarge(EnvelopeError):
    kind = "kga_oversized"


class UnsupportedEnvelope(EnvelopeError):
    kind = "kga_unsupported"


class EnvelopeNotForUs(EnvelopeError):
    """No recipient info this requester can use: the envelope is for another recipient."""

    kind = "kga_wrong_recipient"


class WrongPassword(EnvelopeError):
    """The password-based recipient info does not open with our shared secret."""

    kind = "kga_wrong_password"


DEFAULT_KEK_CACHE_ENTRIES = 65_536


class PwriKeyCache:
    """PBKDF2 results of password-based delivery, kept so that a repeat device costs no PBKDF2.

    PBKDF2 is most of the cost of PWRI on both sides. The KGA (``sending``) keeps one salt and
    its key-encryption key per shared secret and reuses them for every envelope to that secret;
    the content key, both IVs and the wrap's padding stay fresh per envelope, so the reuse only
    shows that two envelopes are for the same secret, which the CMP header's sender says anyway.
    The device (``derived``) keeps what it derived per (secret, salt, ...), which then hits.
    Bounded: past ``entries`` the oldest entry goes; 0 keeps nothing (every envelope derives)."""

    def __init__(self, entries: int = DEFAULT_KEK_CACHE_ENTRIES) -> None:
        if entries < 0:
            raise ValueError("a KEK cache holds zero or more entries")
        self.entries = entries
        self._sending: dict[tuple[bytes, int, int], tuple[bytes, bytes]] = {}
        self._derived: dict[tuple[bytes, bytes, str, int, int], bytes] = {}

    def __repr__(self) -> str:  # never show the secrets
        return f"PwriKeyCache(entries={self.entries}, held={len(self._sending) + len(self._derived)})"

    def __len__(self) -> int:
        return len(self._sending) + len(self._derived)

    def sending(self, password: bytes, iterations: int, size: int,
                random: Callable[[int], bytes]) -> tuple[bytes, bytes]:
        """(salt, KEK) for an envelope to ``password``: the kept pair, else a new one."""
        key = (password, iterations, size)
        known = self._sending.get(key)
        if known is None:
            salt = random(16)
            known = (salt, _pbkdf2(password, salt, "sha256", iterations, size))
            _keep(self._sending, key, known, self.entries)
        return known

    def derived(self, password: bytes, salt: bytes, prf: str, iterations: int, size: int) -> bytes:
        """The KEK for an envelope's PBKDF2 parameters: kept, else derived (and kept)."""
        key = (password, salt, prf, iterations, size)
        kek = self._derived.get(key)
        if kek is None:
            kek = _pbkdf2(password, salt, prf, iterations, size)
            _keep(self._derived, key, kek, self.entries)
        return kek


def _keep(cache: dict, key: object, value: object, entries: int) -> None:
    if entries <= 0:
        return
    while len(cache) >= entries:
        cache.pop(next(iter(cache)), None)  # the oldest (pop: another thread may have taken it)
    cache[key] = value


@dataclass(frozen=True)
class Recipient:
    """What the requester can open an envelope with: the shared secret of a MAC-protected
    request, or the key and certificate a signed request was protected with."""

    password: bytes | None = None
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None
    cert: x509.Certificate | None = None
    max_iterations: int = MAX_PWRI_ITERATIONS
    kek_cache: PwriKeyCache | None = None  # PBKDF2 results kept across envelopes (PWRI)

    def __repr__(self) -> str:  # never show the secret or the key
        kind = "password" if self.password is not None else type(self.key).__name__
        return f"Recipient({kind})"


# ---------------------------------------------------------------------------------------------
# Building


def envelope(
    content: bytes,
    *,
    content_type: str = ID_SIGNED_DATA,
    password: bytes | None = None,
    cert: x509.Certificate | None = None,
    iterations: int = DEFAULT_PWRI_ITERATIONS,
    random: Callable[[int], bytes] = os.urandom,
    kek_cache: PwriKeyCache | None = None,
) -> bytes:
    """The DER of an EnvelopedData holding ``content`` for one recipient: PWRI with
    ``password`` (its salt and KEK from ``kek_cache`` when given), or KARI (EC) / KTRI (RSA)
    for ``cert``'s key."""
    cek = random(32)
    if password is not None:
        info, version = _pwri(cek, password, iterations, random, kek_cache), 3
    elif cert is not None:
        public = cert.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            info, version = _kari(cek, cert, public, random), 2
        elif isinstance(public, rsa.RSAPublicKey):
            info, version = _ktri(cek, cert, public), 0
        else:
            raise UnsupportedEnvelope(f"cannot encrypt for a {type(public).__name__} recipient")
    else:
        raise ValueError("an envelope needs a password or a recipient certificate")
    iv = random(16)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()
    eci = der.sequence(
        der.oid(content_type),
        der.algorithm_identifier(AES256_CBC, der.octet_string(iv)),
        der.tlv(0x80, encrypted),  # [0] IMPLICIT OCTET STRING
    )
    return der.sequence(der.integer(version), der.set_of(info), eci)


def content_info(content_type: str, content: bytes) -> bytes:
    """ContentInfo (RFC 5652 §3) around an encoded content, as ``openssl cms -inform DER`` reads."""
    return der.sequence(der.oid(content_type), der.explicit(0, content))


def read_content_info(data: bytes) -> tuple[str, bytes]:
    """(contentType, encoded content) of a ContentInfo."""
    try:
        parts = der.parse(data).expect(der.SEQUENCE, "ContentInfo").children()
        if len(parts) != 2 or parts[1].tag != 0xA0:
            raise der.DerError("ContentInfo needs a type and [0] content")
        return parts[0].expect(der.OID, "contentType").as_oid(), parts[1].unwrap().raw
    except der.DerError as exc:
        raise MalformedEnvelope(f"malformed ContentInfo: {exc}") from None


def _issuer_and_serial(cert: x509.Certificate) -> bytes:
    return der.sequence(cert.issuer.public_bytes(), der.integer(cert.serial_number))


def _pwri(cek: bytes, password: bytes, iterations: int, random: Callable[[int], bytes],
          kek_cache: PwriKeyCache | None) -> bytes:
    if kek_cache is not None:
        salt, kek = kek_cache.sending(password, iterations, 32, random)
    else:
        salt = random(16)
        kek = _pbkdf2(password, salt, "sha256", iterations, 32)
    iv = random(16)
    params = der.sequence(der.octet_string(salt), der.integer(iterations), der.integer(32),
                          der.algorithm_identifier(oids.HMAC_WITH_SHA256, der.NULL_DER))
    wrapped = _kek_wrap(kek, iv, cek, random)
    return der.tlv(0xA3, b"".join((  # [3] IMPLICIT PasswordRecipientInfo
        der.integer(0),
        der.tlv(0xA0, der.oid(oids.PBKDF2) + params),  # [0] IMPLICIT KeyDerivationAlgorithmIdentifier
        der.algorithm_identifier(ID_ALG_PWRI_KEK, der.algorithm_identifier(AES256_CBC, der.octet_string(iv))),
        der.octet_string(wrapped),
    )))


def _pbkdf2(password: bytes, salt: bytes, prf: str, iterations: int, size: int) -> bytes:
    """PBKDF2 (RFC 8018). Not protection's cached ``pbkdf2_key``: what is kept across envelopes
    is ``PwriKeyCache``'s choice, bounded apart from the MAC keys."""
    return PBKDF2HMAC(_PRF_HASH[prf](), size, salt, iterations).derive(password)


def _kek_wrap(kek: bytes, iv: bytes, cek: bytes, random: Callable[[int], bytes]) -> bytes:
    """RFC 3211 §2.3.1: length, check bytes, key and random padding to two blocks or more,
    encrypted twice with CBC (the second pass chained on from the first)."""
    body = bytes((len(cek),)) + bytes(b ^ 0xFF for b in cek[:3]) + cek
    size = max(32, -(-len(body) // 16) * 16)
    block = body + random(size - len(body))
    encryptor = Cipher(algorithms.AES(kek), modes.CBC(iv)).encryptor()
    first = encryptor.update(block)
    return encryptor.update(first) + encryptor.finalize()


def _kari(cek: bytes, cert: x509.Certificate, public: ec.EllipticCurvePublicKey,
          random: Callable[[int], bytes]) -> bytes:
    ephemeral = ec.generate_private_key(public.curve)
    shared = ephemeral.exchange(ec.ECDH(), public)
    wrap_alg = der.algorithm_identifier(AES256_WRAP)
    kek = _kari_kek(shared, hashes.SHA256, wrap_alg, 32, None)
    point = ephemeral.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    originator = der.tlv(0xA1, der.algorithm_identifier(oids.EC_PUBLIC_KEY) + der.bit_string(point))
    ski = subject_key_id(cert)
    rid = der.tlv(0xA0, der.octet_string(ski)) if ski else _issuer_and_serial(cert)
    return der.tlv(0xA1, b"".join((  # [1] IMPLICIT KeyAgreeRecipientInfo
        der.integer(3),
        der.explicit(0, originator),
        der.algorithm_identifier(DH_SINGLE_PASS_STDDH_SHA256KDF, wrap_alg),
        der.sequence(der.sequence(rid, der.octet_string(aes_key_wrap(kek, cek)))),
    )))


def _kari_kek(shared: bytes, hash_cls: type[hashes.HashAlgorithm], wrap_alg: bytes, size: int,
              ukm: bytes | None) -> bytes:
    """RFC 5753 §7.2: X9.63 KDF over ECC-CMS-SharedInfo (wrap algorithm, ukm, key size in bits)."""
    shared_info = der.sequence(
        wrap_alg,
        der.explicit(0, der.octet_string(ukm)) if ukm is not None else b"",
        der.explicit(2, der.octet_string((size * 8).to_bytes(4, "big"))),
    )
    return X963KDF(hash_cls(), size, shared_info).derive(shared)


def _ktri(cek: bytes, cert: x509.Certificate, public: rsa.RSAPublicKey) -> bytes:
    sha256 = der.algorithm_identifier(oids.SHA256, der.NULL_DER)
    params = der.sequence(der.explicit(0, sha256), der.explicit(1, der.algorithm_identifier(oids.MGF1, sha256)))
    encrypted = public.encrypt(cek, asym_padding.OAEP(asym_padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    return der.sequence(  # KeyTransRecipientInfo, rid issuerAndSerialNumber (version 0)
        der.integer(0), _issuer_and_serial(cert), der.algorithm_identifier(RSAES_OAEP, params),
        der.octet_string(encrypted),
    )


# ---------------------------------------------------------------------------------------------
# Opening


def open_envelope(data: bytes, recipient: Recipient) -> tuple[str, bytes]:
    """(contentType, content) of an EnvelopedData (or a ContentInfo holding one) that
    ``recipient`` can open; raises an ``EnvelopeError`` subclass naming the problem."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EnvelopeTooLarge(f"envelope of {len(data)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    try:
        node = der.parse(data)
        if node.tag == der.SEQUENCE and node.children() and node.children()[0].tag == der.OID:
            content_type, inner = read_content_info(data)
            if content_type != ID_ENVELOPED_DATA:
                raise MalformedEnvelope(f"ContentInfo holds {content_type}, not EnvelopedData")
            node = der.parse(inner)
        parts = node.children()
        if len(parts) < 3 or parts[0].tag != der.INTEGER:
            raise MalformedEnvelope("EnvelopedData needs a version, recipientInfos and encryptedContentInfo")
        pos = 1 + (parts[1].tag == 0xA0)  # originatorInfo
        infos = parts[pos].expect(der.SET, "recipientInfos").children()
        eci = parts[pos + 1].expect(der.SEQUENCE, "encryptedContentInfo").children()
        if len(eci) < 3 or eci[2].tag not in (0x80, 0xA0):
            raise MalformedEnvelope("encryptedContentInfo lacks its encryptedContent")
        content_type = eci[0].expect(der.OID, "contentType").as_oid()
        cipher_oid, cipher_params = _algorithm(eci[1])
        encrypted = eci[2].content if eci[2].tag == 0x80 else b"".join(c.content for c in eci[2].children())
    except der.DerError as exc:
        raise MalformedEnvelope(f"malformed EnvelopedData: {exc}") from None
    key_size = AES_CBC.get(cipher_oid)
    if key_size is None or cipher_params is None or cipher_params.tag != der.OCTET_STRING:
        raise UnsupportedEnvelope(f"content encryption {cipher_oid} is not supported (AES-CBC is)")
    try:  # whatever a hostile recipient info makes the primitives raise is a malformed envelope
        cek = _content_key(infos, recipient)
    except (ValueError, IndexError, TypeError, KeyError) as exc:
        raise MalformedEnvelope(f"malformed recipient info: {exc!r}") from None
    iv = cipher_params.content
    if len(cek) != key_size or len(iv) != 16 or not encrypted or len(encrypted) % 16:
        raise MalformedEnvelope("content key, IV or encrypted content has the wrong size")
    decryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(decryptor.update(encrypted) + decryptor.finalize()) + unpadder.finalize()
    except ValueError:
        raise _wrong_key(recipient, "the content does not decrypt (bad padding)") from None
    return content_type, plain


def _algorithm(node: der.Tlv) -> tuple[str, der.Tlv | None]:
    parts = node.expect(der.SEQUENCE, "AlgorithmIdentifier").children()
    if not parts or len(parts) > 2:
        raise der.DerError("AlgorithmIdentifier must have an OID and at most one parameter")
    params = parts[1] if len(parts) == 2 and parts[1].tag != der.NULL else None
    return parts[0].expect(der.OID, "algorithm").as_oid(), params


def _wrong_key(recipient: Recipient, text: str) -> EnvelopeError:
    if recipient.password is not None:
        return WrongPassword(f"wrong shared secret: {text}")
    return EnvelopeError(f"cannot decrypt the envelope: {text}")


def _content_key(infos: list[der.Tlv], recipient: Recipient) -> bytes:
    """The content-encryption key from the first recipient info meant for ``recipient``."""
    kinds = []
    try:
        for info in infos:
            if recipient.password is not None and info.tag == 0xA3:
                return _open_pwri(info, recipient)
            if recipient.key is not None and recipient.cert is not None:
                if info.tag == 0xA1 and isinstance(recipient.key, ec.EllipticCurvePrivateKey):
                    cek = _open_kari(info, recipient.key, recipient.cert)
                    if cek is not None:
                        return cek
                elif info.tag == der.SEQUENCE and isinstance(recipient.key, rsa.RSAPrivateKey):
                    cek = _open_ktri(info, recipient.key, recipient.cert)
                    if cek is not None:
                        return cek
            kinds.append(_KIND_BY_TAG.get(info.tag, f"tag 0x{info.tag:02x}"))
    except der.DerError as exc:
        raise MalformedEnvelope(f"malformed recipient info: {exc}") from None
    ours = "the shared secret" if recipient.password is not None else "our certificate"
    raise EnvelopeNotForUs(
        f"the envelope is for another recipient: no recipient info for {ours} (it holds {', '.join(kinds) or 'none'})"
    )


_KIND_BY_TAG = {0xA3: "pwri", 0xA1: "kari", der.SEQUENCE: "ktri", 0xA2: "kekri", 0xA4: "ori"}


def _open_pwri(info: der.Tlv, recipient: Recipient) -> bytes:
    parts = info.children()
    if len(parts) != 4 or parts[1].tag != 0xA0:
        raise MalformedEnvelope("PasswordRecipientInfo needs a key derivation algorithm")
    kdf = parts[1].children()
    if not kdf or kdf[0].as_oid() != oids.PBKDF2 or len(kdf) != 2:
        raise UnsupportedEnvelope("password-based key derivation other than PBKDF2")
    fields = kdf[1].expect(der.SEQUENCE, "PBKDF2-params").children()
    if len(fields) < 2:
        raise MalformedEnvelope("PBKDF2-params need a salt and an iteration count")
    salt = fields[0].expect(der.OCTET_STRING, "salt").content
    iterations = fields[1].expect(der.INTEGER, "iterationCount").as_int()
    if not 1 <= iterations <= recipient.max_iterations:
        raise UnsupportedEnvelope(f"PBKDF2 iteration count {iterations} is outside 1..{recipient.max_iterations}")
    prf = "sha1"
    length = None
    for f in fields[2:]:
        if f.tag == der.INTEGER:
            length = f.as_int()
        elif f.tag == der.SEQUENCE:
            prf_oid, _ = _algorithm(f)
            prf_name = _PRF_BY_OID.get(prf_oid)
            if prf_name is None:
                raise UnsupportedEnvelope(f"PBKDF2 PRF {prf_oid} is not supported")
            prf = prf_name
    wrap_oid, wrap_params = _algorithm(parts[2])
    wrapped = parts[3].expect(der.OCTET_STRING, "encryptedKey").content
    if wrap_oid == ID_ALG_PWRI_KEK:
        if wrap_params is None:
            raise MalformedEnvelope("id-alg-PWRI-KEK lacks its cipher")
        inner_oid, iv_node = _algorithm(wrap_params)
        size = AES_CBC.get(inner_oid)
        if size is None or iv_node is None or len(iv_node.content) != 16:
            raise UnsupportedEnvelope(f"PWRI-KEK cipher {inner_oid} is not supported (AES-CBC is)")
        if length not in (None, size):
            raise MalformedEnvelope("PBKDF2 key length differs from the PWRI-KEK cipher's")
        kek = _derive(recipient, salt, prf, iterations, size)
        return _kek_unwrap(kek, iv_node.content, wrapped)
    size = AES_WRAP.get(wrap_oid)
    if size is None:
        raise UnsupportedEnvelope(f"password key encryption {wrap_oid} is not supported")
    kek = _derive(recipient, salt, prf, iterations, size)
    try:
        return aes_key_unwrap(kek, wrapped)
    except InvalidUnwrap:
        raise WrongPassword("wrong shared secret: the key wrap's integrity check failed") from None


def _derive(recipient: Recipient, salt: bytes, prf: str, iterations: int, size: int) -> bytes:
    assert recipient.password is not None
    if recipient.kek_cache is None:
        return _pbkdf2(recipient.password, salt, prf, iterations, size)
    return recipient.kek_cache.derived(recipient.password, salt, prf, iterations, size)


def _kek_unwrap(kek: bytes, iv: bytes, wrapped: bytes) -> bytes:
    """RFC 3211 §2.3.2, the inverse of ``_kek_wrap``."""
    if len(wrapped) < 32 or len(wrapped) % 16:
        raise MalformedEnvelope("PWRI encryptedKey must be two or more AES blocks")
    ecb = Cipher(algorithms.AES(kek), modes.ECB()).decryptor()
    last_iv = bytes(a ^ b for a, b in zip(ecb.update(wrapped[-16:]), wrapped[-32:-16], strict=True))
    second = Cipher(algorithms.AES(kek), modes.CBC(last_iv)).decryptor()
    first = second.update(wrapped) + second.finalize()
    inner = Cipher(algorithms.AES(kek), modes.CBC(iv)).decryptor()
    block = inner.update(first) + inner.finalize()
    n = block[0]
    if any(block[1 + i] ^ block[4 + i] != 0xFF for i in range(3)) or not 3 <= n <= len(block) - 4:
        raise WrongPassword("wrong shared secret: the PWRI check bytes do not match")
    return block[4 : 4 + n]


def _matches(rid: der.Tlv, cert: x509.Certificate, ski_tag: int) -> bool:
    if rid.tag == ski_tag:
        ski = rid.content if ski_tag == 0x80 else rid.children()[0].content
        return ski == subject_key_id(cert)
    if rid.tag == der.SEQUENCE:
        parts = rid.children()
        return (len(parts) == 2 and parts[0].raw == cert.issuer.public_bytes()
                and parts[1].as_int() == cert.serial_number)
    return False


def _open_kari(info: der.Tlv, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bytes | None:
    parts = info.children()
    if len(parts) < 4 or parts[1].tag != 0xA0:
        raise MalformedEnvelope("KeyAgreeRecipientInfo needs an originator")
    ukm = None
    rest = parts[2:]
    if rest[0].tag == 0xA1:
        ukm = rest[0].unwrap().expect(der.OCTET_STRING, "ukm").content
        rest = rest[1:]
    if len(rest) != 2:
        raise MalformedEnvelope("KeyAgreeRecipientInfo needs an algorithm and recipientEncryptedKeys")
    for rek in rest[1].expect(der.SEQUENCE, "recipientEncryptedKeys").children():
        fields = rek.children()
        if len(fields) != 2:
            raise MalformedEnvelope("RecipientEncryptedKey needs a rid and an encryptedKey")
        rid, encrypted = fields
        if not _matches(rid, cert, 0xA0):
            continue
        kdf_oid, wrap_node = _algorithm(rest[0])
        hash_cls = _KARI_KDF_HASH.get(kdf_oid)
        if hash_cls is None or wrap_node is None:
            raise UnsupportedEnvelope(f"key agreement {kdf_oid} is not supported (RFC 5753 stdDH is)")
        wrap_oid, _ = _algorithm(wrap_node)
        size = AES_WRAP.get(wrap_oid)
        if size is None:
            raise UnsupportedEnvelope(f"key wrap {wrap_oid} is not supported (AES key wrap is)")
        originator = parts[1].unwrap()
        if originator.tag != 0xA1:
            raise UnsupportedEnvelope("KARI originator must be an ephemeral public key")
        point = originator.children()[-1].expect(der.BIT_STRING, "originator key").as_bits()[0]
        try:
            ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, point)
        except ValueError:
            raise MalformedEnvelope("KARI originator key is not a point on our curve") from None
        kek = _kari_kek(key.exchange(ec.ECDH(), ephemeral), hash_cls, wrap_node.raw, size, ukm)
        try:
            return aes_key_unwrap(kek, encrypted.expect(der.OCTET_STRING, "encryptedKey").content)
        except InvalidUnwrap:
            raise EnvelopeError("cannot decrypt the envelope: the key agreement does not unwrap the key") from None
    return None


def _open_ktri(info: der.Tlv, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bytes | None:
    parts = info.children()
    if len(parts) != 4:
        raise MalformedEnvelope("KeyTransRecipientInfo needs version, rid, algorithm and encryptedKey")
    if not _matches(parts[1], cert, 0x80):
        return None
    alg_oid, params = _algorithm(parts[2])
    pad: asym_padding.AsymmetricPadding
    if alg_oid == oids.RSA_ENCRYPTION:
        pad = asym_padding.PKCS1v15()
    elif alg_oid == RSAES_OAEP:
        hash_cls: type[hashes.HashAlgorithm] = hashes.SHA1
        mgf_cls: type[hashes.HashAlgorithm] = hashes.SHA1
        for p in params.children() if params is not None else ():
            if p.tag == 0xA0:
                hash_cls = _HASH_BY_OID.get(_algorithm(p.unwrap())[0], None) or _unsupported("OAEP hash")
            elif p.tag == 0xA1:
                _, mgf_params = _algorithm(p.unwrap())
                if mgf_params is None:
                    raise MalformedEnvelope("OAEP MGF1 lacks its hash")
                mgf_cls = _HASH_BY_OID.get(_algorithm(mgf_params)[0], None) or _unsupported("MGF1 hash")
            elif p.tag == 0xA2:
                raise UnsupportedEnvelope("OAEP with a pSourceAlgorithm label is not supported")
        pad = asym_padding.OAEP(asym_padding.MGF1(mgf_cls()), hash_cls(), None)
    else:
        raise UnsupportedEnvelope(f"key transport {alg_oid} is not supported (RSA is)")
    try:
        return key.decrypt(parts[3].expect(der.OCTET_STRING, "encryptedKey").content, pad)
    except ValueError:
        raise EnvelopeError("cannot decrypt the envelope: RSA decryption of the key failed") from None


def _unsupported(what: str) -> type[hashes.HashAlgorithm]:
    raise UnsupportedEnvelope(f"{what} is not supported")
