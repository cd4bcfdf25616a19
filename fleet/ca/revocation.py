"""Revocation status of the embedded CA's certificates: a CRL publisher and an OCSP responder.

Both read ``fleet.ca.store.CertStore`` (which includes unflushed changes) and sign with the
issuing CA's key. Neither does I/O beyond the store; the HTTP layer serves
``CrlPublisher.current_crl_der()`` as ``application/pkix-crl`` on GET /crl/issuing.crl and
passes POST /ocsp bodies to ``OcspResponder.respond()`` (answer ``application/ocsp-response``,
always HTTP 200: OCSP errors travel inside the response).

Revoked and rejected certificates are both listed: a rejected certificate was signed and sent.

A pending certificate (delivered, certConf not yet accepted) is not good until confirmed:
OCSP answers it "revoked" with reason certificateHold, the one reversible revocation (RFC 5280
§5.3.1, RFC 6960 §2.2), from its issuance time and without nextUpdate (RFC 6960 §4.2.2.1:
newer information is always available), so no relying party caches the hold past the certConf.
A certConf turns the answer "good"; a rejection, a missed confirmation deadline or a restart
(``fleet.ca.store``) turns it into a revocation that stays. The CRL does not list pending
certificates: a CRL is cached for up to its nextUpdate (a day), so listing every enrollment's
few seconds between ip and certConf would show confirmed certificates as held for that long,
and re-sign the CRL at each issuance. A pending certificate past its deadline is on no CRL for
at most one tick of the service before its rejection lists it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from fleet.ca.pki import CaHierarchy, public_key_bits
from fleet.ca.store import CertRecordStatus, CertStore

__all__ = ["CrlPublisher", "OcspResponder", "PublishedCrl"]

_DER = serialization.Encoding.DER


@dataclass(frozen=True)
class PublishedCrl:
    """One signed CRL: DER for HTTP and CMP crls(23), plus what a crlStatusList needs."""

    der: bytes
    number: int
    this_update: datetime
    next_update: datetime
    entries: int


class CrlPublisher:
    """The issuing CA's full CRL, rebuilt only when needed.

    A new CRL is signed when the store reports a new revocation (``revocation_generation``),
    when half of ``validity`` has passed since the last one, or on ``current(fresh=True)``.
    Under mass revocation, ``min_rebuild_interval`` (seconds) caps how often a changed CRL is
    re-signed; with the default 0 every revocation shows in the next CRL served.
    CRL numbers come from the store, so they keep growing across restarts (RFC 5280 §5.2.3).
    """

    def __init__(
        self,
        hierarchy: CaHierarchy,
        store: CertStore,
        *,
        validity: timedelta = timedelta(hours=24),
        min_rebuild_interval: float = 0.0,
    ) -> None:
        self.hierarchy = hierarchy
        self.store = store
        self.validity = validity
        self.min_rebuild_interval = min_rebuild_interval
        self._aki = x509.Extension(
            ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
            False,
            x509.AuthorityKeyIdentifier(hierarchy.issuing_ski, None, None),
        )
        # Build each entry once across rebuilds; keyed by time and reason too, because a hold
        # can be released (removeFromCRL) and the certificate revoked again later.
        self._entries: dict[
            tuple[int, datetime, x509.ReasonFlags | None], x509.RevokedCertificate
        ] = {}
        self._current: PublishedCrl | None = None
        self._built_generation = -1
        self._built_at = 0.0

    def current_crl_der(self) -> bytes:
        return self.current().der

    def current(self, *, fresh: bool = False) -> PublishedCrl:
        now = datetime.now(UTC)
        crl = self._current
        generation = self.store.revocation_generation
        if (
            crl is None
            or fresh
            or now >= crl.this_update + self.validity / 2
            or (
                generation != self._built_generation
                and time.monotonic() - self._built_at >= self.min_rebuild_interval
            )
        ):
            crl = self._build(now, generation)
        return crl

    def _build(self, now: datetime, generation: int) -> PublishedCrl:
        revoked = self.store.revoked()
        entries = []
        for serial, when, reason in revoked:
            entry = self._entries.get((serial, when, reason))
            if entry is None:
                exts: list[x509.Extension[x509.ExtensionType]] = []
                if reason is not None:
                    value = x509.CRLReason(reason)
                    exts.append(x509.Extension(CRLEntryExtensionOID.CRL_REASON, False, value))
                # One constructor call: the chained builder copies itself per step.
                entry = x509.RevokedCertificateBuilder(
                    serial, when.astimezone(UTC).replace(tzinfo=None), exts
                ).build()
                self._entries[(serial, when, reason)] = entry
            entries.append(entry)
        number = self.store.next_crl_number()
        this_update = now.replace(microsecond=0)
        next_update = this_update + self.validity
        builder = x509.CertificateRevocationListBuilder(
            issuer_name=self.hierarchy.issuing.subject,
            last_update=this_update.replace(tzinfo=None),
            next_update=next_update.replace(tzinfo=None),
            extensions=[
                self._aki,
                x509.Extension(ExtensionOID.CRL_NUMBER, False, x509.CRLNumber(number)),
            ],
            revoked_certificates=entries,
        )
        h = self.hierarchy
        signed = builder.sign(h.issuing_key, h.issuing_hash)  # type: ignore[arg-type]
        crl = PublishedCrl(
            der=signed.public_bytes(_DER),
            number=number,
            this_update=this_update,
            next_update=next_update,
            entries=len(entries),
        )
        self._current = crl
        self._built_generation = generation
        self._built_at = time.monotonic()
        return crl


_OCSP_HASHES: tuple[hashes.HashAlgorithm, ...] = (
    hashes.SHA1(),
    hashes.SHA224(),
    hashes.SHA256(),
    hashes.SHA384(),
    hashes.SHA512(),
)


class OcspResponder:
    """Answers OCSP requests (RFC 6960) for the issuing CA, signing as the CA itself.

    good: issued by us and confirmed (or confirmed implicitly), not revoked; revoked: with time
    and reason, and for a pending certificate on hold (module doc); unknown: another issuer, or
    a serial we never issued. A request that cannot be parsed gets a ``malformedRequest``
    response, a failure while answering ``internalError``: ``respond`` never raises. A nonce
    in the request is echoed. Requests for several certificates at once are not supported
    (the library parses single-certificate requests) and are answered ``malformedRequest``.
    """

    def __init__(
        self,
        hierarchy: CaHierarchy,
        store: CertStore,
        *,
        validity: timedelta = timedelta(hours=1),
    ) -> None:
        self.hierarchy = hierarchy
        self.store = store
        self.validity = validity
        # CertID of the issuing CA under each hash a client may use: (issuerNameHash, KeyHash).
        self._issuer_ids: dict[str, tuple[bytes, bytes]] = {}
        name_der = hierarchy.issuing.subject.public_bytes()
        key_bits = public_key_bits(hierarchy.issuing.public_key())
        for algorithm in _OCSP_HASHES:
            self._issuer_ids[algorithm.name] = (
                _digest(algorithm, name_der),
                _digest(algorithm, key_bits),
            )
        self._malformed = ocsp.OCSPResponseBuilder.build_unsuccessful(
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        ).public_bytes(_DER)
        self._internal_error = ocsp.OCSPResponseBuilder.build_unsuccessful(
            ocsp.OCSPResponseStatus.INTERNAL_ERROR
        ).public_bytes(_DER)

    @property
    def malformed_response_der(self) -> bytes:
        """The ``malformedRequest`` answer, for the HTTP layer (e.g. a GET it cannot decode)."""
        return self._malformed

    def respond(self, request_der: bytes) -> bytes:
        try:
            request = ocsp.load_der_ocsp_request(request_der)
            serial = request.serial_number
            name_hash = request.issuer_name_hash
            key_hash = request.issuer_key_hash
            algorithm = request.hash_algorithm
            nonce: x509.OCSPNonce | None
            try:
                nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value
            except x509.ExtensionNotFound:
                nonce = None
        except Exception:  # noqa: BLE001 - the parser raises several types; all mean "malformed"
            return self._malformed
        try:
            return self._answer(serial, name_hash, key_hash, algorithm, nonce)
        except Exception:  # noqa: BLE001 - an answer (internalError), never a crashed responder
            return self._internal_error

    def _answer(
        self,
        serial: int,
        name_hash: bytes,
        key_hash: bytes,
        algorithm: hashes.HashAlgorithm,
        nonce: x509.OCSPNonce | None,
    ) -> bytes:
        status = ocsp.OCSPCertStatus.UNKNOWN
        revocation_time: datetime | None = None
        reason: x509.ReasonFlags | None = None
        now = datetime.now(UTC).replace(microsecond=0)
        next_update: datetime | None = now + self.validity
        if self._issuer_ids.get(algorithm.name) == (name_hash, key_hash):
            record = self.store.get(serial)
            if record is not None:
                if record.status in (CertRecordStatus.REVOKED, CertRecordStatus.REJECTED):
                    status = ocsp.OCSPCertStatus.REVOKED
                    revocation_time = record.revocation_time
                    reason = record.revocation_reason
                elif record.status is CertRecordStatus.PENDING:  # not good until confirmed (module doc)
                    status = ocsp.OCSPCertStatus.REVOKED
                    revocation_time = record.created
                    reason = x509.ReasonFlags.certificate_hold
                    next_update = None
                else:
                    status = ocsp.OCSPCertStatus.GOOD
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=name_hash,
                issuer_key_hash=key_hash,
                serial_number=serial,
                algorithm=algorithm,
                cert_status=status,
                this_update=now,
                next_update=next_update,
                revocation_time=revocation_time,
                revocation_reason=reason,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.hierarchy.issuing)
        )
        if nonce is not None:
            builder = builder.add_extension(nonce, critical=False)
        h = self.hierarchy
        response = builder.sign(h.issuing_key, h.issuing_hash)
        return response.public_bytes(_DER)


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()
