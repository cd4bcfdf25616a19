"""CMS EnvelopedData (RFC 5652 §6) to one recipient public key: how the CA returns a certificate
encrypted (encrCert, RFC 9810 §5.2.8.3) to a requester whose key cannot sign.

* Key agreement keys (X25519, X448: RFC 8418; ECDH on a NIST curve: RFC 5753): one
  KeyAgreeRecipientInfo, an ephemeral originator key of the same kind,
  dhSinglePass-stdDH-sha256kdf-scheme (the ANSI X9.63 KDF with SHA-256 over
  ECC-CMS-SharedInfo) and AES-256 key wrap (RFC 3394).
* RSA keys (key transport): one KeyTransRecipientInfo, RSAES-OAEP with SHA-256 and MGF1-SHA-256
  (RFC 8017, parameters as RFC 4055 writes them).

The content is the DER of the certificate as id-data, encrypted with AES-256-CBC under a fresh
content-encryption key (the ``preferredSymmAlg`` genp names the same algorithm). The recipient
is named by the issuer and serial number of the certificate inside. Sans-I/O: keys and IVs come
from ``os.urandom`` through cryptography.
"""

from __future__ import annotations

import hashlib
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from fleet.cmp import der

__all__ = ["encrypted_cert", "enveloped_data"]

ID_DATA = "1.2.840.113549.1.7.1"
AES256_CBC = "2.16.840.1.101.3.4.1.42"
AES256_WRAP = "2.16.840.1.101.3.4.1.45"
DH_SINGLE_PASS_SHA256 = "1.3.132.1.11.1"
RSAES_OAEP = "1.2.840.113549.1.1.7"
SHA256 = "2.16.840.1.101.3.4.2.1"
MGF1 = "1.2.840.113549.1.1.8"

_OAEP_PARAMS = der.sequence(
    der.explicit(0, der.algorithm_identifier(SHA256)),
    der.explicit(1, der.algorithm_identifier(MGF1, der.algorithm_identifier(SHA256))),
)


def encrypted_cert(cert: x509.Certificate, cert_der: bytes, public_key: object) -> bytes:
    """CertOrEncCert's EncryptedKey (its envelopedData [0] alternative) holding ``cert_der``,
    encrypted to ``public_key``."""
    return der.tlv(0xA0, der.parse(enveloped_data(cert_der, public_key, _issuer_and_serial(cert))).content)


def enveloped_data(content: bytes, public_key: object, recipient_id: bytes) -> bytes:
    """An EnvelopedData of ``content`` (id-data) to ``public_key``, its recipient named by the
    IssuerAndSerialNumber ``recipient_id``."""
    cek = os.urandom(32)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(content) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    encrypted_content_info = der.sequence(
        der.oid(ID_DATA),
        der.algorithm_identifier(AES256_CBC, der.octet_string(iv)),
        der.tlv(0x80, ciphertext),
    )
    if isinstance(public_key, rsa.RSAPublicKey):
        encrypted_key = public_key.encrypt(cek, asym_padding.OAEP(
            mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
        info = der.sequence(
            der.integer(0), recipient_id, der.algorithm_identifier(RSAES_OAEP, _OAEP_PARAMS),
            der.octet_string(encrypted_key),
        )
        return der.sequence(der.integer(0), der.set_of(info), encrypted_content_info)
    info = _key_agree_info(cek, public_key, recipient_id)
    return der.sequence(der.integer(2), der.set_of(der.tlv(0xA1, der.parse(info).content)), encrypted_content_info)


def _key_agree_info(cek: bytes, public_key: object, recipient_id: bytes) -> bytes:
    """KeyAgreeRecipientInfo (its SEQUENCE; the caller tags it [1])."""
    ephemeral: x25519.X25519PrivateKey | x448.X448PrivateKey | ec.EllipticCurvePrivateKey
    if isinstance(public_key, x25519.X25519PublicKey):
        ephemeral = x25519.X25519PrivateKey.generate()
        shared = ephemeral.exchange(public_key)
    elif isinstance(public_key, x448.X448PublicKey):
        ephemeral = x448.X448PrivateKey.generate()
        shared = ephemeral.exchange(public_key)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        ephemeral = ec.generate_private_key(public_key.curve)
        shared = ephemeral.exchange(ec.ECDH(), public_key)
    else:
        raise TypeError(f"no key agreement with a {type(public_key).__name__}")
    wrap_alg = der.algorithm_identifier(AES256_WRAP)
    kek = x963_kdf(shared, _shared_info(wrap_alg, 256), 32)
    spki = der.parse(ephemeral.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).children()
    # originator [0] OriginatorIdentifierOrKey, its originatorKey [1] OriginatorPublicKey
    # (algorithm, publicKey): the SubjectPublicKeyInfo's two fields under an implicit tag.
    originator = der.explicit(0, der.tlv(0xA1, spki[0].raw + spki[1].raw))
    recipient = der.sequence(recipient_id, der.octet_string(aes_key_wrap(kek, cek)))
    return der.sequence(
        der.integer(3), originator, der.algorithm_identifier(DH_SINGLE_PASS_SHA256, wrap_alg),
        der.sequence(recipient),
    )


def _shared_info(wrap_alg: bytes, bits: int) -> bytes:
    """ECC-CMS-SharedInfo (RFC 5753 §7.2): keyInfo, no entityUInfo, suppPubInfo the KEK size."""
    return der.sequence(wrap_alg, der.explicit(2, der.octet_string(bits.to_bytes(4, "big"))))


def x963_kdf(shared: bytes, shared_info: bytes, length: int) -> bytes:
    """ANSI X9.63 KDF with SHA-256 (RFC 5753 §7.2 via SEC 1 §3.6.1)."""
    out = b""
    counter = 1
    while len(out) < length:
        out += hashlib.sha256(shared + counter.to_bytes(4, "big") + shared_info).digest()
        counter += 1
    return out[:length]


def _issuer_and_serial(cert: x509.Certificate) -> bytes:
    return der.sequence(cert.issuer.public_bytes(), der.integer(cert.serial_number))
