"""The embedded CA's issuance policy: what an end-entity certificate may ask for and what it gets.

``CertificateIssuer.issue`` turns a public key plus requested names and extensions into a signed
certificate, applying a fixed policy (what a request may ask for, what the CA always adds, how
long the certificate lives). It does no I/O and keeps no records (the CMP layer records the
result with ``fleet.ca.store``), and the validity is computed from the ``now`` the caller
passes, the time the CA received the request, so one request sees one clock (the CA service's,
which tests inject); only a caller that passes none, a tool or a test, gets the current time.

The certificate's bytes are written by ``fleet.ca.tbs``: directly for the issuers its probe
approves, else by cryptography's builder. The usual request (a simple subject, no extensions
asked for) is encoded from parts prepared once per issuer and once per second.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property, lru_cache

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

from fleet.ca.hierarchy import BACKDATE, DIGITAL_SIGNATURE, CaHierarchy, key_usage
from fleet.ca.rfc4514 import simple_rfc4514
from fleet.ca.tbs import (
    P256_SPKI_PREFIX,
    SKI_SLOT,
    DirectEncoder,
    preencoded,
    sign_with_builder,
    ski_extension,
    validity_der,
)
from fleet.cmp.der import tlv
from fleet.errors import FleetError

__all__ = ["CertificateIssuer", "CertificateRequestRejected", "IssuedCert", "key_fingerprint"]

_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_BACKDATE_SECONDS = int(BACKDATE.total_seconds())
_RSA_KEY_USAGE = key_usage(digital_signature=True, key_encipherment=True)
_KEY_AGREEMENT = key_usage(key_agreement=True)
_NULL_DN = x509.Name([])


class CertificateRequestRejected(FleetError):
    """A request asks for something the issuance policy refuses (CMP failInfo badCertTemplate)."""


def key_fingerprint(public_key: CertificatePublicKeyTypes) -> bytes:
    """SHA-256 of the SubjectPublicKeyInfo DER: the store's key identity (key reuse, kur)."""
    return hashlib.sha256(public_key.public_bytes(_DER, _SPKI)).digest()


@dataclass(frozen=True, eq=False)
class IssuedCert:
    """One issued certificate: DER (what goes on the wire), parsed form, and the fields the
    store records, filled at issuance so nothing is parsed back."""

    der: bytes
    cert: x509.Certificate
    serial: int
    not_before: datetime
    not_after: datetime
    key_fingerprint: bytes
    # The subject as handed to the builder, so ``subject`` need not parse it back out of the
    # certificate; None: read it from ``cert``.
    subject_name: x509.Name | None = field(default=None, repr=False, compare=False)
    # The RFC 4514 text when issuance could write it straight from the subject's DER.
    subject_text: str | None = field(default=None, repr=False, compare=False)

    @cached_property
    def subject(self) -> str:
        """RFC 4514 string of the subject ('' for the NULL-DN)."""
        if self.subject_text is not None:
            return self.subject_text
        name = self.subject_name
        # DER sorts the attributes of a multi-valued RDN, so only names without one read the
        # same from the request as from the certificate.
        if name is None or any(len(rdn) > 1 for rdn in name.rdns):
            name = self.cert.subject
        return name.rfc4514_string()

    @property
    def signature_hash(self) -> str | None:
        """Name of the hash the certificate is signed with (None for EdDSA): what a certConf's
        certHash uses (RFC 9481 §2)."""
        algo = self.cert.signature_hash_algorithm
        return algo.name if algo is not None else None

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> IssuedCert:
        """Wrap a certificate issued elsewhere (imports, tests) so the store can record it."""
        return cls(
            der=cert.public_bytes(_DER),
            cert=cert,
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            key_fingerprint=key_fingerprint(cert.public_key()),
        )


class _LazyIssuedCert(IssuedCert):
    """An ``IssuedCert`` from ``_issue_plain``: the parsed certificate is made on first use
    (the CMP exchange never needs it), the signature hash is known."""

    @cached_property
    def cert(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)

    @property
    def signature_hash(self) -> str | None:
        return self._signature_hash  # type: ignore[attr-defined]


def _lazy_issued(values: dict[str, object]) -> IssuedCert:
    """A ``_LazyIssuedCert`` without the frozen dataclass's per-field ``object.__setattr__``."""
    issued = object.__new__(_LazyIssuedCert)
    issued.__dict__.update(values)
    return issued


#: Requested extensions the policy takes over from a request (others: ignored if non-critical,
#: refused if critical).
_ACCEPTED_EXTENSIONS: tuple[type[x509.ExtensionType], ...] = (
    x509.SubjectAlternativeName,
    x509.KeyUsage,
    x509.ExtendedKeyUsage,
    x509.CertificatePolicies,
)
#: Requested extensions the CA always sets itself; a request carrying them is not refused.
_CA_SET_EXTENSIONS: tuple[type[x509.ExtensionType], ...] = (
    x509.SubjectKeyIdentifier,
    x509.AuthorityKeyIdentifier,
    x509.CRLDistributionPoints,
    x509.AuthorityInformationAccess,
)


class CertificateIssuer:
    """Issues end-entity certificates from the hierarchy's issuing CA.

    Policy: the subject's requested SAN, keyUsage, extendedKeyUsage and certificatePolicies are
    honoured (keyUsage without CA bits); a CA basicConstraints or any other critical extension
    is refused with ``CertificateRequestRejected``; other non-critical extensions are ignored.
    The CA always adds basicConstraints CA:FALSE, SKI, AKI, a default keyUsage when none was
    asked for, and with ``base_url`` a CRL distribution point and an OCSP AIA entry. A
    certificate is valid from ``BACKDATE`` before the request's time for ``validity`` (or up to
    a requested notAfter), never beyond the issuing CA's own expiry.
    """

    def __init__(
        self,
        hierarchy: CaHierarchy,
        *,
        base_url: str | None = None,
        validity: timedelta = timedelta(days=365),
    ) -> None:
        if validity <= timedelta(0):
            raise FleetError("certificate validity must be positive")
        self.hierarchy = hierarchy
        self.validity = validity
        self.base_url = base_url.rstrip("/") if base_url else None
        self._issuer_name = hierarchy.issuing.subject
        self._issuing_key = hierarchy.issuing_key
        self._hash = hierarchy.issuing_hash
        self._ca_not_after = hierarchy.issuing.not_valid_after_utc
        self._ext_aki = preencoded(
            x509.AuthorityKeyIdentifier(hierarchy.issuing_ski, None, None), False
        )
        self._ext_basic = preencoded(x509.BasicConstraints(ca=False, path_length=None), True)
        self._ext_ku_ds = preencoded(DIGITAL_SIGNATURE, True)
        self._ext_urls: list[x509.Extension[x509.ExtensionType]] = []
        if self.base_url:
            crl_dp = x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(self.crl_url)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            )
            aia = x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(self.ocsp_url),
                    )
                ]
            )
            self._ext_urls = [preencoded(crl_dp, False), preencoded(aia, False)]
        # The plain request's extensions (no extensions or SANs asked for, a key that gets the
        # digitalSignature keyUsage): constant but for the SKI. The encoder's probe issues one
        # certificate with them both ways; None: this issuer's certificates go through the builder.
        plain = [self._ext_basic, self._ext_ku_ds, SKI_SLOT, self._ext_aki, *self._ext_urls]
        self._encoder = DirectEncoder.probe(hierarchy.issuing, self._issuing_key, self._hash, plain)
        self._plain_ext: tuple[bytes, bytes] | None = None
        if self._encoder is not None and validity.microseconds == 0:
            self._plain_ext = self._encoder.fixed_extensions(plain)
        # (second, Validity DER, notBefore, notAfter) of the plain requests of the last second.
        self._plain_times: tuple[int, bytes, datetime, datetime] | None = None

    @property
    def crl_url(self) -> str:
        """Where relying parties fetch the issuing CA's CRL (HTTP layer mounts it)."""
        return f"{self.base_url}/crl/issuing.crl" if self.base_url else ""

    @property
    def ocsp_url(self) -> str:
        return f"{self.base_url}/ocsp" if self.base_url else ""

    def issue(
        self,
        public_key: CertificatePublicKeyTypes,
        subject: x509.Name | bytes | None,
        *,
        sans: Sequence[x509.GeneralName] | None = None,
        extensions: Sequence[x509.Extension[x509.ExtensionType]] = (),
        not_after: datetime | None = None,
        serial: int | None = None,
        spki: bytes | None = None,
        now: float | None = None,
    ) -> IssuedCert:
        """Sign a certificate for ``public_key``.

        ``subject`` ``None`` or empty means the NULL-DN, allowed only with a SAN (which is then
        critical, RFC 5280 §4.2.1.6); it may also be a Name's DER as a request carried it
        (parsed here, ``CertificateRequestRejected`` if it is not a Name; the usual simple
        shape is checked and used as it is, without Python ``Name`` objects). ``sans`` wins
        over a SAN among ``extensions``. ``not_after`` (naive means UTC) is clamped to the
        issuing CA's own expiry. Raises ``CertificateRequestRejected`` when the request breaks
        the policy. ``serial`` ``None`` draws a random one; the CA passes
        ``CertStore.allocate_serial()``. ``spki``: the key's SubjectPublicKeyInfo DER as
        received, used instead of re-encoding the key when it is the canonical P-256 form.
        ``now``: the request's time in seconds since the epoch, which the validity starts from
        (the CA passes its clock's reading for the request); ``None``, for tools and tests that
        issue outside a request, means the current time.
        """
        if now is None:
            now = time.time()
        subject_der: bytes | None = None
        subject_text: str | None = None
        if isinstance(subject, bytes):
            subject_text = simple_rfc4514(subject)
            if subject_text is not None and subject_text:
                subject_der = subject
            else:
                subject = _parse_name(subject)
        elif subject is not None:
            subject_der = subject.public_bytes()
            subject_text = simple_rfc4514(subject_der)
        if (
            not extensions
            and not sans
            and not_after is None
            and subject_der is not None
            and self._plain_ext is not None
            and self._encoder is not None
            and _default_key_usage(public_key) is DIGITAL_SIGNATURE
        ):
            plain = self._issue_plain(
                public_key,
                subject_der,
                subject_text,
                subject if isinstance(subject, x509.Name) else None,
                serial,
                spki,
                now,
            )
            if plain is not None:
                return plain
        if isinstance(subject, bytes):
            subject = _parse_name(subject)
        requested: dict[type[x509.ExtensionType], x509.Extension[x509.ExtensionType]] = {}
        for ext in extensions:
            value = ext.value
            if isinstance(value, _ACCEPTED_EXTENSIONS):
                requested[type(value)] = ext
            elif isinstance(value, x509.BasicConstraints):
                if value.ca:
                    raise CertificateRequestRejected("request asks for a CA certificate")
            elif isinstance(value, _CA_SET_EXTENSIONS):
                continue
            elif ext.critical:
                raise CertificateRequestRejected(
                    f"request carries an unsupported critical extension {ext.oid.dotted_string}"
                )

        san_value: x509.SubjectAlternativeName | None = None
        if sans:
            san_value = x509.SubjectAlternativeName(list(sans))
        elif x509.SubjectAlternativeName in requested:
            san_value = requested[x509.SubjectAlternativeName].value  # type: ignore[assignment]
            if not len(san_value):  # type: ignore[arg-type]
                san_value = None
        if subject is None:
            subject = _NULL_DN
        null_dn = len(subject) == 0
        if null_dn and san_value is None:
            raise CertificateRequestRejected("request has neither a subject nor a subjectAltName")

        if x509.KeyUsage in requested:
            usage: x509.KeyUsage = requested[x509.KeyUsage].value  # type: ignore[assignment]
            if usage.key_cert_sign or usage.crl_sign:
                raise CertificateRequestRejected("request asks for keyCertSign or cRLSign")
        else:
            usage = _default_key_usage(public_key)

        received = datetime.fromtimestamp(now, UTC)
        if not_after is None:
            end = received + self.validity
        else:  # a naive time is taken as UTC, as the builder itself would
            end = not_after if not_after.tzinfo else not_after.replace(tzinfo=UTC)
        end = min(end, self._ca_not_after)
        start = received - BACKDATE
        if end <= start:
            raise CertificateRequestRejected("requested notAfter lies in the past")
        if serial is None:
            serial = x509.random_serial_number()
        spki = public_key.public_bytes(_DER, _SPKI)

        # Constant extensions are pre-encoded Extension objects, and the builder is made in one
        # constructor call: the chained builder methods copy the builder and re-check every
        # extension on each step, which cost a quarter of the issuance time.
        encoder = self._encoder
        exts: list[x509.Extension[x509.ExtensionType]] = [self._ext_basic]
        if usage is DIGITAL_SIGNATURE:
            exts.append(self._ext_ku_ds)
        else:
            exts.append(x509.Extension(ExtensionOID.KEY_USAGE, True, usage))
        eku = requested.get(x509.ExtendedKeyUsage)
        if eku is not None:
            exts.append(eku)
        if san_value is not None:
            exts.append(x509.Extension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, null_dn, san_value))
        exts.append(SKI_SLOT if encoder is not None else ski_extension(spki))
        exts.append(self._ext_aki)
        policies = requested.get(x509.CertificatePolicies)
        if policies is not None:
            exts.append(x509.Extension(ExtensionOID.CERTIFICATE_POLICIES, False, policies.value))
        exts.extend(self._ext_urls)
        try:
            if encoder is not None:
                if subject_der is None:
                    subject_der = subject.public_bytes()
                    subject_text = simple_rfc4514(subject_der)
                cert_der = encoder.certificate(serial, start, end, subject_der, spki, exts)
                cert = x509.load_der_x509_certificate(cert_der)
            else:
                cert = sign_with_builder(
                    self._issuer_name,
                    self._issuing_key,
                    self._hash,
                    serial,
                    start,
                    end,
                    subject,
                    public_key,
                    exts,
                )
                cert_der = cert.public_bytes(_DER)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CertificateRequestRejected(f"cannot issue for this request: {exc}") from None
        return IssuedCert(
            der=cert_der,
            cert=cert,
            serial=serial,
            not_before=start.replace(microsecond=0),
            not_after=end.replace(microsecond=0),
            key_fingerprint=hashlib.sha256(spki).digest(),
            subject_name=subject,
            subject_text=subject_text,
        )

    def _issue_plain(
        self,
        public_key: CertificatePublicKeyTypes,
        subject_der: bytes,
        subject_text: str | None,
        subject: x509.Name | None,
        serial: int | None,
        spki: bytes | None,
        now: float,
    ) -> IssuedCert | None:
        """``issue`` for the plain request (see ``__init__``) from pre-encoded parts: the same
        certificate, at a fraction of the Python work (the tests compare it with the builder's).
        None when the general path must decide (a NULL-DN subject, a CA about to expire)."""
        second = math.floor(now)
        times = self._plain_times
        if times is None or times[0] != second:
            start = second - _BACKDATE_SECONDS
            end = min(
                second + int(self.validity.total_seconds()),
                math.floor(self._ca_not_after.timestamp()),
            )
            if end <= start + 1:
                return None  # the general path refuses (or clamps) with its own message
            times = (
                second,
                validity_der(start, end),
                datetime.fromtimestamp(start, UTC),
                datetime.fromtimestamp(end, UTC),
            )
            self._plain_times = times
        if subject_der == b"\x30\x00":
            return None  # NULL-DN without a SAN: refused by the general path
        if serial is None:
            serial = x509.random_serial_number()
        if spki is None or len(spki) != 91 or not spki.startswith(P256_SPKI_PREFIX):
            spki = public_key.public_bytes(_DER, _SPKI)
        assert self._plain_ext is not None and self._encoder is not None
        try:
            cert_der = self._encoder.fixed_certificate(
                self._plain_ext, serial, times[1], subject_der, spki
            )
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CertificateRequestRejected(f"cannot issue for this request: {exc}") from None
        values = {
            "der": cert_der,
            "serial": serial,
            "not_before": times[2],
            "not_after": times[3],
            "key_fingerprint": hashlib.sha256(spki).digest(),
            "subject_name": subject,
            "subject_text": subject_text,
            "_signature_hash": self._hash.name if self._hash is not None else None,
        }
        if subject_text is not None:
            values["subject"] = subject_text  # the cached_property's value, set up front
        return _lazy_issued(values)


def _parse_name(name_der: bytes) -> x509.Name:
    """A Name's DER as cryptography reads it (through a minimal CSR: it has no public Name
    parser); ``CertificateRequestRejected`` if it is not one."""
    p256_generator = bytes.fromhex(
        "6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296"
        "4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5"
    )
    spki = P256_SPKI_PREFIX + p256_generator
    info = tlv(0x30, b"\x02\x01\x00" + name_der + spki + b"\xa0\x00")
    ecdsa_sha256 = bytes.fromhex("300a06082a8648ce3d040302")
    csr = tlv(0x30, info + ecdsa_sha256 + b"\x03\x01\x00")
    try:
        return x509.load_der_x509_csr(csr).subject
    except ValueError as exc:
        raise CertificateRequestRejected(f"requested subject is not a Name: {exc}") from None


def _default_key_usage(public_key: CertificatePublicKeyTypes) -> x509.KeyUsage:
    return _key_usage_for(type(public_key))


@lru_cache(maxsize=64)
def _key_usage_for(kind: type) -> x509.KeyUsage:
    """By the key's class, cached: an ``isinstance`` against cryptography's abstract key
    classes is slow next to a dict lookup."""
    if issubclass(kind, rsa.RSAPublicKey):
        return _RSA_KEY_USAGE
    if issubclass(kind, x25519.X25519PublicKey | x448.X448PublicKey):
        return _KEY_AGREEMENT
    return DIGITAL_SIGNATURE
