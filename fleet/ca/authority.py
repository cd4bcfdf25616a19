"""The embedded CA behind the CMP server role: issuance policy, records, revocation, genp answers.

``Authority`` implements ``fleet.cmp.backend.CaBackend`` on ``fleet.ca.pki`` (hierarchy and
issuer), ``fleet.ca.store`` (durable records) and ``fleet.ca.revocation`` (CRL and OCSP), and
builds the ``CmpServer`` with the RA signer, trust anchors and shared secrets. No I/O beyond the
store's SQLite file.

Key updates: once the certificate a kur issued is confirmed (certConf, or implicit
confirmation), the certificate it updated is *replaced*. It stays valid for CRL and OCSP (a CA
that revoked every renewed certificate would grow its CRL with each rotation), but it no longer
signs CMP requests unless ``ServerConfig.allow_replaced_signers`` says so. The store records
the replacement (``CertStore.record_replacement``) with the new certificate's confirmation, under
the same durability rules: committed in the same transaction or after it, so a crash never
leaves the old certificate replaced by a certificate the records lost, and durable before the
pkiConf (or the kup, with implicit confirmation) that says so goes out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleet.ca.crosscert import issue_cross_certificate
from fleet.ca.keyreuse import KnownKeys, spki_fingerprint
from fleet.ca.pki import CaHierarchy, CertificateIssuer, CertificateRequestRejected, IssuedCert
from fleet.ca.revocation import CrlPublisher, OcspResponder
from fleet.ca.rollover import RootUpdate
from fleet.ca.store import (
    CertificateAlreadyRevoked,
    CertRecordStatus,
    CertStore,
    InvalidStatusChange,
    SerialCollision,
    UnknownCertificate,
)
from fleet.cmp import der, genm, oids, support
from fleet.cmp.backend import CertState, IssueRequest, KnownCert, Rejected
from fleet.cmp.kga import KeyGenerator
from fleet.cmp.messages import BodyType, CertTemplate, FailInfo, InfoTypeAndValue
from fleet.cmp.protection import SignatureProtector
from fleet.cmp.server import CmpServer, ServerConfig
from fleet.cmp.shared_secrets import SecretLookup
from fleet.cmp.trust import TrustStore, load_cert

__all__ = ["STORE_FILE", "Authority"]

STORE_FILE = "certs.sqlite"
ID_REG_CTRL_ALG_ID = "1.3.6.1.5.5.7.5.1.11"
_P256 = "1.2.840.10045.3.1.7"
_P384 = "1.3.132.0.34"

# signKeyPairTypes: the key types this CA certifies (and verifies POPs of).
_SIGN_KEY_PAIR_TYPES = der.sequence(
    der.algorithm_identifier(oids.EC_PUBLIC_KEY, der.oid(_P256)),
    der.algorithm_identifier(oids.EC_PUBLIC_KEY, der.oid(_P384)),
    der.algorithm_identifier(oids.RSA_ENCRYPTION, der.NULL_DER),
    der.algorithm_identifier(oids.ED25519),
)
# certReqTemplate: no fixed names, key spec EC P-256 (RFC 9483 §4.3.3 controls with id-regCtrl-algId).
_KEY_SPEC = der.sequence(
    der.sequence(der.oid(ID_REG_CTRL_ALG_ID), der.algorithm_identifier(oids.EC_PUBLIC_KEY, der.oid(_P256)))
)


@dataclass(frozen=True)
class AuthorityStatistics:
    by_status: dict[str, int]


class Authority:
    """Issues, records and revokes certificates for the CMP server role."""

    def __init__(
        self,
        hierarchy: CaHierarchy,
        store: CertStore,
        *,
        base_url: str | None = None,
        validity: timedelta = timedelta(days=365),
        allow_key_reuse: bool = False,
    ) -> None:
        self.hierarchy = hierarchy
        self.store = store
        self.issuer = CertificateIssuer(hierarchy, base_url=base_url, validity=validity)
        self.crl = CrlPublisher(hierarchy, store)
        self.ocsp = OcspResponder(hierarchy, store)
        root_der = hierarchy.root_der
        self._issued_chain = tuple(c for c in hierarchy.chain_for_issued_der if c != root_der)
        self._ca_certs = hierarchy.chain_for_issued_der
        self._issuing_name = hierarchy.issuing.subject
        self._issuing_name_der = self._issuing_name.public_bytes()
        # kur certificates not yet confirmed: new serial -> serial of the certificate it updates
        self._updates: dict[int, int] = {}
        # Keys already certified (``fleet.ca.keyreuse``); None: key reuse is allowed.
        self._keys = None if allow_key_reuse else KnownKeys(store)
        # The root key update offered (genm rootCaCert, caKeyUpdateInfo), and the trust stores
        # and signers handed out, which a switch to the new root updates in place.
        self.root_update: RootUpdate | None = None
        self._trust_stores: list[TrustStore] = []
        self._signers: list[SignatureProtector] = []

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        base_url: str | None = None,
        key_type: str = "ec:P-256",
        validity: timedelta = timedelta(days=365),
        allow_key_reuse: bool = False,
    ) -> Authority:
        """Load (or on first start create) the hierarchy and the store in ``state_dir``."""
        hierarchy = CaHierarchy.load_or_create(Path(state_dir), key_type=key_type)
        store = CertStore(Path(state_dir) / STORE_FILE)
        return cls(hierarchy, store, base_url=base_url, validity=validity, allow_key_reuse=allow_key_reuse)

    def offer_root_update(self, update: RootUpdate | None) -> None:
        """Answer genm rootCaCert/caKeyUpdateInfo with ``update`` (``fleet.ca.rollover``), and
        accept requests signed under its new root from now on."""
        self.root_update = update
        if update is not None:
            for trust in self._trust_stores:
                trust.add(update.new_with_new)
            if update.switched:
                self._refresh_signers()

    def adopt(self, hierarchy: CaHierarchy, update: RootUpdate) -> None:
        """Serve ``hierarchy``, the same issuing key under a new root (a switched rollover), from
        the next answer on: chains, caPubs and signed responses carry the new root, and the
        old root stays trusted for the devices it certified."""
        self.hierarchy = hierarchy
        self.issuer = CertificateIssuer(hierarchy, base_url=self.issuer.base_url, validity=self.issuer.validity)
        self.crl.hierarchy = hierarchy
        self.ocsp.hierarchy = hierarchy
        root_der = hierarchy.root_der
        self._issued_chain = tuple(c for c in hierarchy.chain_for_issued_der if c != root_der)
        self._ca_certs = hierarchy.chain_for_issued_der
        for trust in self._trust_stores:
            trust.add(update.old_root)
        self.offer_root_update(update)

    def _refresh_signers(self) -> None:
        extra_certs = self._new_signer().extra_certs
        for signer in self._signers:
            signer.extra_certs = extra_certs

    def set_base_url(self, base_url: str) -> None:
        """Where issued certificates point for the CRL and OCSP (known once the port is bound)."""
        self.issuer = CertificateIssuer(self.hierarchy, base_url=base_url, validity=self.issuer.validity)

    def close(self) -> None:
        self.store.close()

    # -- CaBackend ------------------------------------------------------------------------

    @property
    def issued_chain(self) -> tuple[bytes, ...]:
        return self._issued_chain

    @property
    def root(self) -> bytes:
        return self.hierarchy.root_der

    def issue(self, request: IssueRequest) -> IssuedCert:
        status = CertRecordStatus.ISSUED if request.confirmed else CertRecordStatus.PENDING
        store = self.store
        # A key this CA generated itself (central key generation) is not the requester's reuse: only
        # the load-target knob kga_rsa_pool hands a pool key out again, and on purpose.
        keys = self._keys if request.central_key is None else None
        if keys is not None:
            spki = request.spki or request.public_key.public_bytes(  # type: ignore[attr-defined]
                Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            if keys.certified(spki_fingerprint(spki)):
                raise Rejected("this public key is already certified; request a certificate for a new key pair",
                               FailInfo.badCertTemplate)
        for _ in range(3):  # serials are unique by construction; a collision just draws again
            serial = store.allocate_serial()
            try:
                if request.kind is BodyType.CCR:
                    assert request.not_before is not None and request.not_after is not None
                    assert isinstance(request.subject, x509.Name)
                    issued = issue_cross_certificate(
                        self.hierarchy, request.public_key, request.subject,  # type: ignore[arg-type]
                        request.not_before, request.not_after, serial,
                    )
                else:
                    issued = self.issuer.issue(
                        request.public_key,  # type: ignore[arg-type]
                        request.subject,
                        extensions=request.extensions,
                        not_after=request.not_after,
                        serial=serial,
                        spki=request.spki,
                        now=request.now,
                    )
            except CertificateRequestRejected as exc:
                store.release_serial(serial)
                raise Rejected(str(exc), FailInfo.badCertTemplate) from None
            try:
                store.record_issued(
                    issued, transaction_id=request.transaction_id, device_ref=request.device_ref, status=status,
                    confirm_deadline=_deadline(request.confirm_deadline),
                )
            except SerialCollision:
                store.release_serial(serial)
                continue
            if keys is not None:
                keys.add(issued.key_fingerprint)
            if request.central_key is not None:
                store.record_central_key(serial, *request.central_key)
            if request.old_cert is not None:
                if request.confirmed:
                    self._replace(request.old_cert.serial_number, serial)
                else:
                    self._updates[serial] = request.old_cert.serial_number
            return issued
        raise Rejected("could not draw a unique serial number", FailInfo.systemFailure)

    def confirm(self, serial: int) -> None:
        try:
            self.store.confirm(serial)
        except InvalidStatusChange as exc:  # revoked before its certConf arrived
            self._updates.pop(serial, None)
            raise Rejected(str(exc), FailInfo.certRevoked) from None
        old = self._updates.pop(serial, None)
        if old is not None:
            self._replace(old, serial)

    def reject(self, serial: int, now: datetime) -> None:
        self._updates.pop(serial, None)
        try:
            self.store.reject(serial, now)
        except (InvalidStatusChange, UnknownCertificate):
            pass  # confirmed or revoked meanwhile: nothing to reject

    def _replace(self, old: int, new: int) -> None:
        """``old`` is replaced by the confirmed ``new`` (module doc)."""
        self.store.record_replacement(old, new)

    def reject_abandoned(self, now: datetime) -> int:
        """At start: reject every certificate still pending, whatever its deadline (no
        transaction survives a restart to confirm it), durably; returns how many."""
        count = self.store.reject_unconfirmed(now)
        self.store.flush()
        return count

    def expire_unconfirmed(
        self, now: datetime, in_progress: Callable[[bytes | None], bool] | None = None
    ) -> list[int]:
        """Reject pending certificates past their confirmation deadline that no live transaction
        (``in_progress(transaction_id)``) is settling; their serials."""
        return [rec.serial for rec in self.store.expire_pending(now, in_progress)]

    def find(self, issuer: x509.Name, serial: int) -> KnownCert | None:
        if issuer != self._issuing_name:
            return None
        rec = self.store.get(serial)
        if rec is None:
            return None
        return KnownCert(load_cert(rec.der), rec.der, rec.status.value, rec.revocation_reason)

    def cert_state(self, cert: x509.Certificate) -> CertState:
        serial = cert.serial_number
        rec = self.store.get(serial)
        if rec is None or rec.der != cert.public_bytes(Encoding.DER):
            return CertState.UNKNOWN if self._issued_under_our_key(cert) else CertState.FOREIGN
        status = rec.status
        if status is CertRecordStatus.ISSUED:
            return CertState.REPLACED if self.store.replaced_by(serial) is not None else CertState.GOOD
        if status is CertRecordStatus.PENDING:
            return CertState.PENDING
        if status is CertRecordStatus.REJECTED:
            return CertState.REJECTED
        if rec.revocation_reason is x509.ReasonFlags.certificate_hold:
            return CertState.ON_HOLD
        return CertState.REVOKED

    def _issued_under_our_key(self, cert: x509.Certificate) -> bool:
        """Whether a certificate the records do not know names this CA's issuing key as its
        issuer (another CA may well use the same name: two fleet CAs do)."""
        if cert.issuer != self._issuing_name:
            return False
        try:
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        except x509.ExtensionNotFound:
            aki = None
        if aki is not None:
            return aki == self.hierarchy.issuing_ski
        try:
            cert.verify_directly_issued_by(self.hierarchy.issuing)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            return False
        return True

    def revoke(self, serial: int, reason: x509.ReasonFlags | None, now: datetime) -> None:
        try:
            self.store.revoke(serial, reason, now)
        except CertificateAlreadyRevoked as exc:
            raise Rejected(str(exc), FailInfo.certRevoked) from None
        except UnknownCertificate as exc:
            raise Rejected(str(exc), FailInfo.badCertId) from None
        self.store.flush()  # durable before the rp says so (store contract)

    def release_hold(self, serial: int) -> None:
        try:
            self.store.release_hold(serial)
        except InvalidStatusChange as exc:
            raise Rejected(str(exc), FailInfo.badRequest) from None
        except UnknownCertificate as exc:
            raise Rejected(str(exc), FailInfo.badCertId) from None
        self.store.flush()  # durable before the rp says so, as for a revocation

    def general_info(self, item: InfoTypeAndValue) -> InfoTypeAndValue:
        support.check_request(item)
        oid = item.oid
        if oid == oids.IT_CA_CERTS:
            return genm.ca_certs_response(self._ca_certs)
        if oid == oids.IT_ROOT_CA_CERT:  # the device names the root it trusts, or none
            update = self.root_update
            if update is None or not update.offers_update_for(item.value):
                return genm.root_ca_key_update_response(None)  # no update for that root
            return genm.root_ca_key_update_response(update.genm_value())
        if oid == oids.IT_CA_KEY_UPDATE_INFO:  # RFC 9810 §5.3.19.4 (deprecated): CAKeyUpdAnnContent
            if self.root_update is None:
                return InfoTypeAndValue(oid)
            a = self.root_update.announcement()
            return InfoTypeAndValue(oid, der.sequence(a.old_with_new, a.new_with_old, a.new_with_new))
        if oid == oids.IT_CERT_REQ_TEMPLATE:
            return genm.cert_req_template_response(CertTemplate(), _KEY_SPEC)
        if oid == oids.IT_CRL_STATUS_LIST:
            issuers = genm.crl_status_issuers(item)
            if issuers and self._issuing_name_der not in issuers:
                return genm.crls_response(())
            return genm.crls_response((self.crl.current_crl_der(),))
        if oid == oids.IT_SIGN_KEY_PAIR_TYPES:
            return InfoTypeAndValue(oid, _SIGN_KEY_PAIR_TYPES)
        if oid == oids.IT_CURRENT_CRL:
            return InfoTypeAndValue(oid, self.crl.current_crl_der())
        if oid == oids.IT_ENC_KEY_PAIR_TYPES:
            return InfoTypeAndValue(oid, support.ENC_KEY_PAIR_TYPES)
        if oid == oids.IT_PREFERRED_SYMM_ALG:
            return InfoTypeAndValue(oid, support.PREFERRED_SYMM_ALG)
        if oid == oids.IT_SUPP_LANG_TAGS:
            return support.language_tags_response(item)
        return InfoTypeAndValue(oid)  # unknown or unsupported: answered without a value

    # -- wiring ---------------------------------------------------------------------------

    def signer(self) -> SignatureProtector:
        """The RA signer that protects signed responses: its certificate, then its chain; after a
        root key switch also newWithOld, so devices still trusting the old root find a path."""
        signer = self._new_signer()
        self._signers.append(signer)
        return signer

    def _new_signer(self) -> SignatureProtector:
        h = self.hierarchy
        update = self.root_update
        links = (update.new_with_old,) if update is not None and update.switched else ()
        return SignatureProtector(h.signer_key, h.signer, (*h.signer_chain[1:], *links))  # type: ignore[arg-type]

    def server(
        self,
        *,
        config: ServerConfig | None = None,
        secrets: SecretLookup | None = None,
        trusted: Iterable[x509.Certificate] = (),
        vendor: Iterable[x509.Certificate] = (),
        untrusted: Iterable[x509.Certificate] = (),
        ra_trusted: Iterable[x509.Certificate] = (),
        kga: KeyGenerator | None = None,
    ) -> CmpServer:
        """A ``CmpServer`` for this CA. Signed requests are accepted from certificates chaining to
        this CA's root, to ``trusted`` or to ``ra_trusted``; ir also from ``vendor`` (IDevID)
        anchors. Requests signed under ``ra_trusted`` (RAs) may carry raVerified POP."""
        vendor_list = list(vendor)
        ra_list = list(ra_trusted)
        trust = TrustStore([self.hierarchy.root, *trusted, *ra_list])
        update = self.root_update
        if update is not None:
            trust.add(update.new_with_new)
            trust.add(update.old_root)
        self._trust_stores.append(trust)
        return CmpServer(
            self,
            self.signer(),
            config=config,
            secrets=secrets,
            trust=trust,
            vendor_trust=TrustStore(vendor_list) if vendor_list else None,
            untrusted=(*self.hierarchy.chain_for_issued, *untrusted),
            ra_trust=TrustStore(ra_list) if ra_list else None,
            kga=kga,
        )

    def statistics(self) -> AuthorityStatistics:
        return AuthorityStatistics(self.store.counts_by_status())


Mode = Literal["lcmpp", "3gpp"]

_last_deadline: tuple[float, datetime] = (-1.0, datetime.fromtimestamp(0, UTC))


def _deadline(seconds: float | None) -> datetime | None:
    """A certConf deadline as a datetime, made once per value (most issuances of a second share
    one, up to the sub-second part the store rounds up anyway)."""
    global _last_deadline
    if seconds is None:
        return None
    whole = float(math.ceil(seconds))
    if _last_deadline[0] != whole:
        _last_deadline = (whole, datetime.fromtimestamp(whole, UTC))
    return _last_deadline[1]
