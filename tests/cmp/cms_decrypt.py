"""Decrypt a CMS EnvelopedData (RFC 5652) with the recipient's private key, read with
pyasn1-alt-modules and cryptography's own primitives (its X9.63 KDF, AES key unwrap, OAEP), not
with fleet's code: the other side of the CA's encrCert (``fleet.cmp.envelope``)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import univ
from pyasn1_alt_modules import rfc5280, rfc5652, rfc5753

AES256_CBC = "2.16.840.1.101.3.4.1.42"
AES256_WRAP = "2.16.840.1.101.3.4.1.45"
DH_SINGLE_PASS_SHA256 = "1.3.132.1.11.1"
RSAES_OAEP = "1.2.840.113549.1.1.7"


def _decode(data: bytes, spec):
    obj, rest = decoder.decode(data, asn1Spec=spec)
    assert rest == b""
    return obj


def decrypt(enveloped_der: bytes, private_key) -> tuple[bytes, dict[str, object]]:
    """The content of an EnvelopedData with one recipient, and what was read on the way
    (``version``, ``recipient`` kind, ``rid`` issuer/serial DER, algorithms)."""
    env = _decode(enveloped_der, rfc5652.EnvelopedData())
    (info,) = list(env["recipientInfos"])
    facts: dict[str, object] = {"version": int(env["version"]), "recipient": info.getName()}
    if info.getName() == "ktri":
        ktri = info["ktri"]
        facts["rid"] = encoder.encode(ktri["rid"]["issuerAndSerialNumber"])
        facts["key_alg"] = str(ktri["keyEncryptionAlgorithm"]["algorithm"])
        assert facts["key_alg"] == RSAES_OAEP and isinstance(private_key, rsa.RSAPrivateKey)
        cek = private_key.decrypt(bytes(ktri["encryptedKey"]), asym_padding.OAEP(
            mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    else:
        kari = info["kari"]
        facts["kari_version"] = int(kari["version"])
        alg = kari["keyEncryptionAlgorithm"]
        facts["key_alg"] = str(alg["algorithm"])
        assert facts["key_alg"] == DH_SINGLE_PASS_SHA256
        wrap = _decode(bytes(alg["parameters"]), rfc5280.AlgorithmIdentifier())
        assert str(wrap["algorithm"]) == AES256_WRAP
        originator = kari["originator"]["originatorKey"]
        spki = rfc5280.SubjectPublicKeyInfo()
        spki["algorithm"] = originator["algorithm"]
        spki["subjectPublicKey"] = originator["publicKey"]
        peer = serialization.load_der_public_key(encoder.encode(spki))
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            assert isinstance(peer, ec.EllipticCurvePublicKey)
            shared = private_key.exchange(ec.ECDH(), peer)
        else:
            assert isinstance(private_key, (x25519.X25519PrivateKey, x448.X448PrivateKey))
            shared = private_key.exchange(peer)  # type: ignore[arg-type]
        shared_info = rfc5753.ECC_CMS_SharedInfo()
        shared_info["keyInfo"]["algorithm"] = univ.ObjectIdentifier(AES256_WRAP)
        shared_info["suppPubInfo"] = (256).to_bytes(4, "big")
        kek = X963KDF(hashes.SHA256(), 32, encoder.encode(shared_info)).derive(shared)
        (rek,) = list(kari["recipientEncryptedKeys"])
        facts["rid"] = encoder.encode(rek["rid"]["issuerAndSerialNumber"])
        cek = aes_key_unwrap(kek, bytes(rek["encryptedKey"]))
    eci = env["encryptedContentInfo"]
    facts["content_type"] = str(eci["contentType"])
    assert str(eci["contentEncryptionAlgorithm"]["algorithm"]) == AES256_CBC
    iv = bytes(_decode(bytes(eci["contentEncryptionAlgorithm"]["parameters"]), univ.OctetString()))
    decryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
    padded = decryptor.update(bytes(eci["encryptedContent"])) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize(), facts
