"""The direct certificate encoder: an issuing CA's TBSCertificate written from pre-encoded parts
and signed with its key, byte for byte the certificate cryptography's builder makes.

``sign_with_builder`` is the reference: ``x509.CertificateBuilder``, made in one constructor call.
It converts all of its Python inputs for every certificate, which costs more than the signature,
so ``DirectEncoder`` writes the same DER itself. ``DirectEncoder.probe`` issues one certificate
both ways when an issuer is set up and returns None (the issuer then uses the builder) unless
the two agree byte for byte; the tests compare them over random requests.

What a certificate contains is decided by the issuance policy (``fleet.ca.issuance``); this
module only encodes it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtensionOID

from fleet.cmp.der import integer, oid, read_tlv, tlv

__all__ = [
    "P256_SPKI_PREFIX",
    "SKI_SLOT",
    "DirectEncoder",
    "extension_der",
    "preencoded",
    "public_key_bits",
    "sign_with_builder",
    "ski_extension",
    "spki_bit_string",
    "validity_der",
    "x509_time",
]

_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo

_VERSION_3 = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2
#: SubjectPublicKeyInfo of an uncompressed P-256 key up to the point's 64 coordinate octets:
#: with these 27 octets and 91 in all, a key that loaded is in the form ``public_bytes`` writes.
P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004")
#: SEQUENCE { id-ce-subjectKeyIdentifier, OCTET STRING { OCTET STRING (20) } }, then the digest.
_SKI_PREFIX = b"\x30\x1d\x06\x03\x55\x1d\x0e\x04\x16\x04\x14"
#: Where the SKI goes in the extension list of a directly encoded certificate.
SKI_SLOT = x509.Extension(
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    False,
    x509.UnrecognizedExtension(ExtensionOID.SUBJECT_KEY_IDENTIFIER, b""),
)


class DirectEncoder:
    """Encodes and signs certificates of one issuing CA without the builder.

    ``known`` extensions (the issuer's constant ones) are encoded once, at construction, and
    recognised by identity. ``SKI_SLOT`` in an extension list stands for the subject key's
    identifier, computed from the SPKI. Make one with ``probe``.
    """

    __slots__ = ("_issuer_der", "_known", "_sig_alg_der", "_sign")

    def __init__(
        self,
        issuer_der: bytes,
        sign: Callable[[bytes], bytes],
        sig_alg_der: bytes,
        known: Sequence[x509.Extension[x509.ExtensionType]] = (),
    ) -> None:
        self._issuer_der = issuer_der
        self._sign = sign
        self._sig_alg_der = sig_alg_der
        self._known = {id(e): extension_der(e) for e in known}

    @classmethod
    def probe(
        cls,
        issuer: x509.Certificate,
        key: CertificateIssuerPrivateKeyTypes,
        hash_alg: hashes.HashAlgorithm | None,
        extensions: Sequence[x509.Extension[x509.ExtensionType]],
    ) -> DirectEncoder | None:
        """An encoder for the CA ``issuer`` whose ``key`` signs with ``hash_alg``, if its
        probe certificate (carrying ``extensions``, with ``SKI_SLOT`` among them) is byte for byte
        the builder's; None when it is not, or the key type is one this encoder leaves to the
        builder. Learns the signature AlgorithmIdentifier from the builder's certificate."""
        sign = _raw_signer(key, hash_alg)
        if sign is None:
            return None
        public_key = issuer.public_key()
        spki = public_key.public_bytes(_DER, _SPKI)
        start = datetime(2020, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
        end = datetime(2060, 1, 2, 3, 4, 5, tzinfo=UTC)  # both Time choices
        built_exts = [ski_extension(spki) if e is SKI_SLOT else e for e in extensions]
        try:
            reference = sign_with_builder(
                issuer.subject,
                key,
                hash_alg,
                0x1234,
                start,
                end,
                issuer.subject,
                public_key,
                built_exts,
            )
            encoder = cls(
                issuer.subject.public_bytes(),
                sign,
                _signature_algorithm_der(reference.public_bytes(_DER)),
                [e for e in extensions if e is not SKI_SLOT],
            )
            direct = x509.load_der_x509_certificate(
                encoder.certificate(
                    0x1234, start, end, issuer.subject.public_bytes(), spki, extensions
                )
            )
        except Exception:  # noqa: BLE001  # any failure of the probe: the builder it is
            return None
        if direct.tbs_certificate_bytes != reference.tbs_certificate_bytes:
            return None
        if direct.signature_algorithm_oid != reference.signature_algorithm_oid:
            return None
        return encoder

    def certificate(
        self,
        serial: int,
        start: datetime,
        end: datetime,
        subject_der: bytes,
        spki: bytes,
        exts: Sequence[x509.Extension[x509.ExtensionType]],
    ) -> bytes:
        """The certificate ``sign_with_builder`` makes for these fields, as DER. Raises
        ``ValueError`` for what the builder refuses."""
        known = self._known
        ext_ders = [
            _ski_extension_der(spki) if e is SKI_SLOT else known.get(id(e)) or extension_der(e)
            for e in exts
        ]
        return self._signed(
            serial,
            tlv(0x30, x509_time(start) + x509_time(end)),
            subject_der,
            spki,
            (tlv(0xA3, tlv(0x30, b"".join(ext_ders))),),
        )

    def fixed_extensions(
        self, exts: Sequence[x509.Extension[x509.ExtensionType]]
    ) -> tuple[bytes, bytes]:
        """The extensions block of ``exts`` (``SKI_SLOT`` once among them, the rest known),
        split around the SKI's digest, for ``fixed_certificate``."""
        ders = [_SKI_PREFIX + bytes(20) if e is SKI_SLOT else self._known[id(e)] for e in exts]
        at = [i for i, e in enumerate(exts) if e is SKI_SLOT]
        if len(at) != 1:
            raise ValueError("a fixed extension list holds the SKI exactly once")
        tail = b"".join(ders[at[0] + 1 :])
        block = tlv(0xA3, tlv(0x30, b"".join(ders)))
        return block[: len(block) - len(tail) - 20], tail

    def fixed_certificate(
        self,
        fixed: tuple[bytes, bytes],
        serial: int,
        validity: bytes,
        subject_der: bytes,
        spki: bytes,
    ) -> bytes:
        """A certificate whose extensions are ``fixed`` (from ``fixed_extensions``) and whose
        Validity is the DER ``validity`` (from ``validity_der``)."""
        head, tail = fixed
        ski = hashlib.sha1(spki_bit_string(spki), usedforsecurity=False).digest()
        return self._signed(serial, validity, subject_der, spki, (head, ski, tail))

    def _signed(
        self,
        serial: int,
        validity: bytes,
        subject_der: bytes,
        spki: bytes,
        extensions: tuple[bytes, ...],
    ) -> bytes:
        if not 0 < serial < 1 << 159:  # the builder's own limits (RFC 5280 §4.1.2.2)
            raise ValueError("serial number must be positive and at most 159 bits")
        sig_alg = self._sig_alg_der
        tbs = tlv(0x30, b"".join((
            _VERSION_3, integer(serial), sig_alg, self._issuer_der, validity, subject_der, spki,
            *extensions,
        )))  # fmt: skip
        return tlv(0x30, tbs + sig_alg + tlv(0x03, b"\x00" + self._sign(tbs)))


def sign_with_builder(
    issuer_name: x509.Name,
    key: CertificateIssuerPrivateKeyTypes,
    hash_alg: hashes.HashAlgorithm | None,
    serial: int,
    start: datetime,
    end: datetime,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    exts: Sequence[x509.Extension[x509.ExtensionType]],
) -> x509.Certificate:
    """The reference encoding: cryptography's builder, made in one constructor call (the
    chained builder methods copy the builder and re-check every extension on each step)."""
    builder = x509.CertificateBuilder(
        issuer_name=issuer_name,
        subject_name=subject,
        public_key=public_key,
        serial_number=serial,
        not_valid_before=_naive_utc(start),
        not_valid_after=_naive_utc(end),
        extensions=list(exts),
    )
    return builder.sign(key, hash_alg)  # type: ignore[arg-type]


def preencoded(value: x509.ExtensionType, critical: bool) -> x509.Extension[x509.ExtensionType]:
    """An extension encoded once: the builder copies its bytes instead of re-encoding."""
    encoded = x509.UnrecognizedExtension(value.oid, value.public_bytes())
    return x509.Extension(value.oid, critical, encoded)


def extension_der(ext: x509.Extension[x509.ExtensionType]) -> bytes:
    """Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue }."""
    value = ext.value.public_bytes()
    critical = b"\x01\x01\xff" if ext.critical else b""
    return tlv(0x30, oid(ext.oid.dotted_string) + critical + tlv(0x04, value))


def x509_time(when: datetime) -> bytes:
    """RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, as the
    builder encodes them."""
    return _x509_time_of(math.floor(when.timestamp()))


def validity_der(start: int, end: int) -> bytes:
    """Validity ::= SEQUENCE { notBefore, notAfter } for two whole seconds since the epoch."""
    return tlv(0x30, _x509_time_of(start) + _x509_time_of(end))


@lru_cache(maxsize=16)
def _x509_time_of(second: int) -> bytes:
    """Cached by the second: every certificate of a second starts and ends alike."""
    t = datetime.fromtimestamp(second, UTC)
    text = f"{t.month:02d}{t.day:02d}{t.hour:02d}{t.minute:02d}{t.second:02d}Z"
    if t.year < 2050:
        return b"\x17\x0d" + f"{t.year % 100:02d}{text}".encode("ascii")
    return b"\x18\x0f" + f"{t.year:04d}{text}".encode("ascii")


def spki_bit_string(spki: bytes) -> bytes:
    """The subjectPublicKey BIT STRING value (without unused-bits octet) inside an SPKI DER."""
    _, pos, end = read_tlv(spki, 0, len(spki))  # into the outer SEQUENCE
    _, _, pos = read_tlv(spki, pos, end)  # past the AlgorithmIdentifier
    tag, start, stop = read_tlv(spki, pos, end)
    if tag != 0x03:
        raise ValueError("SubjectPublicKeyInfo without a BIT STRING")
    return spki[start + 1 : stop]


def public_key_bits(public_key: CertificatePublicKeyTypes) -> bytes:
    """The subjectPublicKey BIT STRING value: what SKI method 1 and OCSP's issuerKeyHash hash."""
    return spki_bit_string(public_key.public_bytes(_DER, _SPKI))


def ski_extension(spki: bytes) -> x509.Extension[x509.ExtensionType]:
    """SKI by RFC 5280 §4.2.1.2 method 1 (SHA-1 of the key bits), the value OpenSSL computes."""
    digest = hashlib.sha1(spki_bit_string(spki), usedforsecurity=False).digest()
    return x509.Extension(
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        False,
        x509.UnrecognizedExtension(ExtensionOID.SUBJECT_KEY_IDENTIFIER, b"\x04\x14" + digest),
    )


def _ski_extension_der(spki: bytes) -> bytes:
    """``ski_extension``'s DER, for the direct encoding."""
    return _SKI_PREFIX + hashlib.sha1(spki_bit_string(spki), usedforsecurity=False).digest()


def _signature_algorithm_der(cert_der: bytes) -> bytes:
    """The signatureAlgorithm TLV of a certificate (the second element of its SEQUENCE)."""
    _, pos, end = read_tlv(cert_der, 0, len(cert_der))
    _, _, pos = read_tlv(cert_der, pos, end)  # past the TBSCertificate
    _, _, stop = read_tlv(cert_der, pos, end)
    return cert_der[pos:stop]


def _raw_signer(
    key: CertificateIssuerPrivateKeyTypes, hash_alg: hashes.HashAlgorithm | None
) -> Callable[[bytes], bytes] | None:
    """Sign bytes as the builder signs a certificate with ``key`` (None: a key type left to it)."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and hash_alg is not None:
        ecdsa = ec.ECDSA(hash_alg)
        return lambda data: key.sign(data, ecdsa)
    if isinstance(key, rsa.RSAPrivateKey) and hash_alg is not None:
        pkcs1 = padding.PKCS1v15()
        return lambda data: key.sign(data, pkcs1, hash_alg)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return key.sign
    return None


def _naive_utc(when: datetime) -> datetime:
    """What the builder's setters would store: naive UTC."""
    return when.astimezone(UTC).replace(tzinfo=None)
