"""Protection in the CMP server role: who sent a request and may it ask what it asks, and
responses protected as the requests they answer (``ResponseWriter``).

Checks, in order (RFC 9483 §3, checklist items 13-17), after the request decoded:

* ``Authenticator.authenticate``, one step for every body: a MAC with the secret the
  ``SecretLookup`` finds for senderKID and a directoryName sender, or a signature by a
  certificate that chains to the trust anchors (vendor (IDevID) anchors for ir only), named by
  sender and senderKID, and still good in the CA's records (``CaBackend.cert_state``: not
  revoked, on hold, unconfirmed or replaced by a kur). A signer the records refuse is not
  refused here: the denial goes back to the engine, which answers it last, in the request's
  own response where it has a status.
* ``Authenticator.check_header``: pvno 2 or 3, a transactionID, a senderNonce of 16+ octets,
  messageTime within the allowed skew.
* Then the engine's transaction table (``fleet.cmp.server``); a follow-up must come from the
  same requester (``check_same_requester``). What a request asks is authorised by
  ``check_pop``, ``Authenticator.check_requested_key``, ``Authenticator.authorize_kur`` and
  ``authorize_rr``.

Responses are protected like the request: a MAC request is answered with the same MAC algorithm
and parameters under the same secret, a signed request (and any request whose MAC could not be
verified) with the RA signer's signature, its certificate first in extraCerts with its chain, and
its SKI as senderKID.

Failures of the checks raise ``Refuse`` (an error message); refusals of what a request asks
raise ``Rejected`` (the request's own response, with its status).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal, Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm as CryptographyUnsupported
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from fleet.cmp import der
from fleet.cmp.backend import CaBackend, CertState, KnownCert, Rejected
from fleet.cmp.der import DerError
from fleet.cmp.fastwire import (
    cert_rep_der,
    general_info_der,
    message_time_der,
    response_der,
    response_header_der,
)
from fleet.cmp.messages import (
    NULL_DN_GENERAL_NAME,
    Body,
    BodyType,
    CertReqMsg,
    FailInfo,
    InfoTypeAndValue,
    PKIConfirmContent,
    PKIHeader,
    PKIMessage,
    PKIStatus,
    directory_name,
    encode_body,
    general_name_directory,
)
from fleet.cmp.protection import (
    Pbmac1Params,
    PbmParams,
    ProtectionError,
    SignatureProtector,
    UnsupportedAlgorithm,
    compute_mac,
    is_mac_algorithm,
    parse_mac_params,
    verify_signature,
)
from fleet.cmp.shared_secrets import SecretLookup
from fleet.cmp.trust import (
    SignerMismatch,
    TrustStore,
    UnsupportedKey,
    UntrustedSigner,
    check_signer_names,
    find_signer,
    load_cert,
    public_key_of,
)
from fleet.cmp.x509parts import is_rsa_key, names_certificate, old_cert_id, same_key, short_text

__all__ = [
    "NEW_REQUESTS",
    "NO_AUTH",
    "Auth",
    "Authenticator",
    "Refuse",
    "ResponseWriter",
    "authorize_rr",
    "check_pop",
    "check_same_requester",
    "is_directory_name",
    "ra_verified_by",
]

# Bodies that start a transaction; every other request follows one.
NEW_REQUESTS = frozenset(
    {BodyType.IR, BodyType.CR, BodyType.KUR, BodyType.P10CR, BodyType.RR, BodyType.GENM}
)


class Refuse(Exception):
    """Answer with an error message (the server's control flow, never escapes ``handle``)."""

    def __init__(self, fail: FailInfo, text: str, status: PKIStatus = PKIStatus.REJECTION) -> None:
        super().__init__(text)
        self.fail = fail
        self.text = text
        self.status = status


@dataclass(slots=True)
class Auth:
    """How a request was authenticated; responses in its transaction are protected the same way."""

    kind: Literal["mac", "signature", "none"]
    secret: bytes | None = None
    mac_alg: bytes | None = None
    mac_params: PbmParams | Pbmac1Params | None = None
    sender_kid: bytes | None = None
    signer: x509.Certificate | None = None
    signer_der: bytes | None = None

    @property
    def reference(self) -> str | None:
        if self.kind == "mac" and self.sender_kid is not None:
            return self.sender_kid.decode("utf-8", "replace")
        if self.signer is not None:
            cns = self.signer.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            return str(cns[0].value) if cns else self.signer.subject.rfc4514_string()
        return None


NO_AUTH = Auth("none")


class Transaction(Protocol):
    """What the checks read of a live transaction (the engine's record of it)."""

    @property
    def kind(self) -> BodyType: ...
    @property
    def auth(self) -> Auth: ...
    @property
    def settles(self) -> int | None: ...


# Signer states the records refuse: status text and failInfo (``Authenticator._signer_denial``).
_DENIALS: dict[CertState, tuple[str, FailInfo]] = {
    CertState.REVOKED: ("signer certificate is revoked", FailInfo.certRevoked),
    CertState.REJECTED: ("signer certificate was rejected (never confirmed)", FailInfo.certRevoked),
    CertState.ON_HOLD: ("signer certificate is on hold (revoked with certificateHold)", FailInfo.certRevoked),
    CertState.PENDING: ("signer certificate is not confirmed yet", FailInfo.notAuthorized),
    CertState.REPLACED: ("signer certificate was replaced by a key update", FailInfo.notAuthorized),
    CertState.UNKNOWN: ("signer certificate is not in this CA's records", FailInfo.signerNotTrusted),
}


class Authenticator:
    """The checks that need the server's policy, secrets, trust anchors and records.

    ``max_iterations``, ``max_rsa_bits``, ``min_nonce_bytes``, ``max_time_skew`` and
    ``allow_replaced_signers`` come from the server's ``ServerConfig``.
    """

    def __init__(
        self,
        backend: CaBackend,
        *,
        secrets: SecretLookup | None,
        trust: TrustStore,
        vendor_trust: TrustStore | None,
        untrusted: tuple[x509.Certificate, ...],
        max_iterations: int,
        max_rsa_bits: int,
        min_nonce_bytes: int,
        max_time_skew: float | None,
        allow_replaced_signers: bool,
    ) -> None:
        self.backend = backend
        self.secrets = secrets
        self.trust = trust
        self.vendor_trust = vendor_trust
        self.untrusted = untrusted
        self.max_iterations = max_iterations
        self.max_rsa_bits = max_rsa_bits
        self.min_nonce_bytes = min_nonce_bytes
        self.max_time_skew = max_time_skew
        self.allow_replaced_signers = allow_replaced_signers

    def authenticate(
        self, msg: PKIMessage, now: float, live: Mapping[bytes, Transaction]
    ) -> tuple[Auth, Rejected | None]:
        """The one authentication step of every request, whatever its body (RFC 9483 §3.5):
        how it was protected, and whether the CA's records refuse its signer.

        MAC: the secret ``secrets`` finds for senderKID verifies the MAC, and the sender is a
        directoryName (RFC 9483 §3.1; RFC 9810 §5.1.1 gives a sender that does not know its
        name the NULL-DN, still a directoryName, as OpenSSL sends it). Signature: the
        certificate matching senderKID in extraCerts verifies the signature and chains to a
        trust anchor at ``now``, and sender and senderKID name it (``check_signer_names``).
        These failures raise ``Refuse``: an error message with badMessageCheck, "integrity
        check failed" (RFC 9810 §5.2.3): the header the protection covers does not identify
        the key that made it; badAlg for an algorithm, curve or key type fleet cannot use. Then
        the CA's records must still let the signer act (``_signer_denial``); a refusal is
        returned, for the engine to answer once it has checked the header and the transaction
        table. ``live`` holds the live transactions by transactionID.
        """
        h = msg.header
        if msg.protection is None or h.protection_alg is None:
            raise Refuse(FailInfo.badMessageCheck, "request is not protected")
        params = _known_mac_params.get(h.protection_alg)  # a device reuses its salt: usually here
        if params is not None or _is_mac(h.protection_alg):
            secret = self.secrets(h.sender_kid) if self.secrets is not None else None
            if secret is None:
                raise Refuse(FailInfo.badMessageCheck, "no shared secret for this reference")
            if params is None or params.iterations > self.max_iterations:
                try:
                    params = _mac_params(h.protection_alg, self.max_iterations)
                except UnsupportedAlgorithm as exc:
                    raise Refuse(FailInfo.badAlg, str(exc)) from None
                except ProtectionError as exc:
                    raise Refuse(FailInfo.badMessageCheck, str(exc)) from None
            if not hmac.compare_digest(compute_mac(params, secret, msg.protected_part), msg.protection):
                raise Refuse(FailInfo.badMessageCheck, "MAC does not verify")
            if not is_directory_name(h.sender):
                raise Refuse(FailInfo.badMessageCheck, "sender must be a directoryName (RFC 9483 §3.1)")
            return Auth("mac", secret=secret, mac_alg=h.protection_alg, mac_params=params,
                        sender_kid=h.sender_kid), None
        signer = self._verified_signer(msg, now, live)
        try:
            check_signer_names(h.sender, h.sender_kid, signer)
        except SignerMismatch as exc:
            raise Refuse(FailInfo.badMessageCheck, str(exc)) from None
        auth = Auth("signature", sender_kid=h.sender_kid, signer=signer,
                    signer_der=signer.public_bytes(Encoding.DER))
        return auth, self._signer_denial(msg, auth, signer, live)

    def _verified_signer(
        self, msg: PKIMessage, now: float, live: Mapping[bytes, Transaction]
    ) -> x509.Certificate:
        """The certificate whose key made the signature, its path to an anchor verified at
        ``now``. A certificate cryptography cannot read (a duplicated extension, an unknown
        curve) is bad protection like any other, not a server failure."""
        h = msg.header
        assert h.protection_alg is not None and msg.protection is not None
        try:
            signer = find_signer(msg.extra_certs, h.sender_kid)
            public_key = public_key_of(signer)
            self.check_key_size(public_key, "signer")
            verify_signature(h.protection_alg, public_key, msg.protected_part, msg.protection)
            untrusted = [load_cert(c) for c in msg.extra_certs]
        except (UnsupportedAlgorithm, UnsupportedKey, CryptographyUnsupported) as exc:
            raise Refuse(FailInfo.badAlg, short_text(exc)) from None
        except ProtectionError as exc:
            raise Refuse(FailInfo.badMessageCheck, short_text(exc)) from None
        except (ValueError, TypeError) as exc:  # unusable key in the signer certificate
            raise Refuse(FailInfo.badMessageCheck, f"unusable signer certificate: {short_text(exc)}") from None
        untrusted.extend(self.untrusted)
        try:
            self.trust.verify(signer, untrusted, at=datetime.fromtimestamp(now, UTC))
        except UntrustedSigner as exc:
            vendor = self.vendor_trust
            if vendor is None or not _vendor_allowed(msg, live):
                raise Refuse(FailInfo.signerNotTrusted, str(exc)) from None
            try:
                vendor.verify(signer, untrusted, at=datetime.fromtimestamp(now, UTC))
            except UntrustedSigner as exc2:
                raise Refuse(FailInfo.signerNotTrusted, str(exc2)) from None
        return signer

    def _signer_denial(
        self, msg: PKIMessage, auth: Auth, signer: x509.Certificate, live: Mapping[bytes, Transaction]
    ) -> Rejected | None:
        """Whether the CA's records refuse a (verified) signer, and with which failInfo.

        Revoked, rejected and on-hold certificates: certRevoked (RFC 9810 §5.2.3, "the
        certificate has already been revoked"; a hold is a revocation with reason
        certificateHold, RFC 5280 §5.3.1, and CRL and OCSP say revoked). Not yet confirmed, or
        replaced by a confirmed kur: notAuthorized ("the sender was not authorized to make the
        preceding request"; the certificate itself is not revoked). Issued under this CA's
        name but unknown to its records: signerNotTrusted ("signer of the message unknown").
        Two exceptions, so that the records never lock a holder out of its own revocation: an
        rr naming the signer's own certificate goes on to the rr rules (which let it revoke
        itself, release its own hold, or refuse as before), and the follow-ups of a transaction
        whose own request changed the signer's status still get their answers."""
        state = self.backend.cert_state(signer)
        if state is CertState.GOOD or state is CertState.FOREIGN:
            return None
        if state is CertState.REPLACED and self.allow_replaced_signers:
            return None
        if msg.body_type is BodyType.RR and names_certificate(msg.body, signer):
            return None
        tx = live.get(msg.header.transaction_id or b"")
        if (tx is not None and msg.body_type not in NEW_REQUESTS and tx.settles == signer.serial_number
                and tx.auth.signer_der == auth.signer_der):
            return None
        text, fail = _DENIALS[state]
        return Rejected(text, fail)

    def check_key_size(self, public_key: PublicKeyTypes, what: str) -> None:
        if is_rsa_key(type(public_key)):
            # is_rsa_key stands in for isinstance (an ABC check, dear on every signed request)
            # and mypy cannot narrow from it: the key is an RSAPublicKey here.
            bits: int = public_key.key_size  # type: ignore[union-attr]
            if not 2048 <= bits <= self.max_rsa_bits:
                raise Refuse(FailInfo.badAlg, f"{what} RSA key of {bits} bits is outside "
                                              f"2048..{self.max_rsa_bits}")

    def check_requested_key(self, public_key: PublicKeyTypes) -> None:
        """A requested key fleet would not certify: the request's own rejection, badCertTemplate."""
        try:
            self.check_key_size(public_key, "requested")
        except Refuse as refusal:
            raise Rejected(refusal.text, FailInfo.badCertTemplate) from None

    def check_header(self, h: PKIHeader, now: float) -> None:
        if h.pvno not in (2, 3):
            raise Refuse(FailInfo.unsupportedVersion, f"pvno {h.pvno} is not supported (use 2 or 3)")
        if not h.transaction_id:
            raise Refuse(FailInfo.badRequest, "request lacks a transactionID")
        if h.sender_nonce is None or len(h.sender_nonce) < self.min_nonce_bytes:
            raise Refuse(FailInfo.badSenderNonce,
                         f"senderNonce must be at least {self.min_nonce_bytes} octets")
        skew = self.max_time_skew
        if skew is not None and h.message_time is not None and abs(_timestamp(h.message_time) - now) > skew:
            raise Refuse(FailInfo.badTime, f"messageTime is more than {skew:g} s off")

    def authorize_kur(self, auth: Auth, controls: bytes | None) -> x509.Certificate:
        """kur: the certificate being updated must be ours and alive, and the request signed with
        it or with its key (RFC 9483 §4.1.3)."""
        signer = auth.signer
        assert signer is not None
        target: KnownCert | None
        old_id = old_cert_id(controls)
        if old_id is not None:
            issuer, serial = old_id
            target = self.backend.find(issuer, serial)
        else:
            target = self.backend.find(signer.issuer, signer.serial_number)
        if target is None:
            raise Rejected("certificate to update was not issued by this CA", FailInfo.badCertId)
        if target.status in ("revoked", "rejected"):
            raise Rejected("certificate to update is revoked", FailInfo.certRevoked)
        if target.der != auth.signer_der and not same_key(target.cert, signer):
            raise Rejected("kur is not signed with the certificate being updated", FailInfo.notAuthorized)
        return target.cert


class ResponseWriter:
    """Responses encoded and protected like the request they answer (module doc).

    The bytes are what ``encoding.encode_header``/``encode_body``/``assemble`` would give (the
    tests compare them), put together by ``fleet.cmp.fastwire`` from parts that repeat between
    responses and are encoded once: messageTime per second, generalInfo, caPubs, extraCerts.
    """

    def __init__(self, signer: SignatureProtector, random: Callable[[int], bytes]) -> None:
        self.signer = signer
        self._random = random
        self._signer_name = directory_name(signer.sender_name)

    def write(
        self, request: PKIHeader, auth: Auth, now: float, body_type: BodyType, body: Body,
        info: tuple[InfoTypeAndValue, ...] = (), extra: tuple[bytes, ...] = (),
    ) -> tuple[bytes, bytes]:
        """A response to ``request`` (authenticated as ``auth``) made at ``now``, with generalInfo
        ``info`` and extraCerts ``extra``; returns (bytes, our senderNonce)."""
        nonce = self._random(16)
        mac = auth.kind == "mac"
        if mac:
            sender = _mac_sender(request.recipient) or self._signer_name
            alg, kid = auth.mac_alg, auth.sender_kid
        else:
            sender, alg, kid = self._signer_name, self.signer.algorithm, self.signer.sender_kid
        header_der = response_header_der(
            sender, request.sender, message_time_der(now), alg, kid, request.transaction_id, nonce,
            request.sender_nonce, general_info_der(info) if info else b"",
        )
        if body_type is BodyType.PKICONF:
            body_der = _PKICONF_BODY  # always the same NULL
        else:
            body_der = cert_rep_der(body_type, body) or encode_body(body_type, body)
        part = der.tlv(der.SEQUENCE, header_der + body_der)
        if mac:
            assert auth.mac_params is not None and auth.secret is not None
            protection = compute_mac(auth.mac_params, auth.secret, part)
            certs = extra
        else:
            protection = self.signer.protect(part)
            certs = _signed_extra_certs(self.signer.extra_certs, extra)
        return response_der(header_der, body_der, protection, certs), nonce


_PKICONF_BODY = encode_body(BodyType.PKICONF, PKIConfirmContent())


def _mac_sender(recipient: bytes) -> bytes | None:
    """For MAC responses, answer as whom the request addressed (OpenSSL checks the sender
    against its -recipient), unless that was the NULL-DN."""
    if recipient == NULL_DN_GENERAL_NAME:
        return None
    return recipient if is_directory_name(recipient) else None


@lru_cache(maxsize=64)
def _signed_extra_certs(signer_certs: tuple[bytes, ...], extra: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """extraCerts of a signed response: the signer's chain, then ``extra``, each once. The
    combinations are few (chain, chain + root), so they are worked out once."""
    return tuple(dict.fromkeys(signer_certs + extra))


def _vendor_allowed(msg: PKIMessage, live: Mapping[bytes, Transaction]) -> bool:
    """Vendor (IDevID) certificates may sign an ir and the follow-ups of its transaction."""
    if msg.body_type is BodyType.IR:
        return True
    tx = live.get(msg.header.transaction_id or b"")
    return tx is not None and tx.kind is BodyType.IR


def check_same_requester(auth: Auth, first: Auth) -> None:
    """A follow-up is protected as its transaction's first request: same kind of protection,
    the same MAC secret or the same signer certificate."""
    if auth.kind != first.kind:
        raise Refuse(FailInfo.wrongIntegrity, "protection differs from the transaction's first request")
    if auth.kind == "mac" and not hmac.compare_digest(auth.secret or b"", first.secret or b""):
        raise Refuse(FailInfo.notAuthorized, "MAC secret differs from the transaction's first request")
    if auth.kind == "signature" and auth.signer_der != first.signer_der:
        raise Refuse(FailInfo.notAuthorized, "signer differs from the transaction's first request")


def check_pop(req: CertReqMsg, public_key: PublicKeyTypes, *, ra_verified: bool = False) -> None:
    """Proof of possession: a signature over the CertRequest itself by the requested key, or
    raVerified when the request is protected by a trusted RA (``ra_verified``, RFC 9483 §5.2.3.2:
    the RA checked the POP before replacing the protection)."""
    popo = req.popo
    if popo is None:
        raise Rejected("proof of possession is missing", FailInfo.badPOP)
    if popo.kind == "raVerified":
        if ra_verified:
            return
        raise Rejected("raVerified proof of possession is accepted only from a trusted RA", FailInfo.badPOP)
    if popo.kind != "signature":
        raise Rejected(f"{popo.kind} proof of possession is not accepted", FailInfo.badPOP)
    if popo.poposk_input is not None or popo.algorithm is None or popo.signature is None:
        raise Rejected("POP must sign the CertRequest itself (no poposkInput)", FailInfo.badPOP)
    try:
        verify_signature(popo.algorithm, public_key, req.cert_request_der, popo.signature)
    except UnsupportedAlgorithm as exc:
        raise Rejected(f"POP: {exc}", FailInfo.badAlg) from None
    except ProtectionError:
        raise Rejected("POP signature does not verify with the requested key", FailInfo.badPOP) from None


def ra_verified_by(
    auth: Auth, ra_trust: TrustStore | None, untrusted: tuple[x509.Certificate, ...], now: float
) -> bool:
    """Whether ``auth`` is a signature by an RA the CA trusts (its certificate chains to
    ``ra_trust``): only such a request may claim raVerified POP."""
    if ra_trust is None or not len(ra_trust) or auth.kind != "signature" or auth.signer is None:
        return False
    try:
        ra_trust.verify(auth.signer, untrusted, at=datetime.fromtimestamp(now, UTC))
    except UntrustedSigner:
        return False
    return True


def authorize_rr(auth: Auth, target: KnownCert) -> None:
    """rr: signed with the certificate to revoke, or with its key under the same subject; a
    MAC-protected rr gets here only where the configuration allows it (``allow_mac_rr``)."""
    if auth.kind == "mac":
        return
    signer = auth.signer
    assert signer is not None
    if target.der == auth.signer_der:
        return
    if same_key(target.cert, signer) and target.cert.subject == signer.subject:
        return
    raise Rejected("rr must be signed with the certificate to revoke or its key", FailInfo.notAuthorized)


@lru_cache(maxsize=4096)
def is_directory_name(general_name: bytes) -> bool:
    """Cached: a device addresses the same CA name in every request."""
    try:
        return general_name_directory(general_name) is not None
    except DerError:
        return False


@lru_cache(maxsize=65_536)
def _is_mac(alg_der: bytes) -> bool:
    return is_mac_algorithm(alg_der)


@lru_cache(maxsize=65_536)
def _mac_params(alg_der: bytes, max_iterations: int) -> PbmParams | Pbmac1Params:
    """Parsed MAC parameters, cached: a device reuses its salt, so its protectionAlg repeats."""
    params = parse_mac_params(alg_der, max_iterations=max_iterations)
    if len(_known_mac_params) >= 65_536:
        _known_mac_params.clear()
    _known_mac_params[alg_der] = params
    return params


# protectionAlg -> the parameters ``_mac_params`` parsed from it under some cap: one dict look-up
# for a request instead of two lru_cache calls; the caller still checks its own iteration cap.
_known_mac_params: dict[bytes, PbmParams | Pbmac1Params] = {}


@lru_cache(maxsize=64)
def _timestamp(when: datetime) -> float:
    """``when.timestamp()``, cached: the reader hands out one datetime per messageTime value."""
    return when.timestamp()
